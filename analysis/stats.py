"""Exact descriptive statistics on raw values (numpy percentiles, linear interpolation) and
the seeded, bounded bootstrap that ``compare`` uses for confidence intervals."""

from __future__ import annotations

import numpy as np

STATS = ("p50", "p90", "p95", "p99", "p99_9", "mean", "max", "count")
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p99_9": 99.9}


def describe(values: np.ndarray) -> dict[str, float | int | None]:
    """p50, p90, p95, p99, p99.9 (numpy 'linear' method), mean, max and count."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {k: None for k in STATS[:-1]} | {"count": 0}
    qs = np.percentile(v, list(PERCENTILES.values()))
    out: dict[str, float | int | None] = {
        k: float(q) for k, q in zip(PERCENTILES, qs.tolist(), strict=True)
    }
    out["mean"] = float(v.mean())
    out["max"] = float(v.max())
    out["count"] = int(v.size)
    return out


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
) -> dict[str, dict[str, float | None]]:
    """Relative change of each statistic from base to new (new / base - 1) with a
    percentile-bootstrap confidence interval; deterministic for a given seed."""
    base = np.asarray(base, dtype=np.float64)
    new = np.asarray(new, dtype=np.float64)
    empty = {"base": None, "new": None, "change": None, "ci_low": None, "ci_high": None}
    if base.size == 0 or new.size == 0:
        return {s: dict(empty) for s in stats}
    rng = np.random.default_rng(seed)
    rb, pb = _replicates(base, stats, rounds, cap, rng)
    rn, pn = _replicates(new, stats, rounds, cap, rng)
    alpha = (1.0 - confidence) / 2.0
    out = {}
    for i, s in enumerate(stats):
        if pb[i] == 0:
            out[s] = empty | {"base": float(pb[i]), "new": float(pn[i])}
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = rn[:, i] / rb[:, i] - 1.0
        ratio = ratio[np.isfinite(ratio)]
        lo, hi = np.quantile(ratio, [alpha, 1.0 - alpha]) if ratio.size else (np.nan, np.nan)
        out[s] = {
            "base": float(pb[i]),
            "new": float(pn[i]),
            "change": float(pn[i] / pb[i] - 1.0),
            "ci_low": float(lo),
            "ci_high": float(hi),
        }
    return out


def bootstrap_change(
    base: np.ndarray, new: np.ndarray, stat: str, **kw: float
) -> dict[str, float | None]:
    """One statistic's change with its bootstrap confidence interval."""
    return bootstrap_changes(base, new, (stat,), **kw)[stat]  # type: ignore[arg-type]


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value (normal approximation with tie correction)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n1, n2 = a.size, b.size
    if n1 == 0 or n2 == 0:
        return float("nan")
    both = np.concatenate([a, b])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(both.size)
    sorted_v = both[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    mu = n1 * n2 / 2.0
    n = n1 + n2
    tie = float((counts**3 - counts).sum())
    sigma = np.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie / (n * (n - 1)))) if n > 1 else 0.0
    if sigma == 0:
        return 1.0
    z = (abs(u1 - mu) - 0.5) / sigma
    from math import erfc, sqrt

    return float(erfc(max(z, 0.0) / sqrt(2.0)))
