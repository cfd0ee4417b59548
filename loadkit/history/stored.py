"""What the history store gives back: runs and verdict points as typed values, so the
trends, the gate and the report never see a database row."""

from __future__ import annotations

from dataclasses import dataclass

from loadkit.history.ingest import RunRow


@dataclass(frozen=True, kw_only=True)
class StoredRun(RunRow):
    """A run as the history knows it (no figures): the row that was added, plus what the
    store gave it: its id and when it was added."""

    id: int
    added_unix: float


@dataclass(frozen=True)
class VerdictPoint:
    run: int
    tier: str
    key: str
    kind: str
    aspect: str
    verdict: str
