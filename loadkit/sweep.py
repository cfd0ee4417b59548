"""``loadkit sweep``: a capacity sweep. Steps the offered load of one load phase (a rate for
open-loop phases, users per key for closed-loop ones), one bounded run per step, until an
SLO fails or throughput saturates; then a table and chart of throughput vs latency with the
knee marked (``analysis/capacity.py``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from annotated_types import Le
from pydantic import Field, ValidationInfo, model_validator

from loadkit.scenario import Scenario, ScenarioError, load_scenario
from loadkit.schema import Invalid, NonNegative, NonNegativeInt, Positive, Table, invalid, validate

StopWhen = Literal["slo", "saturated", "slo_or_saturated", "never"]


@dataclass(frozen=True)
class SweepSpec:
    load_index: int
    values: tuple[float, ...]
    step_duration_s: float
    warmup_s: float
    stop_when: StopWhen
    saturation: float  # achieved / offered below this means saturated (open loop)


class SweepTable(Table):
    """``[sweep]``: which load phase to step, through which loads, when to stop. Validated
    with the patterns of the scenario's ``[[load]]`` phases as context."""

    load: NonNegativeInt = 0
    """The index of the ``[[load]]`` phase to step (constant, poisson or closed)."""
    values: Annotated[list[Positive], Field(min_length=1)]
    """Increasing loads: req/s per key (open loop) or users per key (closed loop)."""
    step_duration_s: Positive = 20.0
    warmup_s: NonNegative | None = None
    """Excluded from each step's latency figures; default min(2, step_duration_s / 5)."""
    stop_when: StopWhen = "slo_or_saturated"
    saturation: Annotated[Positive, Le(1)] = 0.9
    """Open loop: achieved / offered below this is saturated."""

    @model_validator(mode="after")
    def _steps(self) -> Self:
        if sorted(self.values) != self.values:
            raise invalid("expected an increasing list of positive loads", self.values, "values")
        if self.warmup_s is not None and self.warmup_s >= self.step_duration_s:
            raise invalid("must be below step_duration_s", self.warmup_s, "warmup_s")
        return self

    @model_validator(mode="after")
    def _fits_scenario(self, info: ValidationInfo) -> Self:
        patterns: list[str] = (info.context or {}).get("patterns", [])
        if self.load >= len(patterns):
            n = len(patterns)
            raise invalid(f"expected the index of a [[load]] table (0..{n - 1})", self.load, "load")
        if patterns[self.load] == "burst":
            raise invalid(
                "expected a constant, poisson or closed phase; that one is a burst",
                self.load,
                "load",
            )
        if patterns[self.load] == "closed" and not all(v.is_integer() for v in self.values):
            raise invalid(
                "a closed phase steps users per key: whole numbers", self.values, "values"
            )
        return self


def sweep_spec(s: Scenario) -> SweepSpec:
    """The scenario's ``[sweep]`` table, validated against its load phases."""
    if not s.sweep:
        raise ScenarioError(
            f"{s.source}: sweep: the scenario has no [sweep] table (see docs/scenarios.md)"
        )
    try:
        t = validate(
            SweepTable, s.sweep, root="sweep", context={"patterns": [ld.pattern for ld in s.load]}
        )
    except Invalid as exc:
        raise ScenarioError(f"{s.source}: {exc}") from None
    warmup = min(2.0, t.step_duration_s / 5) if t.warmup_s is None else t.warmup_s
    return SweepSpec(t.load, tuple(t.values), t.step_duration_s, warmup, t.stop_when, t.saturation)


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
