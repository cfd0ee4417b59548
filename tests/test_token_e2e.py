"""End to end through the CLI: examples/token-limits.toml, scaled to a 2 s token window and
a 300-token budget, run against the embedded reference server in every token mode by the
asyncio engine (the exact mode and one wrong one by Locust too), then analysed by
``loadkit run`` itself. The exact limiter is not accused and its refusals are judged
justified; each wrong mode (output counted alone, windows aligned to the clock) is caught
on the large-prompt bursts key, and the run fails with exit 1. The daily promise, out of
reach in seconds, is said to be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).parent.parent / "examples" / "token-limits.toml"
SCALE = 1 / 30  # the 60 s token window becomes 2 s; the burst period 36 s, 1.2 s
TOKENS = 300
# Bursts at 0.1, 1.3, ... 6.1 s: 6 of them. A clock-aligned window is caught when an edge
# falls between two bursts AND the earlier burst opened its own window (else the window
# had spent its budget on the one before); with edges every 2 s and bursts every 1.2 s,
# 6 bursts meet that at every phase of the clock, 5 miss it at one phase in five.
DURATION_S = 6.5


def scaled(tmp_path: Path, token_mode: str) -> Path:
    """The example with its windows and times x SCALE and a smaller budget, against an
    embedded server promising (and, in ``token_mode``, enforcing) the same."""
    d = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    tier = d["tiers"]["tpm"]
    tier.update(tokens=TOKENS, token_window_s=tier["token_window_s"] * SCALE)
    del tier["keys_env"]
    tier["keys"] = 2
    server_tier = {k: v for k, v in tier.items() if k != "keys"} | {"keys": 2}
    cfg = tmp_path / "server.json"
    cfg.write_text(
        json.dumps({"tiers": {"tpm": server_tier}, "limiter": {"token_mode": token_mode}})
    )
    for phase in d["load"]:
        for k in ("burst_period_s", "phase_s"):
            if k in phase:
                phase[k] = round(phase[k] * SCALE, 6)
    d["run"].update(duration_s=DURATION_S, drain_s=5)
    d["target"]["server_config"] = str(cfg)
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(d))
    return path


def loadkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadkit", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ),
    )


def run(
    tmp_path: Path, engine: str, token_mode: str, charts: bool = False
) -> tuple[int, dict[str, Any], str]:
    """``loadkit run``, analysing with charts and the report or with ``--no-charts`` (charts
    cost seconds of a shared machine); its exit status, summary.json and stderr."""
    out = tmp_path / "run"
    scenario = str(scaled(tmp_path, token_mode))
    res = loadkit(
        "run", scenario, "--engine", engine, "--out", str(out), "--quiet",
        *(() if charts else ("--no-charts",)),
    )  # fmt: skip
    assert (out / "summary.json").exists(), res.stderr
    return res.returncode, json.loads((out / "summary.json").read_text()), res.stderr


def entries(s: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["key"], e["verdict"]["promise"]["kind"]): e for e in s["tokens"]}


def records(tmp_path: Path) -> list[dict[str, Any]]:
    files = (tmp_path / "run").glob("records-*.jsonl")
    return [json.loads(x) for f in files for x in f.read_text().splitlines() if x.strip()]


ENGINES = ["async", "locust"]


@pytest.mark.parametrize("engine", ENGINES)
def test_the_exact_limiter_is_not_accused(tmp_path: Path, engine: str) -> None:
    code, s, err = run(tmp_path, engine, "exact", charts=engine == "async")
    e = entries(s)
    bursts, users = e[("tpm-1", "tokens")], e[("tpm-2", "tokens")]
    assert bursts["verdict"]["enforced"] in ("held", "possible"), bursts["explanation"]
    # the bursts asked twice the budget: refused for tokens, every refusal justified
    assert bursts["verdict"]["refusals"] > 0 and bursts["verdict"]["honoured"] == "held"
    for x in (bursts, users):
        assert "violated" not in (x["verdict"]["enforced"], x["verdict"]["honoured"]), x
        assert x["reset"]["verdict"] != "violated", x["reset"]
        assert x["remaining_header"]["verdict"] != "disagrees", x["remaining_header"]
    # every request's size is known: usage, else what the client counted it sent
    assert bursts["weights"]["unknown"] == 0 and bursts["weights"]["count_ratio"] == [1.0, 1.0]
    day = e[("tpm-1", "requests_per_day")]
    assert day["verdict"]["enforced"] == "inconclusive"
    assert day["verdict"]["reach"].startswith("cannot be reached in this run")
    assert any(
        "requests_per_day enforced: inconclusive (cannot be reached" in r
        for r in s["verdict_reasons"]
    )
    assert s["verdict"] in ("pass", "inconclusive") and code == 0, (s["verdict_reasons"], err)
    # the records carry what each request asked, 429s included
    refused = [r for r in records(tmp_path) if r["status"] == 429 and r["worker"] != "preflight"]
    assert refused and all(r["limit_kind"] == "tokens" for r in refused)
    # 2 x 300 tokens x (1.2 s / 2 s) / 10 requests = 36 a request: a 20-word prompt + 16
    if engine == "async":  # the report shows them beside the request verdicts
        html = (tmp_path / "run" / "report.html").read_text()
        assert "Token and per-day limits: promised vs observed" in html
        assert {"tokens_window_per_key.png", "tokens_arrival_per_key.png"} <= set(s["charts"])
    burst_sizes = {
        (r["sent_prompt_tokens"], r["sent_max_tokens"]) for r in refused if r["key"] == "tpm-1"
    }
    assert burst_sizes == {(20, 16)}


# Each wrong mode by the asyncio engine; Locust (its records carry the same sizes, see the
# exact case) on one of them: a Locust run costs seconds more to start.
@pytest.mark.parametrize(
    ("engine", "token_mode"),
    [("async", "output_only"), ("async", "fixed_window"), ("locust", "output_only")],
)
def test_each_wrong_token_mode_is_caught(tmp_path: Path, engine: str, token_mode: str) -> None:
    code, s, err = run(tmp_path, engine, token_mode)
    bursts = entries(s)[("tpm-1", "tokens")]
    assert bursts["verdict"]["enforced"] == "violated", bursts["explanation"]
    assert bursts["verdict"]["observed_max"] > TOKENS
    assert "tpm-1 tokens: not enforced" in s["verdict_reasons"]
    assert s["verdict"] == "fail" and code == 1, (s["verdict_reasons"], err)


def test_the_examples_embedded_server_promises_the_scenarios_tier() -> None:
    from loadkit.scenario import load_scenario
    from loadkit.server.config import load_config

    scenario = load_scenario(EXAMPLE)
    assert scenario.target.server_config is not None
    server = load_config(scenario.target.server_config)
    want = scenario.tiers["tpm"].promised()
    got = server.tier("tpm")
    assert {k: getattr(got, k) for k in want} == want
    assert server.limiter.token_mode == "exact"
    # the sizes the comments state: a burst carries the budget, 4 users share 1.5 x it
    bursts, users = scenario.load
    assert (bursts.prompt_tokens.value, bursts.max_tokens.value) == (1184, 16)
    assert users.max_tokens.value == 3734
