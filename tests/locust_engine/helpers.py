"""Running the Locust engine on a scenario in tests: through ``run_locust`` directly (no
pre-flight check, no embedded server), into a fresh run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadkit.locust_engine import run_locust
from loadkit.records import RequestRecord, iter_records
from loadkit.run import Target, new_meta
from loadkit.runmeta import Clock, RunMeta
from loadkit.scenario import Key, Scenario, scenario_from_dict


def scenario(
    base_url: str,
    tiers: list[str],
    loads: list[dict[str, Any]],
    run: dict[str, Any] | None = None,
    target: dict[str, Any] | None = None,
) -> Scenario:
    """A scenario against ``base_url`` with ``tiers`` (limits far above any test's load)."""
    return scenario_from_dict(
        {
            "name": "locust-engine-test",
            "target": {"base_url": base_url, **(target or {})},
            "run": {"duration_s": 2.0, "drain_s": 5.0, "seed": 7, **(run or {})},
            "tiers": {t: {"requests": 100_000, "window_s": 60, "concurrency": 1000} for t in tiers},
            "load": loads,
        }
    )


def run_direct(
    sc: Scenario, keys: list[Key], out: Path, workers: int = 0
) -> tuple[RunMeta, list[RequestRecord]]:
    """Run ``sc`` with ``keys`` through Locust into ``out``: run.json and the records."""
    out.mkdir(parents=True)
    clock = Clock()
    meta = new_meta(sc, "locust", sc.target.base_url, keys, out.name, clock)
    meta.write(out)
    run_locust(sc, Target(sc.target.base_url, keys), out, clock, meta, workers, progress=False)
    meta.write(out)
    return meta, iter_records(out)


def by_key(recs: list[RequestRecord]) -> dict[str, list[RequestRecord]]:
    out: dict[str, list[RequestRecord]] = {}
    for r in sorted(recs, key=lambda r: r.send_s):
        out.setdefault(r.key, []).append(r)
    return out
