"""End to end against the embedded reference server: a model's own limits lower than the
key's (a request window on one model, a concurrency cap on another), run by the asyncio
engine, analysed without charts. The exact server holds both and no refusal reads as
unjustified, the key's own promise included; each wrong model mode is caught on the
model's entry. Then requests per day in the server's clock-aligned window mode: a small
promise the run can reach is caught, a large one is said to be out of reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadkit.analysis.summary import analyze_run
from loadkit.run import run_scenario
from loadkit.scenario import scenario_from_dict

pytestmark = pytest.mark.slow

W = 2.0  # every window of these runs, in seconds
SMALL, CHAT = "loadkit-small", "loadkit-chat"
# The key may send 100 per 2 s, 20 at once; to loadkit-small 4 per 2 s; to loadkit-chat 2
# at once.
TIER: dict[str, Any] = {
    "requests": 100,
    "window_s": W,
    "concurrency": 20,
    "models": {SMALL: {"requests": 4}, CHAT: {"concurrency": 2}},
}
SHORT = {"prompt_tokens": 4, "max_tokens": 1}


def scenario(
    tmp_path: Path, tiers: dict[str, Any], load: list[dict[str, Any]], mode: str, dur: float
) -> dict[str, Any]:
    """A scenario (as its file holds it) whose tiers the embedded server promises and
    enforces in ``token_mode`` ``mode``."""
    cfg = tmp_path / "server.json"
    cfg.write_text(json.dumps({"tiers": tiers, "limiter": {"token_mode": mode}}))
    return {
        "name": f"models-{mode}",
        "target": {
            "base_url": "embedded",
            "model": "loadkit-instant",
            "server_config": str(cfg),
        },
        "run": {"duration_s": dur, "drain_s": 5, "seed": 1},
        "tiers": tiers,
        "load": load,
    }


def model_scenario(tmp_path: Path, mode: str) -> dict[str, Any]:
    load = [
        # pm-1: bursts of 8 short streams to loadkit-small every 3/4 W (the model allows
        # 4 per W), beside 4/s to loadkit-instant, which only the key's window counts.
        {
            "tier": "pm",
            "keys": [1],
            "pattern": "burst",
            "burst_size": 8,
            "burst_period_s": 0.75 * W,
            "phase_s": 0.1,
            "model": SMALL,
            "mix": {"completions_stream": 1},
            **SHORT,
        },
        {"tier": "pm", "keys": [1], "pattern": "constant", "rate_per_s": 4, **SHORT},
        # pm-2: 3 users streaming from loadkit-chat (the model allows 2 at once), beside
        # streams from loadkit-instruct in flight, which only the key's cap counts.
        {
            "tier": "pm",
            "keys": [2],
            "pattern": "closed",
            "concurrency": 3,
            "think_s": 0.05,
            "model": CHAT,
            "mix": {"chat_stream": 1},
            "prompt_tokens": 4,
            "max_tokens": 12,
        },
        {
            "tier": "pm",
            "keys": [2],
            "pattern": "constant",
            "rate_per_s": 6,
            "model": "loadkit-instruct",
            "mix": {"completions_stream": 1},
            "prompt_tokens": 4,
            "max_tokens": 12,
        },
    ]
    return scenario(tmp_path, {"pm": {**TIER, "keys": 2}}, load, mode, 5.0)


def summary_of(tmp_path: Path, d: dict[str, Any]) -> dict[str, Any]:
    out = tmp_path / "run"
    run_scenario(scenario_from_dict(d), out, engine="async", progress=False)
    return analyze_run(out, charts=False)


def limits(s: dict[str, Any]) -> dict[tuple[str, str, str | None], dict[str, Any]]:
    return {(e["key"], e["kind"], e.get("model")): e for e in s["limits"]}


def violated(s: dict[str, Any]) -> set[tuple[str, str, str | None, str]]:
    """(key, kind, model, aspect) of every violated verdict of ``limits``."""
    return {
        (e["key"], e["kind"], e.get("model"), aspect)
        for e in s["limits"]
        for aspect in ("enforced", "honoured")
        if e[aspect] == "violated"
    }


def test_the_exact_server_holds_a_models_limits_and_is_not_accused(tmp_path: Path) -> None:
    s = summary_of(tmp_path, model_scenario(tmp_path, "exact"))
    assert violated(s) == set(), s["verdict_reasons"]
    got = limits(s)
    window = got[("pm-1", "requests", SMALL)]
    assert window["offered"]["max_in_window"] > 4  # the bursts asked more than the model's
    assert window["observed_max"] <= 4
    assert (window["enforced"], window["honoured"]) == ("held", "held"), window["explanation"]
    assert window["evidence"]["honoured"]["rate_limit_429s"] > 0
    cap = got[("pm-2", "concurrency", CHAT)]
    assert cap["offered"]["max_concurrent"] > 2 and cap["observed_max"] <= 2
    assert cap["honoured"] == "held" and cap["enforced"] in ("held", "possible")
    assert cap["evidence"]["honoured"]["concurrency_429s"] > 0
    # the model's refusals are counted apart, and never judged against the key's promise
    for key in ("pm-1", "pm-2"):
        honoured = got[(key, "requests", None)]["evidence"]["honoured"]
        assert honoured["unjustified_429s"] == honoured["unjustified_uncoded_429s"] == 0
        assert honoured["refusals"]["models"] > 0
        assert honoured["refusals"]["requests"] == honoured["refusals"]["unattributed"] == 0
    assert s["verdict"] == "pass", s["verdict_reasons"]


def test_a_model_limit_kept_per_key_is_caught(tmp_path: Path) -> None:
    # loadkit-small's window also counts pm-1's requests to loadkit-instant, and
    # loadkit-chat's cap pm-2's streams from loadkit-instruct: the models are refused early.
    s = summary_of(tmp_path, model_scenario(tmp_path, "models_per_key"))
    assert ("pm-1", "requests", SMALL, "honoured") in violated(s)
    assert ("pm-2", "concurrency", CHAT, "honoured") in violated(s)
    ex = limits(s)[("pm-1", "requests", SMALL)]["evidence"]["honoured"]
    assert all(x["max_admitted_in_window"] < 4 for x in ex["unjustified_examples"])
    assert "pm-1 models.loadkit-small.requests: not honoured" in s["verdict_reasons"]
    assert s["verdict"] == "fail"


def test_a_model_limit_not_enforced_is_caught(tmp_path: Path) -> None:
    s = summary_of(tmp_path, model_scenario(tmp_path, "models_off"))
    got = limits(s)
    assert ("pm-1", "requests", SMALL, "enforced") in violated(s)
    assert got[("pm-1", "requests", SMALL)]["observed_max"] > 4
    assert ("pm-2", "concurrency", CHAT, "enforced") in violated(s)
    # the key's own limits were kept: nothing against them
    assert not {v for v in violated(s) if v[2] is None}
    assert s["verdict"] == "fail"


def day_scenario(tmp_path: Path, mode: str) -> dict[str, Any]:
    """``near``: 5 a day, with a day of W (what a server configured the same way keeps),
    probed by bursts of 8 every 3/4 W; ``far``: 1,000 a day, out of reach in 6.5 s."""
    key = {"requests": 1000, "window_s": 60, "concurrency": 20, "keys": 1}
    tiers = {
        "near": {**key, "requests_per_day": 5, "day_window_s": W},
        "far": {**key, "requests_per_day": 1000},
    }
    bursts = {
        "pattern": "burst",
        "burst_size": 8,
        "burst_period_s": 0.75 * W,
        "phase_s": 0.1,
        "mix": {"completions_stream": 1},
        **SHORT,
    }
    load = [{"tier": "near", **bursts}, {"tier": "far", **bursts}]
    return scenario(tmp_path, tiers, load, mode, 6.5)


def days(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["key"]: e for e in s["tokens"] if e["verdict"]["promise"]["kind"] == "requests_per_day"
    }


@pytest.mark.parametrize("mode", ["exact", "fixed_window"])
def test_requests_per_day_in_a_clock_aligned_window(tmp_path: Path, mode: str) -> None:
    # Five bursts 3/4 W apart: the clock's day edges (every W, at a random phase) put two
    # bursts that each open a new window less than W apart, 2 x 5 admitted.
    s = summary_of(tmp_path, day_scenario(tmp_path, mode))
    got = days(s)
    near, far = got["near-1"]["verdict"], got["far-1"]["verdict"]
    assert near["offered_max"] > 5 and near["reach"] is None
    if mode == "exact":
        assert near["observed_max"] <= 5 and near["honoured"] == "held", got["near-1"]
        # Never accused; "possible" only when a request went unanswered or its headers were
        # so late (a starved machine) that its admission could fall in another window.
        assert near["enforced"] in ("held", "possible"), got["near-1"]
        if near["enforced"] == "possible":
            assert near["observed_max_possible"] > 5
    else:
        assert near["enforced"] == "violated" and near["observed_max"] > 5
        assert "near-1 requests_per_day: not enforced" in s["verdict_reasons"]
        assert s["verdict"] == "fail"
    assert far["enforced"] == "inconclusive"
    assert far["reach"].startswith(
        "cannot be reached in this run: at most 40 requests sent in any 86400 s span"
    )
    assert any(
        r.startswith("far-1 requests_per_day enforced: inconclusive (cannot be reached")
        for r in s["verdict_reasons"]
    )


def test_the_locust_engine_reads_a_models_refusals_alike(tmp_path: Path) -> None:
    """One Locust run of the exact server: its records name the model-scoped limit too,
    so its verdicts are the asyncio engine's."""
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(model_scenario(tmp_path, "exact")))
    out = tmp_path / "locust-run"
    for args in (
        ["run", str(path), "--engine", "locust", "--out", str(out), "--quiet", "--no-analyze"],
        ["analyze", str(out), "--no-charts", "--quiet"],
    ):
        res = subprocess.run(
            [sys.executable, "-m", "loadkit", *args],
            capture_output=True,
            text=True,
            timeout=240,
            env=dict(os.environ),
        )
    s = json.loads((out / "summary.json").read_text())
    assert violated(s) == set(), (s["verdict_reasons"], res.stderr)
    kinds = {
        json.loads(x).get("limit_kind")
        for f in out.glob("records-*.jsonl")
        for x in f.read_text().splitlines()
        if x.strip() and json.loads(x)["status"] == 429
    }
    assert {"model_requests", "model_concurrency"} <= kinds
