"""End to end: the asyncio engine against the reference server in each limiter mode, then
the analysis. A correct limiter is not accused; each deliberately wrong one is caught."""

from __future__ import annotations

import json

import pytest

from loadkit.analysis.summary import analyze_run
from loadkit.run import run_scenario
from loadkit.scenario import scenario_from_dict

pytestmark = pytest.mark.slow

N, W, C = 10, 2.0, 2


def scenario(tmp_path, mode: str):
    cfg = tmp_path / "server.json"
    cfg.write_text(
        json.dumps(
            {
                "tiers": {"free": {"requests": N, "window_s": W, "concurrency": C, "keys": 2}},
                "limiter": {"mode": mode},
            }
        )
    )
    return scenario_from_dict(
        {
            "name": f"e2e-{mode}",
            "target": {
                "base_url": "embedded",
                "server_config": str(cfg),
                "model": "loadkit-instant",
            },
            "run": {"duration_s": 5.0, "drain_s": 5.0, "seed": 5},
            "tiers": {"free": {"requests": N, "window_s": W, "concurrency": C}},
            "load": [
                # key 1: bursts of short requests, at most C in flight on the client. 0.65 s is
                # not a divisor of W: bursts land at shifting offsets, some pair straddles an edge.
                {
                    "tier": "free",
                    "keys": [1],
                    "pattern": "burst",
                    "burst_size": 14,
                    "burst_period_s": 0.65,
                    "phase_s": 0.05,
                    "max_in_flight": C,
                    "mix": {"chat": 1, "completions": 1},
                },
                # key 2: more users than the cap, holding ~0.4 s streams open.
                {
                    "tier": "free",
                    "keys": [2],
                    "pattern": "closed",
                    "concurrency": C + 2,
                    "model": "loadkit-small",
                    "max_tokens": 16,
                    "backoff_429_s": 0.05,
                    "mix": {"chat_stream": 1},
                },
            ],
        }
    )


def verdicts(tmp_path, mode: str) -> dict:
    out = tmp_path / "run"
    run_scenario(scenario(tmp_path, mode), out, engine="async", progress=False)
    s = analyze_run(out, charts=False)
    got = {(e["key"], e["kind"]): e for e in s["limits"]}
    return {
        "summary": s,
        "req": got[("free-1", "requests")],
        "conc": got[("free-2", "concurrency")],
    }


def test_exact_limiter_is_not_accused(tmp_path):
    v = verdicts(tmp_path, "exact")
    assert v["req"]["enforced"] in ("held", "possible")
    assert v["req"]["honoured"] == "held"
    assert v["req"]["observed_max"] <= N
    assert v["conc"]["enforced"] in ("held", "possible") and v["conc"]["honoured"] == "held"
    assert v["summary"]["verdict"] == "pass"


def test_fixed_window_boundary_burst_is_caught(tmp_path):
    v = verdicts(tmp_path, "fixed_window")
    assert v["req"]["enforced"] == "violated"
    assert v["req"]["observed_max"] > N
    assert len(v["req"]["evidence"]["enforced"]["request_ids"]) >= N + 1
    assert v["summary"]["verdict"] == "fail"


def test_token_bucket_burst_is_caught(tmp_path):
    v = verdicts(tmp_path, "token_bucket")
    assert v["req"]["enforced"] == "violated" and v["req"]["observed_max"] > N


def test_concurrency_off_by_one_is_caught(tmp_path):
    v = verdicts(tmp_path, "concurrency_off_by_one")
    assert v["conc"]["enforced"] == "violated"
    assert v["conc"]["observed_max"] == C + 1


def test_false_throttling_is_caught(tmp_path):
    v = verdicts(tmp_path, "under_admit")
    assert v["req"]["honoured"] == "violated"
    assert v["req"]["enforced"] in ("held", "possible")


def test_no_limiter_is_caught(tmp_path):
    v = verdicts(tmp_path, "off")
    assert v["req"]["enforced"] == "violated" and v["conc"]["enforced"] == "violated"
