"""End to end: the built-in scenario's free-tier probes, scaled down ten-fold, run by the
asyncio engine against the reference server in every limiter mode, then analysed. The exact
limiter is not accused; each deliberately wrong one is caught on the probe key built to
catch it (docs/scenarios.md, "Probes")."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from loadkit.analysis.summary import analyze_run
from loadkit.run import run_scenario
from loadkit.scenario import Scenario, scenario_from_dict

pytestmark = pytest.mark.slow

# Windows, counts and phase times x 0.1; rates, concurrency and request lengths as they are.
# The probes keep their shapes relative to the window (a burst is N + 1 at 3/4 of W, the
# anchored bursts sit just before and after W from the lone request, ...) and the load
# per second stays that of the built-in run: 60 per 60 s becomes 6 per 6 s.
SCALE = 0.1
TIMES = ("burst_period_s", "phase_s", "start_s", "duration_s", "think_s")
DEFAULT = tomllib.loads(
    resources.files("loadkit.scenarios").joinpath("default.toml").read_text(encoding="utf-8")
)
FREE = DEFAULT["tiers"]["free"]
N = round(FREE["requests"] * SCALE)
C = FREE["concurrency"]


def scaled_default(tmp_path: Path, mode: str, duration_s: float | None = None) -> Scenario:
    """The built-in scenario's free tier, scaled, against a server in ``mode`` (shortened
    to ``duration_s`` as ``--duration`` does). The paid tier is left out: it probes no
    limiter bug, and its 1,000 rpm would be 30 requests/s more on a shared test machine."""
    free = {**FREE, "requests": N, "window_s": FREE["window_s"] * SCALE}
    cfg = tmp_path / "server.json"
    server_tier = {f: free[f] for f in ("requests", "window_s", "concurrency", "keys")}
    cfg.write_text(json.dumps({"tiers": {"free": server_tier}, "limiter": {"mode": mode}}))
    load = []
    for phase in DEFAULT["load"]:
        if phase["tier"] != "free":
            continue
        p = {k: v * SCALE if k in TIMES else v for k, v in phase.items()}
        if "burst_size" in p:
            p["burst_size"] = max(1, round(p["burst_size"] * SCALE))
        load.append(p)
    run = {**DEFAULT["run"], "duration_s": duration_s or DEFAULT["run"]["duration_s"] * SCALE}
    return scenario_from_dict(
        {
            **DEFAULT,
            "name": f"e2e-{mode}",
            "target": {**DEFAULT["target"], "server_config": str(cfg)},
            "run": run,  # the drain (20 s) is only an upper bound: the run ends when idle
            "tiers": {"free": free},
            "load": load,
        }
    )


def test_the_scaled_scenario_keeps_the_probes_shapes(tmp_path: Path) -> None:
    s = scaled_default(tmp_path, "exact")
    w = s.tiers["free"].window_s
    assert (N, w, s.duration_s) == (6, 6.0, 15.0)
    by_key: dict[tuple[int, ...], list[Any]] = {}
    for phase in s.load:
        by_key.setdefault(phase.keys, []).append(phase)
    assert sorted(by_key) == [(1,), (2,), (3,), (4,), (5,)]  # one key per probe
    (bursts,) = by_key[(1,)]
    assert bursts.burst_size == N + 1 and bursts.burst_period_s == pytest.approx(0.75 * w)
    lone, edge = by_key[(4,)]
    assert lone.burst_size == 1 and edge.burst_size == N + 1
    starts = [edge.start_s, edge.start_s + edge.burst_period_s]
    anchor_end = lone.start_s + w
    assert starts[0] < anchor_end < starts[1] < edge.start_s + edge.duration_s
    (at_cap,) = by_key[(5,)]
    assert at_cap.pattern == "closed" and at_cap.concurrency == C


def summary_of(tmp_path: Path, mode: str, duration_s: float | None = None) -> dict[str, Any]:
    out = tmp_path / "run"
    scenario = scaled_default(tmp_path, mode, duration_s)
    run_scenario(scenario, out, engine="async", progress=False)
    return analyze_run(out, charts=False)


def limits(s: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["key"], e["kind"]): e for e in s["limits"]}


def violated(s: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(key, kind, which verdict) for every violated verdict in the summary."""
    out = set()
    for e in s["limits"]:
        verdicts = {n: e[n] for n in ("enforced", "honoured")}
        if "retry_after" in e:
            verdicts["retry_after"] = e["retry_after"]["verdict"]
        out |= {(e["key"], e["kind"], n) for n, v in verdicts.items() if v == "violated"}
    return out


