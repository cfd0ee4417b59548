"""``loadkit sweep``: a capacity sweep. Steps the offered load of one load phase (a rate for
open-loop phases, users per key for closed-loop ones), one bounded run per step, until an
SLO fails or throughput saturates; then a table and chart of throughput vs latency with the
knee marked (``analysis/capacity.py``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from loadkit.scenario import Scenario, ScenarioError, load_scenario

STOP_WHEN = ("slo", "saturated", "slo_or_saturated", "never")


@dataclass(frozen=True)
class SweepSpec:
    load_index: int
    values: tuple[float, ...]
    step_duration_s: float
    warmup_s: float
    stop_when: str
    saturation: float  # achieved / offered below this means saturated (open loop)


def sweep_spec(s: Scenario) -> SweepSpec:
    d = s.sweep
    where = f"{s.source}: sweep"
    if not d:
        raise ScenarioError(f"{where}: the scenario has no [sweep] table (see docs/scenarios.md)")
    allowed = {"load", "values", "step_duration_s", "warmup_s", "stop_when", "saturation"}
    for k in d:
        if k not in allowed:
            raise ScenarioError(
                f"{where}.{k}: unknown field (expected one of {', '.join(sorted(allowed))})"
            )
    idx = d.get("load", 0)
    if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(s.load):
        raise ScenarioError(
            f"{where}.load: expected the index of a [[load]] table "
            f"(0..{len(s.load) - 1}), got {idx!r}"
        )
    values = d.get("values")
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values)
        or sorted(values) != values
    ):
        raise ScenarioError(
            f"{where}.values: expected an increasing list of positive loads, got {values!r}"
        )
    pattern = s.load[idx].pattern
    if pattern == "burst":
        raise ScenarioError(
            f"{where}.load: load[{idx}] is a burst; sweep a constant, poisson or closed phase"
        )
    if pattern == "closed" and not all(float(v).is_integer() for v in values):
        raise ScenarioError(
            f"{where}.values: a closed phase steps users per key: whole numbers, got {values!r}"
        )
    step = d.get("step_duration_s", 20)
    if not isinstance(step, int | float) or isinstance(step, bool) or step <= 0:
        raise ScenarioError(f"{where}.step_duration_s: must be a positive number, got {step!r}")
    warm = d.get("warmup_s", min(2.0, step / 5))
    if not isinstance(warm, int | float) or isinstance(warm, bool) or not 0 <= warm < step:
        raise ScenarioError(
            f"{where}.warmup_s: must be >= 0 and below step_duration_s, got {warm!r}"
        )
    stop = d.get("stop_when", "slo_or_saturated")
    if stop not in STOP_WHEN:
        raise ScenarioError(
            f"{where}.stop_when: expected one of {', '.join(STOP_WHEN)}, got {stop!r}"
        )
    sat = d.get("saturation", 0.9)
    if not isinstance(sat, int | float) or isinstance(sat, bool) or not 0 < sat <= 1:
        raise ScenarioError(f"{where}.saturation: must be in (0, 1], got {sat!r}")
    return SweepSpec(
        idx, tuple(float(v) for v in values), float(step), float(warm), stop, float(sat)
    )


def step_scenario(s: Scenario, spec: SweepSpec, value: float) -> Scenario:
    """The scenario of one step: only the swept phase, at ``value``, for one step."""
    load = s.load[spec.load_index]
    if load.pattern == "closed":
        load = replace(load, concurrency=int(value), start_s=0.0, duration_s=None)
    else:
        load = replace(load, rate_per_s=value, start_s=0.0, duration_s=None)
    return replace(
        s,
        load=(load,),
        duration_s=spec.step_duration_s,
        warmup_s=spec.warmup_s,
        max_requests=0,
        drain_s=min(s.drain_s, 30.0),
    )


def run_sweep(s: Scenario, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    from loadkit.analysis.capacity import capacity_report, step_row
    from loadkit.analysis.summary import analyze_run
    from loadkit.run import run_scenario

    spec = sweep_spec(s)
    load = s.load[spec.load_index]
    unit = "users/key" if load.pattern == "closed" else "req/s/key"
    rows: list[dict[str, Any]] = []
    stop_reason = "all steps run"
    for i, value in enumerate(spec.values, 1):
        step_dir = out_dir / f"step-{i:02d}"
        if progress:
            print(f"loadkit sweep: step {i}/{len(spec.values)}: {value:g} {unit}", file=sys.stderr)
        meta = run_scenario(
            step_scenario(s, spec, value), step_dir, engine="async", progress=progress
        )
        summary = analyze_run(step_dir, charts=False)
        row = step_row(i, value, unit, summary, load.pattern, spec.saturation)
        rows.append(row)
        if meta.interrupted:
            stop_reason = "interrupted"
            break
        if spec.stop_when in ("slo", "slo_or_saturated") and row["slo_missed"]:
            stop_reason = f"SLO missed at {value:g} {unit}: {', '.join(row['slo_missed'])}"
            break
        if spec.stop_when in ("saturated", "slo_or_saturated") and row["saturated"]:
            stop_reason = f"throughput saturated at {value:g} {unit}"
            break
    return capacity_report(rows, out_dir, stop_reason, s.name)


def sweep_main(args: Any) -> int:
    from loadkit.run import builtin_scenario
    from loadkit.runmeta import new_run_id

    try:
        s = load_scenario(args.scenario) if args.scenario else builtin_scenario("sweep.toml")
        sweep_spec(s)
    except ScenarioError as exc:
        print(f"loadkit sweep: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{new_run_id()}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        report = run_sweep(s, out, progress=not args.quiet)
    except ScenarioError as exc:
        print(f"loadkit sweep: {exc}", file=sys.stderr)
        return 2
    print(report["table"])
    print(f"\n{report['stop_reason']}; knee: {report['knee_text']}")
    print(f"chart: {out / 'capacity.png'}\nsummary: {out / 'sweep.json'}")
    return 0
