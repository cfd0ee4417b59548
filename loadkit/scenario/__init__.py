"""Scenarios: what to load, how hard, for how long, and what was promised.

``model`` holds the frozen dataclasses (pure), ``tables`` the file's schema and its
validation, ``parse`` reads a file or dict into a ``Scenario``, ``keys`` finds the access
keys (environment and keys files), ``serialise`` writes a scenario back in its file's
shape. The format: ``docs/scenarios.md``.
"""

from __future__ import annotations

from loadkit.scenario.keys import resolve_keys
from loadkit.scenario.model import (
    DISTS,
    EMBEDDED,
    Dist,
    Key,
    LoadSpec,
    Scenario,
    ScenarioError,
    TargetSpec,
    TierSpec,
    plan,
)
from loadkit.scenario.parse import load_scenario, scenario_from_dict
from loadkit.scenario.serialise import scenario_to_dict

__all__ = [
    "DISTS",
    "EMBEDDED",
    "Dist",
    "Key",
    "LoadSpec",
    "Scenario",
    "ScenarioError",
    "TargetSpec",
    "TierSpec",
    "load_scenario",
    "plan",
    "resolve_keys",
    "scenario_from_dict",
    "scenario_to_dict",
]
