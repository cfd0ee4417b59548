"""Counting over request intervals: points in sliding spans, interval overlap, and how many
intervals fit in (or could touch) a span of fixed length. Every function is O(n log n):
sorting plus ``searchsorted``, with a Fenwick-tree sweep for the rare 2-D case."""

from __future__ import annotations

import heapq

import numpy as np

_BRUTE_CELLS = 4_000_000  # above this many (point, query) pairs, sweep with a Fenwick tree


class Fenwick:
    """Binary indexed tree over positions 0..size-1 (prefix sums of counts)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.tree = [0] * (size + 1)

    def add(self, pos: int, delta: int = 1) -> None:
        i = pos + 1
        tree, size = self.tree, self.size
        while i <= size:
            tree[i] += delta
            i += i & -i

    def prefix(self, count: int) -> int:
        """Sum over positions 0..count-1."""
        total, tree, i = 0, self.tree, count
        while i > 0:
            total += tree[i]
            i -= i & -i
        return total


def count_covering(s: np.ndarray, h: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """For each query i, how many points j have ``s[j] <= x[i]`` and ``h[j] > y[i]``
    (intervals [s, h] that reach over (x, y]).

    Callers use it where only intervals longer than ``y - x`` can count, which in real
    runs is almost none: those candidates are filtered first, then counted by brute force
    when few, else by a Fenwick sweep over the candidates."""
    s = np.asarray(s, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    out = np.zeros(x.size, dtype=np.int64)
    if s.size == 0 or x.size == 0:
        return out
    gap = y - x
    cand = (h - s) > gap.min()
    if not cand.any():
        return out
    cs, ch = s[cand], h[cand]
    queries = np.flatnonzero(gap < (ch - cs).max())
    if queries.size == 0:
        return out
    qx, qy = x[queries], y[queries]
    if cs.size * queries.size <= _BRUTE_CELLS:
        step = max(1, _BRUTE_CELLS // (4 * max(cs.size, 1)))
        for lo in range(0, queries.size, step):
            hi = lo + step
            hit = (cs[None, :] <= qx[lo:hi, None]) & (ch[None, :] > qy[lo:hi, None])
            out[queries[lo:hi]] = hit.sum(axis=1)
        return out
    out[queries] = _covering_sweep(cs, ch, qx, qy)
    return out


def _covering_sweep(s: np.ndarray, h: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    order_s = np.argsort(s, kind="stable")
    s_sorted, h_by_s = s[order_s], h[order_s]
    h_sorted = np.sort(h)
    h_rank = np.searchsorted(h_sorted, h_by_s, side="left")
    y_rank = np.searchsorted(h_sorted, y, side="right")  # h <= y  <=>  rank < y_rank
    q_order = np.argsort(x, kind="stable")
    tree = Fenwick(s.size)
    res = np.zeros(x.size, dtype=np.int64)
    inserted = 0
    limit = np.searchsorted(s_sorted, x[q_order], side="right")
    for qi, upto in zip(q_order.tolist(), limit.tolist(), strict=True):
        while inserted < upto:
            tree.add(int(h_rank[inserted]))
            inserted += 1
        res[qi] = inserted - tree.prefix(int(y_rank[qi]))
    return res


def _before(v: np.ndarray | float) -> np.ndarray:
    """The largest float below v, so that ``a < v`` can be written ``a <= _before(v)``."""
    return np.nextafter(v, -np.inf)


def contained_counts(s: np.ndarray, h: np.ndarray, width: float) -> np.ndarray:
    """For each anchor i (in input order): #{j : s[j] >= s[i] and h[j] < s[i] + width},
    the intervals [s, h] that lie wholly inside the half-open span [s[i], s[i] + width)."""
    n = s.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    a = s
    b = s + width
    s_sorted = np.sort(s)
    h_sorted = np.sort(h)
    starts_after = n - np.searchsorted(s_sorted, a, side="left")
    ends_at_or_after = n - np.searchsorted(h_sorted, b, side="left")
    # intervals with s < a and h >= b were subtracted twice: they reach over the whole span
    over = count_covering(s, h, _before(a), _before(b))
    return np.asarray(starts_after - ends_at_or_after + over)


def touching_max(s: np.ndarray, h: np.ndarray, width: float) -> tuple[int, float]:
    """The most intervals [s, h] that intersect one half-open span [t, t + width), and the
    t that achieves it (nan when there are none)."""
    if s.size == 0:
        return 0, float("nan")
    # [s, h] meets [t, t+w)  <=>  s < t + w and h >= t; the count is largest at some t = h_k
    t = np.sort(h)
    cnt = np.searchsorted(np.sort(s), t + width, side="left") - np.searchsorted(t, t, side="left")
    k = int(np.argmax(cnt))
    return int(cnt[k]), float(t[k])


def touching_mask(s: np.ndarray, h: np.ndarray, t: float, width: float) -> np.ndarray:
    return (s < t + width) & (h >= t)


def span_counts(points_sorted: np.ndarray, width: float) -> np.ndarray:
    """For each sorted point p_i: how many points lie in [p_i, p_i + width)."""
    idx = np.arange(points_sorted.size)
    return np.searchsorted(points_sorted, points_sorted + width, side="left") - idx


def span_max(points: np.ndarray, width: float) -> tuple[int, float]:
    """Most points in any half-open span of length ``width``, and where that span starts."""
    if points.size == 0:
        return 0, float("nan")
    p = np.sort(points)
    cnt = span_counts(p, width)
    k = int(np.argmax(cnt))
    return int(cnt[k]), float(p[k])


def overlap_max(starts: np.ndarray, ends: np.ndarray, closed: bool) -> tuple[int, float]:
    """Most intervals holding one common instant, and the instant.

    ``closed``: [start, end] (touching intervals overlap); else [start, end) with
    touching intervals apart. Empty intervals (end < start, or end <= start when half-open)
    never count."""
    keep = ends >= starts if closed else ends > starts
    st, en = starts[keep], ends[keep]
    if st.size == 0:
        return 0, float("nan")
    st_sorted = np.sort(st)
    en_sorted = np.sort(en)
    started = np.searchsorted(st_sorted, st_sorted, side="right")
    ended = np.searchsorted(en_sorted, st_sorted, side="left" if closed else "right")
    cnt = started - ended
    k = int(np.argmax(cnt))
    return int(cnt[k]), float(st_sorted[k])


def holding_mask(starts: np.ndarray, ends: np.ndarray, t: float, closed: bool) -> np.ndarray:
    if closed:
        return (starts <= t) & (ends >= t)
    return (starts <= t) & (ends > t)


def min_span_for_counts(points_sorted: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """For each k: the shortest distance between the first and last of k consecutive
    sorted points (the smallest closed span holding k points)."""
    n = points_sorted.size
    out = np.full(ks.size, np.inf)
    for i, k in enumerate(ks.tolist()):
        if 1 <= k <= n:
            out[i] = float(np.min(points_sorted[k - 1 :] - points_sorted[: n - k + 1]))
    return out


def shortest_touching_span(s: np.ndarray, h: np.ndarray, k: int) -> tuple[float, float]:
    """The tightest k intervals [s, h]: G such that k of them meet one half-open span
    [t, t + w) exactly when w > G, and the t that achieves it (inf and nan when there are
    fewer than k). ``touching_max(s, h, w) >= k`` iff ``w > G``.

    Exact when no k intervals share an instant; otherwise some G < 0 (any span then
    meets k of them). The span can start at the earliest h of the k (t = h_(r), the r-th
    smallest h); the k intervals with the smallest s among those with h >= t then fit
    when s_(r + k - 1) < t + w, since every interval with h < t has s < t as well."""
    n = s.size
    if k < 1 or n < k:
        return float("inf"), float("nan")
    s_sorted, h_sorted = np.sort(s), np.sort(h)
    gaps = s_sorted[k - 1 :] - h_sorted[: n - k + 1]
    r = int(np.argmin(gaps))
    return float(gaps[r]), float(h_sorted[r])


def longest_common_overlap(starts: np.ndarray, ends: np.ndarray, k: int) -> tuple[float, float]:
    """The longest time k closed intervals [start, end] all hold together, min(end) -
    max(start) over every k of them, and the latest start of that k (-inf and nan with
    fewer than k). Negative: no k share an instant, and the best k missed by that much.
    ``overlap_max(starts, ends, closed=True) >= k`` iff the result is >= 0."""
    n = starts.size
    if k < 1 or n < k:
        return float("-inf"), float("nan")
    order = np.argsort(starts, kind="stable")
    st, en = starts[order].tolist(), ends[order].tolist()
    best, at = float("-inf"), float("nan")
    heap: list[float] = []  # the k - 1 latest ends among the intervals started so far
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