def test_exact_limiter_is_not_accused(tmp_path: Path) -> None:
    # the whole run: free-3's Poisson load first passes N in a window after 8 s
    s = summary_of(tmp_path, "exact")
    assert violated(s) == set()
    assert s["verdict"] == "pass"
    got = limits(s)
    assert {e["remaining_header"]["verdict"] for e in s["limits"] if "remaining_header" in e} == {
        "agrees"
    }
    # every probe provoked what it was built to provoke
    for key in ("free-1", "free-3", "free-4"):
        assert got[(key, "requests")]["offered"]["max_in_window"] > N, key
        assert got[(key, "requests")]["observed_max"] <= N
    assert got[("free-2", "concurrency")]["offered"]["max_concurrent"] > C
    at_cap = got[("free-5", "concurrency")]
    assert at_cap["observed_max"] == C  # driven exactly at its cap...
    assert at_cap["evidence"]["honoured"]["concurrency_429s"] == 0  # ...and never refused
    assert at_cap["honoured"] == "held"  # which tests honouring
    # a held verdict is decided at the timing uncertainty it states: any shortfall of the
    # margin lies within it
    for e in s["limits"]:
        tol = e["tolerance"]
        if e["enforced"] == "held" and tol["margin_s"] is not None and tol["margin_s"] < 0:
            assert -tol["margin_s"] <= tol["timing_uncertainty_s"], (e["key"], e["kind"])
    # the burst keys send non-streamed requests only: their concurrency entries say that
    # such traffic cannot decide an overrun of the cap
    for key in ("free-1", "free-4"):
        assert "cannot decide a concurrency overrun" in " ".join(
            got[(key, "concurrency")]["explanation"]
        )


def check_fixed_window(s: dict[str, Any]) -> None:
    assert ("free-1", "requests", "enforced") in violated(s)
    assert limits(s)[("free-1", "requests")]["observed_max"] > N


def check_fixed_window_anchored(s: dict[str, Any]) -> None:
    got = limits(s)
    assert ("free-4", "requests", "enforced") in violated(s)
    assert got[("free-4", "requests")]["observed_max"] > N
    # the clock-aligned probe alone misses it: each of its bursts opens a window of its own
    assert got[("free-1", "requests")]["enforced"] != "violated"


def check_token_bucket(s: dict[str, Any]) -> None:
    # bursts after idling: free-1's first (a fresh key), free-4's after 5.4 s (54 s unscaled)
    assert {("free-1", "requests", "enforced"), ("free-4", "requests", "enforced")} <= violated(s)


def check_concurrency_off_by_one(s: dict[str, Any]) -> None:
    assert ("free-2", "concurrency", "enforced") in violated(s)
    assert limits(s)[("free-2", "concurrency")]["observed_max"] == C + 1


def check_late_release(s: dict[str, Any]) -> None:
    assert ("free-5", "concurrency", "honoured") in violated(s)
    ev = limits(s)[("free-5", "concurrency")]["evidence"]["honoured"]
    assert ev["unjustified_429s"] >= 1
    assert all(x["max_in_flight"] < C for x in ev["unjustified_examples"])


def check_under_admit(s: dict[str, Any]) -> None:
    assert {("free-1", "requests", "honoured"), ("free-3", "requests", "honoured")} <= violated(s)


def check_off(s: dict[str, Any]) -> None:
    assert {("free-1", "requests", "enforced"), ("free-2", "concurrency", "enforced")} <= violated(
        s
    )


# mode -> (check, run length): each run only as long as the probe that catches the mode
# needs (the streams open at its end still finish in the drain). The clock-aligned window
# needs the whole run: with the clock's edges at a random phase, two of four bursts are
# sure to straddle one. Every other probe acts within 8 s (0.8 of the unscaled 80 s): the
# anchored bursts end by 6.7 s, free-3's Poisson load passes 0.8 N in a window. The
# at-cap streams turn over first at 3.3-4.1 s, so by 5.5 s each of the 3 users has
# sent its next one into a slot the late limiter still holds. free-1's first burst (at
# 0.2 s) and free-2's 5 streams (from the start) act within the first second.
SHORT = 8.0
TURNOVER = 5.5
FIRST = 3.0
WRONG: dict[str, tuple[Callable[[dict[str, Any]], None], float | None]] = {
    "fixed_window": (check_fixed_window, None),
    "fixed_window_anchored": (check_fixed_window_anchored, SHORT),
    "token_bucket": (check_token_bucket, SHORT),
    "concurrency_off_by_one": (check_concurrency_off_by_one, FIRST),
    "late_release": (check_late_release, TURNOVER),
    "under_admit": (check_under_admit, SHORT),
    "off": (check_off, FIRST),
}


@pytest.mark.parametrize("mode", list(WRONG))
def test_wrong_limiter_is_caught(tmp_path: Path, mode: str) -> None:
    check, duration_s = WRONG[mode]
    s = summary_of(tmp_path, mode, duration_s)
    check(s)
    assert s["verdict"] == "fail"
