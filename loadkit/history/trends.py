"""What the history says about a series of nights: which runs belong together, each key
metric's values over them with its change points read in the metric's direction (latency
up is worse, throughput down is worse), and each limit's verdict night by night.

Pure: runs and values in, frozen dataclasses out. The report, ``history show`` and the
``history check`` gate all read these, so the three always agree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from loadkit.history.changepoints import (
    DEFAULT_MAX_PVALUE,
    DEFAULT_WINDOW,
    ChangePoint,
    change_points,
)
from loadkit.history.stored import StoredRun, VerdictPoint

# A run whose figures do not describe the target (it could not be judged or did not run
# to the end) is kept in the store and in the verdict timeline, but left out of the
# metric series, where it would show as a false change.
UNMEASURED_VERDICTS = frozenset({"error", "unusable", "incomplete"})
MIN_POINTS = 4  # fewer runs than this: no change point can be shown


@dataclass(frozen=True)
class MetricSpec:
    """How to read one metric: ``higher_is_better`` sets the regression direction; a
    ``rate`` (a share of requests, 0..1) is judged by an absolute change, since +100 %
    of 0.1 % is noise and +10 % of 30 % is not."""

    name: str
    label: str
    unit: str
    higher_is_better: bool = False
    rate: bool = False

    def worse(self, before: float, after: float) -> bool:
        return after < before if self.higher_is_better else after > before


def _latency(metric: str, label: str) -> list[MetricSpec]:
    return [MetricSpec(f"{metric}.{s}", f"{label} {s}", "ms") for s in ("p50", "p90", "p99")]


KEY_METRICS: tuple[MetricSpec, ...] = (
    *_latency("ttft_ms", "TTFT"),
    *_latency("itl_ms", "ITL"),
    *_latency("e2e_ms", "e2e"),
    MetricSpec("requests_per_s", "requests/s", "req/s", higher_is_better=True),
    MetricSpec("output_tokens_per_s", "output tokens/s", "tokens/s", higher_is_better=True),
    MetricSpec("error_rate", "error rate", "share", rate=True),
    MetricSpec("throttle_rate", "429 rate", "share", rate=True),
)
# The gate's default: medians and tails, throughput, errors. p90 is charted, not gated:
# every extra metric is another chance of a false alarm.
GATE_METRICS: tuple[str, ...] = (
    "ttft_ms.p50",
    "ttft_ms.p99",
    "itl_ms.p50",
    "itl_ms.p99",
    "e2e_ms.p50",
    "e2e_ms.p99",
    "requests_per_s",
    "output_tokens_per_s",
    "error_rate",
    "throttle_rate",
)
_BY_NAME = {m.name: m for m in KEY_METRICS}


def metric_spec(name: str) -> MetricSpec:
    """The spec of a key metric, or one inferred from the name (``tpot_ms.p99`` is a
    latency, ``goodput_per_s`` a throughput, ``*_rate`` a rate)."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    base = name.split(".", 1)[0]
    if base.endswith("_ms"):
        return MetricSpec(name, name, "ms")
    if base.endswith("_per_s") or base == "goodput_ratio":
        return MetricSpec(name, name, base.rsplit("_per_", 1)[0], higher_is_better=True)
    if base.endswith("_rate"):
        return MetricSpec(name, name, "share", rate=True)
    return MetricSpec(name, name, "")


@dataclass(frozen=True)
class SeriesKey:
    """Runs of one scenario against one target form a series."""

    scenario: str
    target: str

    @property
    def label(self) -> str:
        return f"{self.scenario or '(no scenario)'} @ {self.target or '(no target)'}"


def measured(run: StoredRun) -> bool:
    return (
        run.verdict not in UNMEASURED_VERDICTS
        and run.complete is not False
        and run.interrupted is not True
    )


def group_series(runs: Sequence[StoredRun]) -> dict[SeriesKey, list[StoredRun]]:
    """Runs by series, each in start order; series with the latest run first."""
    out: dict[SeriesKey, list[StoredRun]] = {}
    for r in sorted(runs, key=lambda r: (r.started_unix, r.id)):
        out.setdefault(SeriesKey(r.scenario, r.target), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: -kv[1][-1].started_unix))


def epochs(runs: Sequence[StoredRun]) -> list[list[StoredRun]]:
    """Consecutive runs with the same scenario hash: when the scenario file changed, the
    figures before and after are not comparable, so change points are sought per epoch."""
    out: list[list[StoredRun]] = []
    for r in runs:
        if out and out[-1][-1].scenario_hash == r.scenario_hash:
            out[-1].append(r)
        else:
            out.append([r])
    return out


@dataclass(frozen=True)
class Detection:
    """The knobs of change point detection (Otava's names in brackets): the significance
    level of the t-test [max_pvalue], the window [window_len]; and of the gate: how big a
    worsening must be to count (relative for most metrics, absolute for rates)."""

    max_pvalue: float = DEFAULT_MAX_PVALUE
    window: int = DEFAULT_WINDOW
    min_magnitude: float = 0.05
    min_rate_change: float = 0.01

    def __post_init__(self) -> None:
        if not 0 < self.max_pvalue < 1:
            raise ValueError(f"pvalue: must be in (0, 1), got {self.max_pvalue}")
        if self.window < 4:
            raise ValueError(f"window: must be at least 4 runs, got {self.window}")
        if self.min_magnitude < 0:
            raise ValueError(f"min_magnitude: must be >= 0, got {self.min_magnitude}")
        if self.min_rate_change < 0:
            raise ValueError(f"min_rate_change: must be >= 0, got {self.min_rate_change}")


