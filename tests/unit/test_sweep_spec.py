"""The ``[sweep]`` table: validated against the scenario's load phases, one message per bad
value naming the field's path, what was expected and the value."""

# ruff: noqa: E501  (the table below holds whole messages, one case a line)

from __future__ import annotations

from typing import Any

import pytest

from loadkit.scenario import ScenarioError, scenario_from_dict
from loadkit.sweep import SweepSpec, sweep_spec

LOADS = [
    {"tier": "t", "pattern": "poisson", "rate_per_s": 1},
    {"tier": "t", "pattern": "closed", "concurrency": 1},
    {"tier": "t", "pattern": "burst", "burst_size": 2, "burst_period_s": 5},
]


def scenario(sweep: dict[str, Any]) -> Any:
    return scenario_from_dict(
        {
            "run": {"duration_s": 5},
            "tiers": {"t": {"requests": 10, "concurrency": 5}},
            "load": LOADS,
            "sweep": sweep,
        },
        source="s.toml",
    )


def test_defaults() -> None:
    assert sweep_spec(scenario({"values": [1, 2.5]})) == SweepSpec(
        0, (1.0, 2.5), 20.0, 2.0, "slo_or_saturated", 0.9
    )
    spec = sweep_spec(scenario({"load": 1, "values": [2, 4], "step_duration_s": 5}))
    assert (spec.load_index, spec.values, spec.warmup_s) == (1, (2.0, 4.0), 1.0)


@pytest.mark.parametrize(
    "sweep,message",
    [
        ({}, "sweep: the scenario has no [sweep] table (see docs/scenarios.md)"),
        ({"load": 0}, "sweep.values: required (increasing loads: req/s per key (open loop) or users per key (closed loop))"),
        ({"values": []}, "sweep.values: must not be empty, got []"),
        ({"values": [4, 2]}, "sweep.values: expected an increasing list of positive loads, got [4.0, 2.0]"),
        ({"values": [0, 2]}, "sweep.values[0]: must be a positive number, got 0"),
        ({"values": [1], "load": 3}, "sweep.load: expected the index of a [[load]] table (0..2), got 3"),
        ({"values": [1], "load": -1}, "sweep.load: must be >= 0, got -1"),
        ({"values": [1], "load": 2}, "sweep.load: expected a constant, poisson or closed phase; that one is a burst, got 2"),
        ({"values": [1.5], "load": 1}, "sweep.values: a closed phase steps users per key: whole numbers, got [1.5]"),
        ({"values": [1], "stop_when": "tired"}, "sweep.stop_when: expected 'slo', 'saturated', 'slo_or_saturated' or 'never', got 'tired'"),
        ({"values": [1], "step_duration_s": 0}, "sweep.step_duration_s: must be a positive number, got 0"),
        ({"values": [1], "step_duration_s": 4, "warmup_s": 4}, "sweep.warmup_s: must be below step_duration_s, got 4.0"),
        ({"values": [1], "saturation": 1.2}, "sweep.saturation: must be <= 1, got 1.2"),
        ({"values": [1], "steps": 3}, "sweep.steps: unknown field (expected one of load, values, step_duration_s, warmup_s, stop_when, saturation)"),
    ],
)  # fmt: skip
def test_bad_sweep_tables_are_named(sweep: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError) as e:
        sweep_spec(scenario(sweep))
    assert str(e.value) == f"s.toml: {message}"
