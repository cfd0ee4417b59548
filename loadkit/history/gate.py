"""The nightly gate (``loadkit history check``): did the latest run of a series start a
significant regression, or break a limit that held for the last K nights?

Pure: a series' runs, their values and verdicts in, findings out. A regression is a
change point (see ``changepoints``) that makes the metric worse, by at least the minimum
change, whose first run is among the last ``recent`` runs, and that the history without
the latest run did not already show: each regression fails the gate on the night it
becomes significant, not on every night after (``repeat`` keeps it failing while it is
recent). The same data gives the same answer: re-running a check changes nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loadkit.history.stored import StoredRun, VerdictPoint
from loadkit.history.trends import (
    MIN_POINTS,
    Change,
    Detection,
    MetricSpec,
    SeriesKey,
    epochs,
    find_changes,
    measured,
    verdict_lines,
)

HELD, VIOLATED = "held", "violated"
KNOWN_SHIFT = 1  # a change point within this many runs of yesterday's is the same one


@dataclass(frozen=True)
class GateSettings:
    detection: Detection = Detection()
    recent: int = 5  # a regression must start within the last N measured runs
    held_nights: int = 3  # K: a limit that held K nights in a row and is violated now
    repeat: bool = False  # keep failing while a regression is recent, not only once
    confirm: int = 1  # runs at the new level before a regression counts (2: no outliers)

    def __post_init__(self) -> None:
        if self.recent < 1:
            raise ValueError(f"recent: must be >= 1, got {self.recent}")
        if self.confirm < 1:
            raise ValueError(f"confirm: must be >= 1, got {self.confirm}")
        if self.held_nights < 1:
            raise ValueError(f"held_nights: must be >= 1, got {self.held_nights}")


@dataclass(frozen=True)
class MetricFinding:
    metric: MetricSpec
    # regression | known | unconfirmed | small | improvement | ok | no data | too few runs
    status: str
    change: Change | None
    points: int
    message: str

    @property
    def failed(self) -> bool:
        return self.status == "regression"


@dataclass(frozen=True)
class LimitFinding:
    label: str  # "free-1 requests enforced"
    latest: str | None
    held_before: int  # consecutive nights it held right before the latest
    failed: bool
    message: str


@dataclass(frozen=True)
class SeriesVerdict:
    key: SeriesKey
    latest: StoredRun
    runs_in_epoch: int
    measured_latest: bool
    metrics: tuple[MetricFinding, ...]
    limits: tuple[LimitFinding, ...]
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return any(m.failed for m in self.metrics) or any(lf.failed for lf in self.limits)


def _same(a: Change, b: Change) -> bool:
    return abs(a.position - b.position) <= KNOWN_SHIFT and a.worse == b.worse


def judge_metric(
    spec: MetricSpec,
    runs: Sequence[StoredRun],
    values: Mapping[int, float | None],
    settings: GateSettings,
) -> MetricFinding:
    """One metric of the latest epoch of a series (runs in start order)."""
    latest = runs[-1]
    pts = [r for r in runs if measured(r) and values.get(r.id) is not None]
    vals = [float(v) for r in pts if (v := values.get(r.id)) is not None]
    if not pts or pts[-1].id != latest.id:
        return MetricFinding(spec, "no data", None, len(pts), "no value in the latest run")
    if len(vals) < MIN_POINTS:
        return MetricFinding(
            spec, "too few runs", None, len(vals), f"{len(vals)} runs; at least {MIN_POINTS}"
        )
    det = settings.detection
    n = len(vals)

    def confirmed(changes: list[Change], length: int) -> list[Change]:
        return [c for c in changes if c.regression and length - c.position >= settings.confirm]

    changes = find_changes(spec, pts, vals, det)
    recent = [c for c in changes if c.position >= n - settings.recent]
    regressions = confirmed(recent, n)
    if regressions and not settings.repeat:
        yesterday = confirmed(find_changes(spec, pts[:-1], vals[:-1], det), n - 1)
        known = [c for c in regressions if any(_same(c, y) for y in yesterday)]
        regressions = [c for c in regressions if c not in known]
        if not regressions:
            c = known[-1]
            return MetricFinding(
                spec, "known", c, n, f"already found: {c.describe()} since {_when(c)}"
            )
    if regressions:
        c = regressions[-1]
        return MetricFinding(spec, "regression", c, n, f"{c.describe()} from {_when(c)}")
    if recent:
        c = recent[-1]
        if c.regression:
            status, why = "unconfirmed", f"fewer than {settings.confirm} runs at the new level"
        elif c.worse:
            status, why = "small", "below the minimum change"
        else:
            status, why = "improvement", ""
        return MetricFinding(
            spec, status, c, n, f"{c.describe()} from {_when(c)}" + (f": {why}" if why else "")
        )
    if changes:
        c = changes[-1]
        return MetricFinding(
            spec,
            "ok",
            None,
            n,
            f"no change in the last {settings.recent} runs (last: {c.describe()} from {_when(c)})",
        )
    return MetricFinding(spec, "ok", None, n, f"no change in {n} runs")


def _when(c: Change) -> str:
    commit = f" {c.run.git_commit[:10]}" if c.run.git_commit else ""
    return f"run {c.run.run_id} ({c.run.started_at[:16].replace('T', ' ')}{commit})"


def judge_limits(
    runs: Sequence[StoredRun], points: Sequence[VerdictPoint], held_nights: int
) -> list[LimitFinding]:
    """Each limit verdict of the latest run against the K nights before it."""
    out = []
    for line in verdict_lines(runs, points):
        latest = line.words[-1]
        held = 0
        for w in reversed(line.words[:-1]):
            if w != HELD:
                break
            held += 1
        failed = latest == VIOLATED and held >= held_nights
        if failed:
            msg = f"violated tonight after holding {held} nights in a row"
        elif latest == VIOLATED:
            msg = f"violated (held {held} nights before; the gate needs {held_nights})"
        else:
            msg = f"{latest or 'not judged'}"
        out.append(LimitFinding(line.label, latest, held, failed, msg))
    return out


def judge_series(
    key: SeriesKey,
    runs: Sequence[StoredRun],
    values: Mapping[str, Mapping[int, float | None]],
    points: Sequence[VerdictPoint],
    specs: Sequence[MetricSpec],
    settings: GateSettings,
) -> SeriesVerdict:
    """The gate for one series: its latest epoch (same scenario hash as the latest run)."""
    epoch = epochs(runs)[-1]
    latest = epoch[-1]
    notes = []
    if len(epoch) < len(runs):
        notes.append(
            f"the scenario changed before run {epoch[0].run_id}: "
            f"{len(runs) - len(epoch)} earlier runs are not compared"
        )
    is_measured = measured(latest)
    if is_measured:
        metrics = tuple(judge_metric(s, epoch, values.get(s.name, {}), settings) for s in specs)
    else:
        notes.append(
            f"the latest run {latest.run_id} is {latest.verdict}"
            + (" and incomplete" if latest.complete is False else "")
            + ": its figures are not compared"
        )
        metrics = ()
    epoch_ids = {r.id for r in epoch}
    limits = judge_limits(epoch, [p for p in points if p.run in epoch_ids], settings.held_nights)
    return SeriesVerdict(key, latest, len(epoch), is_measured, metrics, tuple(limits), tuple(notes))
