"""What the history store gives back: runs and verdict points as typed values, so the
trends, the gate and the report never see a database row."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoredRun:
    """A run as the history knows it (no figures)."""

    id: int
    run_key: str
    run_id: str
    started_unix: float
    started_at: str
    scenario: str
    scenario_hash: str
    target: str
    engine: str
    verdict: str
    duration_s: float | None
    records: int | None
    interrupted: bool | None
    loadkit_version: str
    summary_schema: str
    git_commit: str | None
    git_branch: str | None
    complete: bool | None
    completeness: str | None
    source: str
    added_unix: float


@dataclass(frozen=True)
class VerdictPoint:
    run: int
    tier: str
    key: str
    kind: str
    aspect: str
    verdict: str
