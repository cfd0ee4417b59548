"""Was every request of the run recorded? A run that was interrupted, was killed before it
wrote its end into run.json, lost a worker (died or went silent), or whose workers reported
more records than arrived is *incomplete*: its verdicts cover only what was recorded, and
its overall verdict is ``incomplete``, never pass or fail."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loadkit.analysis.codec import JsonRecord
from loadkit.analysis.columns import Columns
from loadkit.runmeta import RunMeta, WorkerInfo

LOST = ("died", "silent")


@dataclass(frozen=True)
class LostWorker(JsonRecord):
    """A load-generating process that ended without its final report."""

    worker: str
    status: str  # "died" | "silent"
    records: int  # its records that arrived (kept and analysed)
    in_flight: int | None  # its requests open when it was last heard from (None: unknown)
    detail: str


@dataclass(frozen=True)
class Completeness(JsonRecord):
    """summary.json's ``completeness``: what is missing from the records, and why."""

    complete: bool
    interrupted: bool
    stop_reason: str
    killed: bool  # run.json has no end time: the run never finished writing it
    lost_workers: tuple[LostWorker, ...]
    records: int  # records in the run directory
    reported_records: int | None  # the workers' own counts (those that gave one)
    missing_records: int | None  # reported but not in the run directory (None: unknown)
    reasons: tuple[str, ...]


def unrecorded_requests(c: Completeness) -> str | None:
    """Why requests may be missing from the records altogether (not merely cut short:
    a stop by signal records its open requests), or None. A request open when the run
    was killed, or when a worker was lost, has no record, yet it may have filled a window
    or a cap when a recorded request was refused."""
    if c.killed:
        return "the run was killed, so the requests open then have no record"
    if c.lost_workers:
        return "a worker was lost, so its requests open then have no record"
    if c.missing_records:
        return f"{c.missing_records:,} records are missing"
    return None


def _found(w: WorkerInfo, cols: Columns) -> int:
    """The worker's records in the run directory (what the master counted when the records
    do not name it)."""
    code = cols.worker.code_of(w.worker)
    if code < 0:
        return w.records
    return int(np.count_nonzero(cols.worker.codes == code))


def _lost_text(w: LostWorker) -> str:
    how = "died" if w.status == "died" else "went silent"
    flight = (
        "an unknown number of requests"
        if w.in_flight is None
        else f"{w.in_flight} request{'s' if w.in_flight != 1 else ''}"
    )
    return (
        f"worker {w.worker} {how} with {flight} in flight "
        f"({w.records:,} of its records arrived and are kept)"
    )


def interrupted_text(stop_reason: str) -> str:
    """``the run was interrupted (Ctrl-C)`` from a stop reason such as ``interrupted
    (Ctrl-C)``."""
    why = stop_reason.strip()
    if why.lower().startswith("interrupted"):
        why = why[len("interrupted") :].strip()
    if why.startswith("(") and why.endswith(")"):
        why = why[1:-1].strip()
    return "the run was interrupted" + (f" ({why})" if why else "")


def completeness(meta: RunMeta, cols: Columns) -> Completeness:
    """What run.json and the records say about missing records."""
    lost = tuple(
        LostWorker(w.worker, w.status, w.records, w.in_flight, w.detail)
        for w in meta.workers
        if w.status in LOST
    )
    reporting = [w for w in meta.workers if w.sent is not None]
    reported = sum(int(w.sent or 0) for w in reporting) if reporting else None
    found = [_found(w, cols) for w in reporting]
    missing = (
        sum(max(int(w.sent or 0) - f, 0) for w, f in zip(reporting, found, strict=True))
        if reporting
        else None
    )
    killed = meta.ended_unix is None
    reasons = []
    if meta.interrupted:
        reasons.append(
            f"{interrupted_text(meta.stop_reason)}: the records cover only the part before "
            "it stopped"
        )
    if killed:
        reasons.append(
            "run.json has no end time: the run was killed (or is still running) before it "
            "finished, so the records cover only what was written"
        )
    reasons += [_lost_text(w) for w in lost]
    if missing:
        reasons.append(
            f"{missing:,} records missing: the workers reported {reported or 0:,}, "
            f"{sum(found):,} are in the run directory"
        )
    return Completeness(
        complete=not reasons,
        interrupted=meta.interrupted,
        stop_reason=meta.stop_reason,
        killed=killed,
        lost_workers=lost,
        records=cols.n,
        reported_records=reported,
        missing_records=missing,
        reasons=tuple(reasons),
    )
