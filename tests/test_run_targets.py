"""`loadkit run` against targets a user points it at, end to end through the CLI: the
OpenAI layout works; a pre-flight failure stops the run with exit 2 before any load and
leaves no run folder; a wrong-URL run with the check skipped ends ERROR (exit 2), stopped
early, never a violation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadkit.server.testing import ServerThread

pytestmark = pytest.mark.slow


def scenario(tmp_path: Path, rate: float = 2.0, duration: float = 4.0, **target) -> Path:
    p = tmp_path / "s.json"
    p.write_text(
        json.dumps(
            {
                "name": "targets",
                "target": {"base_url": "http://127.0.0.1:1/v1", **target},
                "run": {"duration_s": duration, "drain_s": 5},
                "tiers": {"free": {"requests": 60, "concurrency": 3, "keys_env": "LK_KEYS"}},
                "load": [
                    {
                        "tier": "free",
                        "pattern": "constant",
                        "rate_per_s": rate,
                        "mix": {"chat_stream": 1, "chat": 1},
                        "max_tokens": 4,
                    }
                ],
            }
        )
    )
    return p


def run(args: list[str], keys: str, engine: str = "async") -> subprocess.CompletedProcess[str]:
    # every test here reads summary.json and run.json: charts would cost seconds each
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "loadkit",
            "run",
            *args,
            "--engine",
            engine,
            "--quiet",
            "--no-charts",
        ],
        env={**os.environ, "LK_KEYS": keys},
        capture_output=True,
        text=True,
        timeout=180,
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory):
    truth = tmp_path_factory.mktemp("srv") / "truth.jsonl"
    with ServerThread(api="openai", truth_path=truth) as srv:
        srv.truth = truth  # type: ignore[attr-defined]
        yield srv


def keys(srv: ServerThread, n: int = 2) -> str:
    return ",".join(srv.key(label) for label in srv.labels("free")[:n])


@pytest.mark.parametrize(
    ("engine", "http_client"), [("async", None), ("async", "aiohttp"), ("locust", None)]
)
def test_the_openai_layout_end_to_end(tmp_path, openai_server, engine, http_client):
    out = tmp_path / "run"
    target = {"http_client": http_client} if http_client else {}
    res = run(
        [str(scenario(tmp_path, **target)), "--target", openai_server.base_url, "--out", str(out)],
        keys(openai_server),
        engine,
    )
    assert res.returncode == 0, res.stderr
    recs = [r for f in out.glob("records-*.jsonl") for r in lines(f)]
    probes = [r for r in recs if r["worker"] == "preflight"]
    load = [r for r in recs if r["worker"] != "preflight"]
    assert len(probes) == 4  # model list, one per key (2), one stream
    assert load and all(r["status"] == 200 for r in load)
    assert json.loads((out / "run.json").read_text())["target_api"]["api"] == "openai"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] in ("pass", "inconclusive")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong_layout", 'api = "openai"'),
        ("bad_key", "key free-2 (from LK_KEYS) was refused: 401 Unauthorized"),
        ("unknown_model", "'no-such-model' is not among"),
        ("unreachable", "the target does not answer"),
    ],
)
def test_a_preflight_failure_stops_before_any_load(tmp_path, openai_server, case, expected):
    base = openai_server.base_url
    k = keys(openai_server, 1) + ",sk-wrong-key-0000"
    target: dict[str, str] = {}
    if case == "wrong_layout":
        target = {"api": "seed"}
    elif case == "bad_key":
        pass
    elif case == "unknown_model":
        target = {"model": "no-such-model"}
        k = keys(openai_server)
    elif case == "unreachable":
        base = "http://127.0.0.1:1/v1"
        k = keys(openai_server)
    if case != "bad_key":
        k = keys(openai_server)
    before = len(lines(openai_server.truth))
    out = tmp_path / "run"
    res = run([str(scenario(tmp_path, **target)), "--target", base, "--out", str(out)], k)
    assert res.returncode == 2, res.stderr
    assert "pre-flight check failed, no load was sent" in res.stderr
    assert expected in res.stderr
    assert "sk-wrong-key" not in res.stderr + res.stdout
    assert not out.exists(), "a failed pre-flight leaves no run folder (the same --out can retry)"
    openai_server.wait_idle()
    # Only the probes reached the server: at most 2 attempts of each of 5 probes.
    assert len(lines(openai_server.truth)) - before <= 10


def test_a_wrong_url_run_is_an_error_never_a_violation(tmp_path, openai_server):
    out = tmp_path / "run"
    wrong = openai_server.base_url.removesuffix("/v1") + "/api/v1"  # the seed's layout: 404s
    res = run(
        [
            str(scenario(tmp_path, rate=40.0, duration=30.0)),
            "--target",
            wrong,
            "--out",
            str(out),
            "--no-preflight",
        ],
        keys(openai_server),
    )
    assert res.returncode == 2, res.stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["stop_reason"].startswith("target failing: the last ")
    assert meta["duration_s"] < 20, "the run stopped early instead of hammering a 404"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "error"
    assert "violated" not in json.dumps(summary["limits"])
    assert "404 Not Found from " + wrong + "/ai/chat/completions" in res.stdout + res.stderr


def test_the_asyncio_engines_http_client_is_refused_by_name_under_locust(tmp_path):
    out = tmp_path / "run"
    res = run([str(scenario(tmp_path, http_client="loadkit")), "--out", str(out)], "k", "locust")
    assert res.returncode == 2
    assert "[target] http_client = 'loadkit'" in res.stderr and "--engine async" in res.stderr
    assert not out.exists()


def test_the_load_starts_on_schedule_after_a_slow_preflight(tmp_path):
    """The run's t=0 is when the load begins: arrivals scheduled while the pre-flight check
    waited on a slow target do not leave at once when it ends."""
    slow = {
        "id": "slow",
        "context_length": 8192,
        "capabilities": ["chat", "completion"],
        "ttft_ms": 1500.0,
        "prefill_ms_per_token": 0.0,
        "ttft_jitter_ms": 0.0,
        "itl_ms": 1.0,
        "itl_jitter_ms": 0.0,
        "decode_capacity_tps": 0,
    }
    config = {
        "tiers": {"bench": {"requests": 100_000, "window_s": 60.0, "concurrency": 1000, "keys": 1}},
        "models": [slow],
    }
    out = tmp_path / "run"
    with ServerThread(config=config) as srv:
        res = run(
            [
                str(scenario(tmp_path, rate=10.0, duration=1.0, model="slow")),
                "--target",
                srv.base_url,
                "--out",
                str(out),
            ],
            srv.key(srv.labels("bench")[0]),
        )
    # exit 1: the server admits more than the scenario's 3 concurrent (not this test's point)
    assert res.returncode in (0, 1), res.stderr
    recs = [r for f in out.glob("records-*.jsonl") for r in lines(f)]
    probes = [r for r in recs if r["worker"] == "preflight"]
    load = sorted((r for r in recs if r["worker"] != "preflight"), key=lambda r: r["scheduled_s"])
    # the check took seconds (a 1.5 s TTFT per probe), all before the run's t=0
    assert probes and all(r["end_s"] < 0 for r in probes)
    assert min(r["send_s"] for r in probes) < -2.5
    assert len(load) == 10
    # on time: before the fix the first arrivals left seconds late, together
    assert max(r["send_s"] - r["scheduled_s"] for r in load[:3]) < 0.5
