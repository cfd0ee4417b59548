"""Brute-force O(n^2) definitions that the fast verdict code is checked against."""

from __future__ import annotations

import numpy as np


def certain_max(s, h, w):
    """Most intervals [s, h] inside one half-open [s_i, s_i + w)."""
    best = 0
    for i in range(len(s)):
        c = sum(1 for j in range(len(s)) if s[j] >= s[i] and h[j] < s[i] + w)
        best = max(best, c)
    return best


def possible_max(s, h, w):
    """Most intervals meeting one [t, t + w), over many candidate t."""
    cands = set()
    for x in list(s) + list(h):
        for t in (x, x - w, np.nextafter(x - w, np.inf), np.nextafter(x, -np.inf), x - w / 2):
            cands.add(float(t))
    best = 0
    for t in cands:
        c = sum(1 for j in range(len(s)) if s[j] < t + w and h[j] >= t)
        best = max(best, c)
    return best


def covering(s, h, x, y):
    return np.array(
        [
            sum(1 for j in range(len(s)) if s[j] <= xi and h[j] > yi)
            for xi, yi in zip(x, y, strict=True)
        ],
        dtype=np.int64,
    )


def overlap_max(starts, ends, closed):
    cands = set(list(starts) + list(ends))
    best = 0
    for t in cands:
        if closed:
            c = sum(1 for a, b in zip(starts, ends, strict=True) if a <= t <= b)
        else:
            c = sum(1 for a, b in zip(starts, ends, strict=True) if a <= t < b)
        best = max(best, c)
    return best


def span_max(points, w):
    best = 0
    for p in points:
        best = max(best, sum(1 for q in points if p <= q < p + w))
    return best


def remaining_bounds(s_adm, h_adm, s_maybe, h_maybe, i_list, w):
    """lower/upper bounds of the admitted count in the window of admitted request i."""
    lower, upper = [], []
    for i in i_list:
        si, hi = s_adm[i], h_adm[i]
        lo = 1 + sum(
            1 for j in range(len(s_adm)) if j != i and s_adm[j] > hi - w and h_adm[j] <= si
        )
        up = sum(1 for j in range(len(s_maybe)) if h_maybe[j] > si - w and s_maybe[j] <= hi)
        lower.append(lo)
        upper.append(up)
    return np.array(lower), np.array(upper)


def longest_common_overlap_heap(starts, ends, k):
    """The heap sweep ``intervals.longest_common_overlap`` used before it was vectorised:
    in order of start, each interval against the k - 1 latest ends before it."""
    import heapq

    n = len(starts)
    if k < 1 or n < k:
        return float("-inf"), float("nan")
    order = np.argsort(starts, kind="stable")
    st, en = np.asarray(starts)[order].tolist(), np.asarray(ends)[order].tolist()
    best, at = float("-inf"), float("nan")
    heap = []
    for x, y in zip(st, en, strict=True):
        if len(heap) == k - 1:
            o = min(y, heap[0] if heap else y) - x
            if o > best:
                best, at = o, x
        if k > 1:
            if len(heap) < k - 1:
                heapq.heappush(heap, y)
            elif y > heap[0]:
                heapq.heapreplace(heap, y)
    return best, at
