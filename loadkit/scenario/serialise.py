"""A scenario back in its file's shape (JSON-able), so a resolved scenario, overrides
included, can be handed to another process: ``scenario_from_dict(scenario_to_dict(s))``
equals ``s`` but for its key sources and ``source``. Pure."""

from __future__ import annotations

import math
from dataclasses import asdict, fields
from typing import Any

from loadkit.scenario.model import PROMISE_OF, Dist, LoadSpec, Scenario, TierSpec
from loadkit.scenario.tables import RunTable

# Keys travel separately, never in a scenario: where a tier's keys come from stays behind.
_KEY_SOURCES = ("name", "keys_env", "keys_file")


def scenario_to_dict(s: Scenario) -> dict[str, Any]:
    """The scenario in its file shape; ``scenario_from_dict`` reads it back."""
    run = {k: getattr(s, k) for k in RunTable.model_fields if k != "duration_s"}
    return {
        "name": s.name,
        "target": _present(asdict(s.target)),
        "run": {"duration_s": 0 if math.isinf(s.duration_s) else s.duration_s, **_present(run)},
        "tiers": {n: _tier_to_dict(t) for n, t in s.tiers.items()},
        "load": [_load_to_dict(ld) for ld in s.load],
        "slo": s.slo,
        "goodput": s.goodput,
        "sweep": s.sweep,
    }


def _present(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` without its unset (None) entries: a file leaves them out."""
    return {k: v for k, v in d.items() if v is not None}


def _tier_to_dict(t: TierSpec) -> dict[str, Any]:
    d = _promises(asdict(t))
    for k in _KEY_SOURCES:
        d.pop(k, None)
    if d.get("models"):
        d["models"] = {m: _promises(p) for m, p in d["models"].items()}
    else:
        d.pop("models", None)
    return d


def _promises(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` without unset promises, nor the windows of promises not made (a file may
    not give a window without its promise)."""
    d = _present(d)
    return {k: v for k, v in d.items() if k not in PROMISE_OF or PROMISE_OF[k] in d}


def _load_to_dict(ld: LoadSpec) -> dict[str, Any]:
    d = _present({f.name: getattr(ld, f.name) for f in fields(ld)})
    d.update(
        mix=dict(ld.mix),
        prompt_tokens=_dist_to_dict(ld.prompt_tokens),
        max_tokens=_dist_to_dict(ld.max_tokens),
        keys=list(ld.keys),
        phase_s="random" if ld.phase_s is None else ld.phase_s,
        backoff_429_s="retry-after" if ld.backoff_429_s is None else ld.backoff_429_s,
    )
    if ld.pattern not in ("constant", "poisson"):
        del d["rate_per_s"]  # the file allows a rate only where it means one
    return d


def _dist_to_dict(x: Dist) -> dict[str, Any]:
    if x.kind == "fixed":
        return {"dist": "fixed", "value": x.value}
    if x.kind == "uniform":
        return {"dist": "uniform", "min": x.min, "max": x.max}
    if x.kind == "normal":
        return {"dist": "normal", "mean": x.mean, "sd": x.sd, "min": x.min, "max": x.max}
    return {"dist": "choice", "values": list(x.choices)}
