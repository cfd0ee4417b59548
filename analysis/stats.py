"""Exact descriptive statistics on raw values (numpy percentiles, linear interpolation) and
the seeded, bounded bootstrap that ``compare`` uses for confidence intervals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

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


# np.percentile's own quantiles for PERCENTILES: it divides the list by 100 the same way
_QUANTILES = np.true_divide(list(PERCENTILES.values()), 100)
_ABS = np.int64(0x7FFFFFFFFFFFFFFF)
_MAX_PARTS = 64


def _order_keys(x: np.ndarray) -> np.ndarray:
    """float64 -> int64 keys in the same order (an involution: keys -> floats as well)."""
    b = np.ascontiguousarray(x, dtype=np.float64).view(np.int64)
    return np.asarray(b ^ ((b >> 63) & _ABS))


def _from_keys(k: np.ndarray) -> np.ndarray:
    b = np.asarray(k, dtype=np.int64)
    return np.asarray((b ^ ((b >> 63) & _ABS)).view(np.float64))


def select_sorted(parts: list[np.ndarray], ranks: np.ndarray) -> np.ndarray:
    """The values of 0-based ``ranks`` in the sorted union of ``parts`` (each sorted, no
    NaN, together not empty), without merging them: a binary search per rank on the
    values' bits, counting with ``searchsorted`` in each part."""
    parts = [p for p in parts if p.size]
    ranks = np.asarray(ranks, dtype=np.int64)
    lo = np.full(ranks.size, min(_order_keys(p[:1])[0] for p in parts), dtype=np.int64)
    hi = np.full(ranks.size, max(_order_keys(p[-1:])[0] for p in parts), dtype=np.int64)
    while True:
        open_ = lo < hi
        if not open_.any():
            break
        # floor((lo + hi) / 2) without overflow; a closed search stays where it is
        mid = np.where(open_, (lo >> 1) + (hi >> 1) + (lo & hi & 1), lo)
        v = _from_keys(mid)
        below = np.zeros(ranks.size, dtype=np.int64)
        for p in parts:
            below += np.searchsorted(p, v, side="right")
        found = below > ranks
        hi = np.where(open_ & found, mid, hi)
        lo = np.where(open_ & ~found, mid + 1, lo)
    out = _from_keys(lo).copy()
    # -0.0 is searched before 0.0 and counts the zeros: give back the zero the data holds
    for i in np.flatnonzero(out == 0).tolist():
        for p in parts:
            j = int(np.searchsorted(p, 0.0, side="left"))
            if j < p.size and p[j] == 0:
                out[i] = p[j]
                break
    return out


def percentiles_by_rank(n: int, select: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """PERCENTILES of n values as ``np.percentile`` computes them (method 'linear'), given
    ``select``: 0-based ranks -> the values of those ranks in sorted order (rank -1: the
    largest). The same float operations in the same order, so the same bits."""
    virtual = (n - 1) * _QUANTILES
    previous = np.floor(virtual)
    nxt = previous + 1
    above = virtual >= n - 1
    previous[above] = -1
    nxt[above] = -1
    prev_i, next_i = previous.astype(np.intp), nxt.astype(np.intp)
    gamma = np.asanyarray(virtual - prev_i, dtype=virtual.dtype)
    vals = select(np.concatenate((prev_i, next_i)))
    a, b = vals[: prev_i.size], vals[prev_i.size :]
    diff_b_a = b - a
    lerp = np.add(a, diff_b_a * gamma)
    np.subtract(b, diff_b_a * (1 - gamma), out=lerp, where=gamma >= 0.5, casting="unsafe")
    return np.asarray(lerp)


def describe_sorted(parts: list[np.ndarray], mean: float) -> Stats:
    """``describe`` of the values of ``parts``, each sorted (together in any order), whose
    mean the caller computed (a mean depends on the order it sums in)."""
    n = sum(int(p.size) for p in parts)
    if n == 0:
        return Stats(None, None, None, None, None, None, None, count=0)
    filled = [p for p in parts if p.size]
    peak = max(float(p[-1]) for p in filled)
    if peak != peak or any(p[-1] != p[-1] for p in filled):  # NaN sorts last
        return describe(np.concatenate(filled))

    if len(filled) > _MAX_PARTS:  # a search per part and bit costs more than a merge
        filled = [np.sort(np.concatenate(filled))]

    def select(ranks: np.ndarray) -> np.ndarray:
        ranks = np.where(ranks < 0, n + ranks, ranks)
        if len(filled) == 1:
            return np.asarray(filled[0][ranks])
        return select_sorted(filled, ranks)

    p50, p90, p95, p99, p99_9 = (float(q) for q in percentiles_by_rank(n, select))
    return Stats(p50, p90, p95, p99, p99_9, float(mean), peak, count=n)


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


class Sample(Protocol):
    """Values a bootstrap resamples without holding them: how many, the statistics of all
    of them, and the values at given positions (in one fixed order)."""

    @property
    def size(self) -> int: ...

    def statistics(self, stats: tuple[str, ...]) -> np.ndarray: ...

    def take(self, positions: np.ndarray) -> np.ndarray: ...


class ArraySample:
    """Values held in memory, as a ``Sample``."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.float64)

    @property
    def size(self) -> int:
        return int(self.values.size)

    def statistics(self, stats: tuple[str, ...]) -> np.ndarray:
        return _statistics(self.values, stats)

    def take(self, positions: np.ndarray) -> np.ndarray:
        return np.asarray(self.values[positions])


def _replicates(
    values: Sample, stats: tuple[str, ...], rounds: int, cap: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap replicates (rounds x stats); with more than ``cap`` values an m-out-of-n
    bootstrap whose spread is rescaled by sqrt(m / n) (consistent for quantiles). Every
    round's positions are drawn first and their values taken at once: a sample read in
    blocks is read once, not once a round."""
    n = values.size
    m = min(n, cap)
    point = values.statistics(stats)
    drawn = values.take(np.concatenate([rng.integers(0, n, m) for _ in range(rounds)]))
    reps = np.empty((rounds, len(stats)))
    for b in range(rounds):
        reps[b] = _statistics(drawn[b * m : (b + 1) * m], stats)
    if m < n:
        reps = point + (reps - point) * np.sqrt(m / n)
    return reps, point


def bootstrap_changes(
    base: np.ndarray | Sample,
    new: np.ndarray | Sample,
    stats: tuple[str, ...],
    *,
    rounds: int = 200,
    cap: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Change]:
    """Relative change of each statistic from base to new (new / base - 1) with a
    percentile-bootstrap confidence interval; deterministic for a given seed. Either side
    is an array or a ``Sample`` (values read in blocks): the same draws, the same result."""
    if isinstance(base, np.ndarray):
        base = ArraySample(base)
    if isinstance(new, np.ndarray):
        new = ArraySample(new)
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
