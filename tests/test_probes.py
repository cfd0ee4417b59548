"""The shipped probe scenarios (the built-in one and examples/free-tier-check.toml) drive
one free key per known limiter bug class, each shaped to provoke it (docs/scenarios.md,
"Probes"); no key carries two probes."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {
    "default": resources.files("loadkit.scenarios").joinpath("default.toml").read_text("utf-8"),
    "free-tier-check": (ROOT / "examples" / "free-tier-check.toml").read_text("utf-8"),
}
STREAMS = {"chat_stream", "completions_stream"}


def free_phases(doc: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    by_key: dict[int, list[dict[str, Any]]] = {}
    for phase in doc["load"]:
        if phase["tier"] == "free":
            (key,) = phase["keys"]  # one key per phase: a probe never shares its key
            by_key.setdefault(key, []).append(phase)
    return by_key


def probes(doc: dict[str, Any]) -> dict[str, int]:
    """Which key carries each probe (bug class -> key)."""
    free = doc["tiers"]["free"]
    n, w, c = free["requests"], free["window_s"], free["concurrency"]
    found: dict[str, int] = {}
    for key, phases in free_phases(doc).items():
        if len(phases) == 1:
            (p,) = phases
            streamed = set(p.get("mix", {})) <= STREAMS
            if p["pattern"] == "burst" and p["burst_size"] > n:
                # bursts above N at 3/4 of the window: two straddle a clock-aligned edge
                assert p["burst_period_s"] == pytest.approx(0.75 * w)
                found["clock-aligned window"] = key
                found["token bucket (burst on a fresh key)"] = key
            elif p["pattern"] == "closed" and streamed and p["concurrency"] > c:
                found["streams above the cap"] = key
            elif p["pattern"] == "closed" and streamed and p["concurrency"] == c:
                found["exactly at the cap"] = key
            elif p["pattern"] == "poisson" and p["rate_factor"] > 1:
                found["Retry-After and remaining headers"] = key
        else:
            lone, edge = sorted(phases, key=lambda p: p.get("start_s", 0))
            assert lone["burst_size"] == 1 and edge["burst_size"] > n
            anchor_end = lone["start_s"] + w
            second = edge["start_s"] + edge["burst_period_s"]
            # one burst before the window the lone request opened ends, one after it
            assert edge["start_s"] < anchor_end < second < edge["start_s"] + edge["duration_s"]
            assert edge["start_s"] - lone["start_s"] > 0.5 * w  # idle: a bucket is full
            found["window anchored at the first request"] = key
            found["token bucket (burst after idling)"] = key
    return found


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_known_limiter_bug_class_has_a_probe_on_a_key_of_its_own(name: str) -> None:
    found = probes(tomllib.loads(SCENARIOS[name]))
    assert set(found) == {
        "clock-aligned window",
        "token bucket (burst on a fresh key)",
        "window anchored at the first request",
        "token bucket (burst after idling)",
        "streams above the cap",
        "exactly at the cap",
        "Retry-After and remaining headers",
    }
    one_each = {found[b] for b in found if not b.startswith("token bucket")}
    assert len(one_each) == 5  # five probes, five keys
