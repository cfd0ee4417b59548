"""Time-binned reductions the charts draw: per-bin and sliding quantiles, centred means,
the most intervals open at once per bin. Vectorised (one Python step per window at most), so
a million records reduce in about the time of a few passes over them."""

from __future__ import annotations

import numpy as np

SMOOTH_POINTS = 15  # a smoothed series averages over about 1/15 of the run


def smooth_bins(nbins: int) -> int:
    """How many bins a smoothed series spans: about 1/SMOOTH_POINTS of the run, at least 1."""
    return max(1, int(round(nbins / SMOOTH_POINTS)))


def rolling_mean(values: np.ndarray, k: int) -> np.ndarray:
    """Centred mean over ``k`` bins, ignoring NaN (NaN where a window has no value); the
    window is cut short at either end rather than padded with zeros."""
    v = np.asarray(values, dtype=np.float64)
    if k <= 1 or v.size == 0:
        return v.copy()
    ok = np.isfinite(v)
    kernel = np.ones(k)
    total = np.convolve(np.where(ok, v, 0.0), kernel, mode="same")
    count = np.convolve(ok.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def binned_quantiles(
    times: np.ndarray, values: np.ndarray, width: float, nbins: int, qs: tuple[float, ...]
) -> dict[float, np.ndarray]:
    """Nearest-rank quantiles of ``values`` per time bin (NaN for empty bins), no Python loop
    over bins."""
    out = {q: np.full(nbins, np.nan) for q in qs}
    if values.size == 0:
        return out
    b = np.clip((times // width).astype(np.int64), 0, nbins - 1)
    order = np.lexsort((values, b))
    counts = np.bincount(b, minlength=nbins)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = counts > 0
    sv = values[order]
    for q in qs:
        pos = starts + np.floor(q * (counts - 1)).astype(np.int64)
        out[q][has] = sv[pos[has]]
    return out


def sliding_quantiles(
    times: np.ndarray,
    values: np.ndarray,
    width: float,
    nbins: int,
    k: int,
    qs: tuple[float, ...],
    stride: int = 1,
) -> dict[float, np.ndarray]:
    """Nearest-rank quantiles of ``values`` over ``k`` bins centred on bins 0, ``stride``,
    2 ``stride``, ...: a p99 of ten seconds of requests instead of the noisy p99 of one
    second's few. Each window costs a pass over its values, so a stride of about k/4 keeps
    the total near four passes over the data whatever k is."""
    centres = np.arange(0, nbins, max(1, stride))
    out = {q: np.full(centres.size, np.nan) for q in qs}
    if values.size == 0:
        return out
    b = np.clip((times // width).astype(np.int64), 0, nbins - 1)
    order = np.argsort(b, kind="stable")
    b, v = b[order], values[order]
    lo = np.searchsorted(b, centres - k // 2, side="left")
    hi = np.searchsorted(b, centres - k // 2 + k, side="left")
    for i in np.flatnonzero(hi > lo):
        part = v[lo[i] : hi[i]]
        ranks = [int(np.floor(q * (part.size - 1))) for q in qs]
        part = np.partition(part, ranks)
        for q, r in zip(qs, ranks, strict=True):
            out[q][i] = part[r]
    return out


def bin_max(
    times_sorted: np.ndarray, values: np.ndarray, width: float, nbins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin max of ``values`` (times sorted ascending) and the index of each bin's first
    event (``size`` when none); bins without events hold -inf."""
    first = np.searchsorted(times_sorted, np.arange(nbins) * width, side="left")
    out = np.full(nbins, -np.inf)
    nxt = np.append(first[1:], times_sorted.size)
    has = nxt > first
    if has.any():
        # each segment runs to the next non-empty bin's first event: exactly this bin's events
        out[has] = np.maximum.reduceat(values, first[has])
    return out, first


def step_max_per_bin(starts: np.ndarray, ends: np.ndarray, width: float, nbins: int) -> np.ndarray:
    """Most intervals [start, end) open at once within each time bin."""
    keep = ends > starts
    if not keep.any():
        return np.zeros(nbins)
    t = np.concatenate([starts[keep], ends[keep]])
    d = np.concatenate([np.ones(keep.sum()), -np.ones(keep.sum())])
    order = np.lexsort((d, t))  # ends before starts at the same instant
    t, level = t[order], np.cumsum(d[order])
    in_bin, first = bin_max(t, level, width, nbins)
    entry = np.where(first > 0, level[np.maximum(first - 1, 0)], 0.0)
    return np.asarray(np.maximum(in_bin, entry))