@dataclass(frozen=True)
class Change:
    """A change point of one metric: ``run`` is the first run of the new level."""

    metric: MetricSpec
    run: StoredRun
    position: int  # index among the metric's points
    before: float
    after: float
    pvalue: float
    worse: bool  # in the metric's direction
    big: bool  # beyond the gate's minimum change

    @property
    def relative(self) -> float | None:
        return None if self.before == 0 else self.after / self.before - 1.0

    @property
    def regression(self) -> bool:
        return self.worse and self.big

    def describe(self) -> str:
        m = self.metric
        if m.rate:
            how = f"{100 * self.before:.2f}% -> {100 * self.after:.2f}%"
            delta = f"{100 * (self.after - self.before):+.2f} pp"
        else:
            how = f"{_fmt(self.before)} -> {_fmt(self.after)} {m.unit}".rstrip()
            rel = self.relative
            delta = f"{100 * rel:+.1f}%" if rel is not None else "from 0"
        word = "worse" if self.worse else "better"
        return f"{m.name} {delta} ({how}, {word}, p={self.pvalue:.2g})"


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


@dataclass(frozen=True)
class MetricSeries:
    """One metric over the measured runs of a series that have a value for it."""

    metric: MetricSpec
    runs: tuple[StoredRun, ...]
    values: tuple[float, ...]
    changes: tuple[Change, ...]
    epoch_starts: tuple[int, ...] = ()  # positions where the scenario changed

    def means(self) -> list[float]:
        """The level between change points, for each point (the step line on charts)."""
        out: list[float] = []
        inner = {c.position for c in self.changes} | set(self.epoch_starts)
        cuts = [0, *sorted(inner - {0, len(self.values)}), len(self.values)]
        for a, b in zip(cuts, cuts[1:], strict=False):
            seg = self.values[a:b]
            out.extend([sum(seg) / len(seg)] * len(seg))
        return out


def find_changes(
    spec: MetricSpec, runs: Sequence[StoredRun], values: Sequence[float], det: Detection
) -> list[Change]:
    """Change points of one epoch's values, read in the metric's direction."""
    if len(values) < MIN_POINTS:
        return []
    out = []
    for cp in change_points(values, window=det.window, max_pvalue=det.max_pvalue):
        out.append(_change(spec, runs, cp, det))
    return out


def _change(spec: MetricSpec, runs: Sequence[StoredRun], cp: ChangePoint, det: Detection) -> Change:
    before, after = cp.stats.mean_before, cp.stats.mean_after
    if spec.rate:
        big = abs(after - before) >= det.min_rate_change
    else:
        big = (
            before != 0
            and abs(after / before - 1.0) >= det.min_magnitude
            or (before == 0 and after != 0)
        )
    return Change(
        metric=spec,
        run=runs[cp.index],
        position=cp.index,
        before=before,
        after=after,
        pvalue=cp.stats.pvalue,
        worse=spec.worse(before, after),
        big=big,
    )


def metric_series(
    spec: MetricSpec,
    runs: Sequence[StoredRun],
    values: Mapping[int, float | None],
    det: Detection,
) -> MetricSeries:
    """The measured points of a series (all epochs, for charts) with change points found
    within each epoch."""
    pts_runs: list[StoredRun] = []
    pts_vals: list[float] = []
    changes: list[Change] = []
    starts: list[int] = []
    for epoch in epochs(runs):
        e_runs = [r for r in epoch if measured(r) and values.get(r.id) is not None]
        e_vals = [float(v) for r in e_runs if (v := values.get(r.id)) is not None]
        offset = len(pts_vals)
        if offset and e_runs:
            starts.append(offset)
        for c in find_changes(spec, e_runs, e_vals, det):
            changes.append(replace(c, position=c.position + offset))
        pts_runs.extend(e_runs)
        pts_vals.extend(e_vals)
    return MetricSeries(spec, tuple(pts_runs), tuple(pts_vals), tuple(changes), tuple(starts))


@dataclass(frozen=True)
class VerdictLine:
    """One limit verdict (``free-1 requests enforced``) night by night; None where a run
    has no such verdict."""

    tier: str
    key: str
    kind: str
    aspect: str
    words: tuple[str | None, ...]

    @property
    def label(self) -> str:
        return f"{self.key} {self.kind} {self.aspect}"


ASPECT_ORDER = {"enforced": 0, "honoured": 1, "retry_after": 2, "remaining_header": 3}
KIND_ORDER = {"requests": 0, "concurrency": 1}  # the summary's order


def verdict_lines(runs: Sequence[StoredRun], points: Sequence[VerdictPoint]) -> list[VerdictLine]:
    index = {r.id: i for i, r in enumerate(runs)}
    table: dict[tuple[str, str, str, str], list[str | None]] = {}
    for p in points:
        if p.run not in index:
            continue
        row = table.setdefault((p.tier, p.key, p.kind, p.aspect), [None] * len(runs))
        row[index[p.run]] = p.verdict
    ordered = sorted(
        table.items(),
        key=lambda kv: (
            kv[0][0],
            kv[0][1],
            KIND_ORDER.get(kv[0][2], 9),
            kv[0][2],
            ASPECT_ORDER.get(kv[0][3], 9),
            kv[0][3],
        ),
    )
    return [VerdictLine(t, k, kind, a, tuple(words)) for (t, k, kind, a), words in ordered]
