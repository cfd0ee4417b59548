"""Capacity sweep: the knee of a latency curve, saturation, and sweep table validation."""

from __future__ import annotations

import pytest

from loadkit.analysis.capacity import knee_index, mark_saturation
from loadkit.scenario import ScenarioError, scenario_from_dict
from loadkit.sweep import step_scenario, sweep_spec


def test_knee_is_where_a_flat_curve_turns_up():
    x = [1, 2, 4, 8, 16, 32]
    y = [100, 101, 102, 104, 180, 900]
    assert knee_index(x, y) == 4


def test_no_knee_on_a_straight_or_flat_line():
    assert knee_index([1, 2, 3, 4], [10, 20, 30, 40]) is None
    assert knee_index([1, 2, 3], [5, 5, 5]) is None
    assert knee_index([1, 2], [1, 9]) is None


def test_closed_loop_saturation_when_throughput_stops_growing():
    rows = [
        {"load": v, "achieved_rps": a, "offered_rps": None, "saturated": False}
        for v, a in ((8, 10.0), (16, 20.0), (32, 20.5))
    ]
    mark_saturation(rows)
    assert [r["saturated"] for r in rows] == [False, False, True]


BASE = {
    "run": {"duration_s": 5},
    "tiers": {"t": {"requests": 100, "window_s": 1, "concurrency": 10, "keys_env": "K"}},
    "load": [{"tier": "t", "pattern": "poisson", "rate_per_s": 1}],
}


def test_sweep_spec_and_step():
    s = scenario_from_dict({**BASE, "sweep": {"values": [1, 2, 4], "step_duration_s": 3}})
    spec = sweep_spec(s)
    step = step_scenario(s, spec, 4)
    assert step.load[0].rate_per_s == 4 and step.duration_s == 3


@pytest.mark.parametrize(
    "sweep,needle",
    [
        ({}, "no [sweep] table"),
        ({"values": [4, 2]}, "sweep.values"),
        ({"values": [1], "load": 3}, "sweep.load"),
        ({"values": [1], "stop_when": "tired"}, "sweep.stop_when"),
        ({"values": [1], "step_duration_s": 0}, "sweep.step_duration_s"),
    ],
)
def test_bad_sweep_tables_are_named(sweep, needle):
    with pytest.raises(ScenarioError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        sweep_spec(scenario_from_dict({**BASE, "sweep": sweep}))
