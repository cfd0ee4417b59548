"""Synthetic nights for history tests: summary.json / run.json folders in the
``loadkit.summary/1`` shape that ``loadkit analyze`` writes, with chosen figures and
verdicts, so a test can build 30 nights with a shift in milliseconds."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

DAY = 86400.0
T0 = datetime(2026, 10, 1, 3, 0, tzinfo=UTC).timestamp()
STATS = ("p50", "p90", "p95", "p99", "p99_9", "mean", "max", "count")
DEFAULT_SCENARIO = {"name": "nightly", "target": {"base_url": "https://staging.example/api/v1"}}


@dataclass
class Night:
    """The figures of one synthetic night (latency in ms)."""

    ttft: float = 100.0
    itl: float = 20.0
    e2e: float = 400.0
    rps: float = 30.0
    error_rate: float = 0.0
    throttle_rate: float = 0.1
    verdict: str = "pass"
    # (key, kind) -> enforced verdict word; honoured is "held"
    limits: dict[tuple[str, str], str] = field(
        default_factory=lambda: {("free-1", "requests"): "held", ("free-1", "concurrency"): "held"}
    )
    completeness: Any = None  # None: no completeness section


def _dist(p50: float) -> dict[str, float]:
    """A latency distribution whose percentiles scale with its median."""
    f = {"p50": 1.0, "p90": 1.5, "p95": 1.7, "p99": 2.0, "p99_9": 2.4, "mean": 1.1, "max": 2.6}
    out = {k: p50 * v for k, v in f.items()}
    out["count"] = 400
    return out


def summary(
    night: Night, run_id: str, started_unix: float, scenario: str = "nightly"
) -> dict[str, Any]:
    started_at = datetime.fromtimestamp(started_unix, UTC).isoformat(timespec="milliseconds")
    latency: dict[str, Any] = {}
    for name, p50 in (("ttft_ms", night.ttft), ("itl_ms", night.itl), ("e2e_ms", night.e2e)):
        latency[name] = {
            "unit": "ms",
            "overall": _dist(p50),
            "by_tier": {"free": _dist(p50 * 1.1), "pro": _dist(p50 * 0.9)},
        }
    latency["groups"] = [
        {
            "tier": "free",
            "key": "free-1",
            "endpoint": "chat",
            "stream": True,
            "ttft_ms": _dist(night.ttft),
            "e2e_ms": _dist(night.e2e),
        },
        {
            "tier": "free",
            "key": "free-1",
            "endpoint": "chat",
            "stream": False,
            "e2e_ms": _dist(night.e2e * 0.5),
        },
    ]
    limits = []
    for (key, kind), word in night.limits.items():
        limits.append(
            {
                "tier": "free",
                "key": key,
                "kind": kind,
                "promised": 60 if kind == "requests" else 3,
                "window_s": 60.0 if kind == "requests" else None,
                "observed_max": 60,
                "observed_max_possible": 61,
                "enforced": word,
                "honoured": "held",
                "evidence": {"enforced": {"certain_count": 60}},
                "offered": {"requests": 70, "max_in_window": 70},
                "retry_after": {"verdict": "inconclusive", "checked": 0},
            }
        )
    out: dict[str, Any] = {
        "schema": "loadkit.summary/1",
        "run": {
            "run_id": run_id,
            "engine": "async",
            "target": "http://127.0.0.1:1234/api/v1",
            "scenario": scenario,
            "started_at": started_at.replace("+00:00", "Z"),
            "duration_s": 60.0,
            "interrupted": False,
            "records": 700,
            "loadkit_version": "0.1.0",
        },
        "verdict": night.verdict,
        "verdict_reasons": [],
        "limits": limits,
        "latency": latency,
        "throughput": {
            "measured_from_s": 0.0,
            "measured_to_s": 60.0,
            "duration_s": 60.0,
            "requests": 700,
            "completed": 650,
            "requests_per_s": night.rps,
            "sent_per_s": night.rps * 1.1,
            "output_tokens": 9000.0,
            "output_tokens_per_s": night.rps * 15,
            "goodput": {"requests": 600, "requests_per_s": night.rps * 0.9, "ratio": 0.9},
            "timeline": {"bin_s": 1.0, "sent": [1, 2]},
        },
        "errors": {
            "requests": 700,
            "errors": round(700 * night.error_rate),
            "cancelled": 0,
            "error_rate": night.error_rate,
            "throttled": 70,
            "throttle_rate": night.throttle_rate,
            "by_status": {"200": 630, "429": 70},
            "by_code": {"429 rate_limit_exceeded": 70},
            "transport": {},
        },
        "slo": {
            "met": True,
            "checks": [
                {
                    "name": "ttft_ms.p99",
                    "metric": "ttft_ms",
                    "stat": "p99",
                    "threshold": 2000.0,
                    "direction": "<=",
                    "observed": night.ttft * 2,
                    "met": True,
                    "status": "met",
                    "source": "run.json",
                }
            ],
        },
    }
    if night.completeness is not None:
        out["completeness"] = night.completeness
    return out


def write_night(
    root: Path,
    index: int,
    night: Night,
    *,
    scenario: str = "nightly",
    scenario_dict: Mapping[str, Any] | None = None,
    start: float = T0,
) -> Path:
    """Night ``index`` (one per day from ``start``) as a run folder under ``root``."""
    started = start + index * DAY
    run_id = f"{scenario}-{index:03d}"
    path = root / run_id
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps(summary(night, run_id, started, scenario)))
    meta = {
        "schema": "loadkit.run/1",
        "run_id": run_id,
        "engine": "async",
        "target": "http://127.0.0.1:1234/api/v1",
        "scenario_name": scenario,
        "started_unix": started,
        "scenario": dict(scenario_dict or DEFAULT_SCENARIO, name=scenario),
    }
    (path / "run.json").write_text(json.dumps(meta))
    return path


def noisy(n: int, level: float, cv: float = 0.03, seed: int = 1) -> list[float]:
    """``n`` values around ``level`` with relative noise ``cv`` (seeded)."""
    rng = np.random.default_rng(seed)
    return [float(v) for v in level * (1 + cv * rng.standard_normal(n))]


def nights(ttft: Sequence[float] | None = None, n: int | None = None, **fixed: Any) -> list[Night]:
    """Nights whose TTFT median follows ``ttft`` (other figures steady)."""
    count = n if n is not None else len(ttft or [])
    return [Night(ttft=ttft[i] if ttft else 100.0, **fixed) for i in range(count)]
