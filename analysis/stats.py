"""Exact descriptive statistics on raw values (numpy percentiles, linear interpolation) and
the seeded, bounded bootstrap that ``compare`` uses for confidence intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loadkit.analysis.codec import JsonRecord

STATS = ("p50", "p90", "p95", "p99", "p99_9", "mean", "max", "count")
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99_9": 99.9}


@dataclass(frozen=True)
class Stats(JsonRecord):
    """A distribution in summary.json's latency tables (None where there were no values)."""

    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    p99_9: float | None
    mean: float | None
    max: float | None
    count: int

    def value(self, stat: str) -> float | None:
        """One statistic by its name in ``STATS`` (``p99_9`` for p99.9)."""
        if stat not in STATS:
            raise ValueError(f"unknown statistic {stat!r} (one of {', '.join(STATS)})")
        v: float | int | None = getattr(self, stat)
        return None if v is None else float(v)


def describe(values: np.ndarray) -> Stats:
    """p50, p90, p95, p99, p99.9 (numpy 'linear' method), mean, max and count."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return Stats(None, None, None, None, None, None, None, count=0)
    p50, p90, p95, p99, p99_9 = (float(q) for q in np.percentile(v, list(PERCENTILES.values())))
    return Stats(p50, p90, p95, p99, p99_9, float(v.mean()), float(v.max()), count=int(v.size))


@dataclass(frozen=True)
class Change(JsonRecord):
    """A statistic in two runs, its relative change (new / base - 1) and the bootstrap
    confidence interval of that change; None where it cannot be computed."""

    base: float | None = None
    new: float | None = None
    change: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None


def statistic(values: np.ndarray, stat: str) -> float:
    if stat in PERCENTILES:
        return float(np.percentile(values, PERCENTILES[stat]))
    if stat == "mean":
        return float(np.mean(values))
    if stat == "max":
        return float(np.max(values))
    raise ValueError(f"unknown statistic {stat!r} (one of {', '.join(STATS[:-1])})")


def _statistics(values: np.ndarray, stats: tuple[str, ...]) -> np.ndarray:
    pct = [PERCENTILES[s] for s in stats if s in PERCENTILES]
    qs = iter(np.percentile(values, pct).tolist()) if pct else iter(())
    return np.array([next(qs) if s in PERCENTILES else statistic(values, s) for s in stats])


def _replicates(
    values: np.ndarray, stats: tuple[str, ...], rounds: int, cap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap replicates (rounds x stats); with more than ``cap`` values an m-out-of-n
    bootstrap whose spread is rescaled by sqrt(m / n) (consistent for quantiles)."""
    n = values.size
    m = min(n, cap)
    point = _statistics(values, stats)
    reps = np.empty((rounds, len(stats)))
    for b in range(rounds):
        reps[b] = _statistics(values[rng.integers(0, n, m)], stats)
    if m < n:
        reps = point + (reps - point) * np.sqrt(m / n)
    return reps, point


def bootstrap_changes(
    base: np.ndarray,
    new: np.ndarray,
    stats: tuple[str, ...],
    *,
    rounds: int = 200,
    cap: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Change]:
    """Relative change of each statistic from base to new (new / base - 1) with a
    percentile-bootstrap confidence interval; deterministic for a given seed."""
    base = np.asarray(base, dtype=np.float64)
    new = np.asarray(new, dtype=np.float64)
    if base.size == 0 or new.size == 0:
        return {s: Change() for s in stats}
    rng = np.random.default_rng(seed)
    rb, pb = _replicates(base, stats, rounds, cap, rng)
    rn, pn = _replicates(new, stats, rounds, cap, rng)
    alpha = (1.0 - confidence) / 2.0
    out = {}
    for i, s in enumerate(stats):
        if pb[i] == 0:
            out[s] = Change(base=float(pb[i]), new=float(pn[i]))
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = rn[:, i] / rb[:, i] - 1.0
        ratio = ratio[np.isfinite(ratio)]
        lo, hi = np.quantile(ratio, [alpha, 1.0 - alpha]) if ratio.size else (np.nan, np.nan)
        out[s] = Change(
            base=float(pb[i]),
            new=float(pn[i]),
            change=float(pn[i] / pb[i] - 1.0),
            ci_low=float(lo),
            ci_high=float(hi),
        )
    return out
