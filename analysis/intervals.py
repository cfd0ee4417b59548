"""Counting over request intervals: points in sliding spans, interval overlap, and how many
intervals fit in (or could touch) a span of fixed length. Every function is O(n log n):
sorting plus ``searchsorted``, with a Fenwick-tree sweep for the rare 2-D case."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any, Literal

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


def _run_firsts(x: np.ndarray) -> np.ndarray:
    """``np.searchsorted(x, x, side="left")`` of a sorted x in O(n): where each value's run
    of equal values begins."""
    n = x.size
    new = np.ones(n, dtype=bool)
    np.not_equal(x[1:], x[:-1], out=new[1:])
    new[1:] &= ~(np.isnan(x[1:]) & np.isnan(x[:-1]))
    return np.asarray(np.maximum.accumulate(np.where(new, np.arange(n), 0)))


def _run_ends(x: np.ndarray) -> np.ndarray:
    """``np.searchsorted(x, x, side="right")`` of a sorted x in O(n): where each value's
    run of equal values ends."""
    n = x.size
    last = np.ones(n, dtype=bool)
    np.not_equal(x[1:], x[:-1], out=last[:-1])
    last[:-1] &= ~(np.isnan(x[1:]) & np.isnan(x[:-1]))
    ends = np.where(last, np.arange(1, n + 1), n)
    return np.asarray(np.minimum.accumulate(ends[::-1])[::-1])


_BLOCK = 64
_PRUNE_MIN = 8 * _BLOCK  # fewer positions are counted one by one


def _max_difference(
    p: Callable[[np.ndarray], np.ndarray], q: Callable[[np.ndarray], np.ndarray], n: int
) -> tuple[Any, np.ndarray]:
    """The largest p(k) - q(k) over k = 0..n-1 (n >= 1), and every k that reaches it
    (ascending), for counts p and q that never fall as k grows: each given the positions
    it is wanted at (a ``searchsorted`` over just those).

    Blocks of positions first: p(last) - q(first) bounds a block, p(last) - q(last) is
    exact; only blocks whose bound reaches the best exact value are counted position by
    position. Every position that reaches the maximum lies in one of them."""
    if n <= _PRUNE_MIN:
        k = np.arange(n)
        d = np.asarray(p(k) - q(k))
        return d.max(), np.flatnonzero(d == d.max())
    first = np.arange(0, n, _BLOCK)
    last = np.minimum(first + _BLOCK - 1, n - 1)
    p_last = np.asarray(p(last))
    best = (p_last - np.asarray(q(last))).max()
    open_ = first[p_last - np.asarray(q(first)) >= best]
    k = (open_[:, None] + np.arange(_BLOCK)).ravel()
    k = k[k < n]
    d = np.asarray(p(k) - q(k))
    return d.max(), k[d == d.max()]


class Intervals:
    """Intervals [s, h] with their starts and ends sorted once, for the many counting
    queries a key's verdicts ask of the same requests; each answer is the module-level
    function's (``contained_counts``, ``touching_max``, ...), computed the same way."""

    def __init__(self, s: np.ndarray, h: np.ndarray) -> None:
        self.s = np.asarray(s, dtype=np.float64)
        self.h = np.asarray(h, dtype=np.float64)
        self.n = int(self.s.size)
        self._memo: dict[tuple[str, float], tuple[int, float]] = {}

    @cached_property
    def s_order(self) -> np.ndarray:
        return np.argsort(self.s, kind="stable")

    @cached_property
    def s_sorted(self) -> np.ndarray:
        return np.asarray(self.s[self.s_order])

    @cached_property
    def h_sorted(self) -> np.ndarray:
        return np.sort(self.h)

    def contained_counts(self, width: float) -> np.ndarray:
        """``contained_counts(s, h, width)``: anchors in input order."""
        n = self.n
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        # every anchor in order of s; the counts go back to input order at the end
        a = self.s_sorted
        b = a + width
        counts = self.starts_at_or_after - (n - np.searchsorted(self.h_sorted, b, side="left"))
        # intervals with s < a and h >= b were subtracted twice: they reach over the whole
        # span, so only those longer than it (count_covering finds none when none is)
        if not self._shorter_than(width):
            counts += count_covering(self.s, self.h, _before(a), _before(b))
        out = np.empty(n, dtype=np.int64)
        out[self.s_order] = counts
        return out

    @cached_property
    def starts_at_or_after(self) -> np.ndarray:
        """For each start in sorted order: how many starts are at or after it."""
        return np.asarray(self.n - _run_firsts(self.s_sorted))

    @cached_property
    def h_firsts(self) -> np.ndarray:
        return _run_firsts(self.h_sorted)

    @cached_property
    def _longest(self) -> float:
        return float(np.max(self.h - self.s)) if self.n else float("-inf")

    def _shorter_than(self, width: float) -> bool:
        """Every interval is shorter than any span [a, a + width) of the starts as
        ``count_covering`` measures it (the gap between the floats just below a and
        a + width), with room for the rounding of both."""
        reach = float(np.max(np.abs(self.s_sorted[[0, -1]]))) + abs(width)
        if not (np.isfinite(reach) and np.isfinite(self._longest)):
            return False
        return self._longest < width - 8 * float(np.spacing(reach))

    def contained_max(self, width: float) -> tuple[int, float]:
        """The most intervals inside one [s_i, s_i + width), and the first such s_i in input
        order (0 and nan without intervals)."""
        key = ("contained", width)
        if key not in self._memo:
            if self.n == 0:
                self._memo[key] = (0, float("nan"))
            elif self._shorter_than(width):
                # in order of s: A(s_k + width) - firsts(k), both growing with k
                a = self.s_sorted
                top, hits = _max_difference(
                    lambda k: np.searchsorted(self.h_sorted, a[k] + width, side="left"),
                    lambda k: np.asarray(self.n - self.starts_at_or_after[k]),
                    self.n,
                )
                i = int(self.s_order[hits].min())  # the first in input order
                self._memo[key] = (int(top), float(self.s[i]))
            else:
                counts = self.contained_counts(width)
                i = int(np.argmax(counts))
                self._memo[key] = (int(counts[i]), float(self.s[i]))
        return self._memo[key]

    def touching_max(self, width: float) -> tuple[int, float]:
        """``touching_max(s, h, width)``."""
        key = ("touching", width)
        if key not in self._memo:
            if self.n == 0:
                self._memo[key] = (0, float("nan"))
            else:
                # [s, h] meets [t, t+w)  <=>  s < t + w and h >= t; the count is largest at
                # some t = h_k
                t = self.h_sorted
                top, hits = _max_difference(
                    lambda k: np.searchsorted(self.s_sorted, t[k] + width, side="left"),
                    lambda k: self.h_firsts[k],
                    self.n,
                )
                self._memo[key] = (int(top), float(t[hits[0]]))
        return self._memo[key]

    def span_max(self, width: float) -> tuple[int, float]:
        """``span_max(s, width)``: the starts as points."""
        key = ("span", width)
        if key not in self._memo:
            if self.n == 0:
                self._memo[key] = (0, float("nan"))
            else:
                p = self.s_sorted
                top, hits = _max_difference(
                    lambda k: np.searchsorted(p, p[k] + width, side="left"),
                    lambda k: k,
                    self.n,
                )
                self._memo[key] = (int(top), float(p[hits[0]]))
        return self._memo[key]

    def overlap_max(self, closed: bool) -> tuple[int, float]:
        """``overlap_max(s, h, closed)``."""
        key = ("overlap", float(closed))
        if key not in self._memo:
            keep = self.h >= self.s if closed else self.h > self.s
            iv = self if keep.all() else Intervals(self.s[keep], self.h[keep])
            if iv.n == 0:
                self._memo[key] = (0, float("nan"))
            else:
                st_sorted = iv.s_sorted
                started = _run_ends(st_sorted)
                side: Literal["left", "right"] = "left" if closed else "right"
                top, hits = _max_difference(
                    lambda k: started[k],
                    lambda k: np.searchsorted(iv.h_sorted, st_sorted[k], side=side),
                    iv.n,
                )
                self._memo[key] = (int(top), float(st_sorted[hits[0]]))
        return self._memo[key]

    def shortest_touching_span(self, k: int) -> tuple[float, float]:
        """``shortest_touching_span(s, h, k)``."""
        n = self.n
        if k < 1 or n < k:
            return float("inf"), float("nan")
        gaps = self.s_sorted[k - 1 :] - self.h_sorted[: n - k + 1]
        r = int(np.argmin(gaps))
        return float(gaps[r]), float(self.h_sorted[r])

    def longest_common_overlap(self, k: int) -> tuple[float, float]:
        """``longest_common_overlap(s, h, k)``."""
        if k < 1 or self.n < k:
            return float("-inf"), float("nan")
        # o(m) = g(m) - st[m] over m = k-1..n-1, g(m) the k-th latest end among the first
        # m + 1: both grow with m, so blocks of m bound it (``_max_difference``)
        st = self.s_sorted
        prefixes = PrefixOrder(self.h[self.s_order])
        top, hits = _max_difference(
            lambda m: prefixes.kth_largest(m + k, k),
            lambda m: st[m + k - 1],
            self.n - k + 1,
        )
        return float(top), float(st[k - 1 + hits[0]])


def contained_counts(s: np.ndarray, h: np.ndarray, width: float) -> np.ndarray:
    """For each anchor i (in input order): #{j : s[j] >= s[i] and h[j] < s[i] + width},
    the intervals [s, h] that lie wholly inside the half-open span [s[i], s[i] + width)."""
    return Intervals(s, h).contained_counts(width)


def touching_max(s: np.ndarray, h: np.ndarray, width: float) -> tuple[int, float]:
    """The most intervals [s, h] that intersect one half-open span [t, t + width), and the
    t that achieves it (nan when there are none)."""
    return Intervals(s, h).touching_max(width)


def touching_mask(s: np.ndarray, h: np.ndarray, t: float, width: float) -> np.ndarray:
    return (s < t + width) & (h >= t)


def span_counts(points_sorted: np.ndarray, width: float) -> np.ndarray:
    """For each sorted point p_i: how many points lie in [p_i, p_i + width)."""
    idx = np.arange(points_sorted.size)
    return np.searchsorted(points_sorted, points_sorted + width, side="left") - idx


def span_max(points: np.ndarray, width: float) -> tuple[int, float]:
    """Most points in any half-open span of length ``width``, and where that span starts."""
    return Intervals(points, points).span_max(width)


def overlap_max(starts: np.ndarray, ends: np.ndarray, closed: bool) -> tuple[int, float]:
    """Most intervals holding one common instant, and the instant.

    ``closed``: [start, end] (touching intervals overlap); else [start, end) with
    touching intervals apart. Empty intervals (end < start, or end <= start when half-open)
    never count."""
    return Intervals(starts, ends).overlap_max(closed)


def holding_mask(starts: np.ndarray, ends: np.ndarray, t: float, closed: bool) -> np.ndarray:
    if closed:
        return (starts <= t) & (ends >= t)
    return (starts <= t) & (ends > t)


def min_span_for_counts(points_sorted: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """For each k: the shortest distance between the first and last of k consecutive
    sorted points (the smallest closed span holding k points)."""
    n = points_sorted.size
    out = np.full(ks.size, np.inf)
    spans = np.empty(n)  # one buffer for every k's spans
    for i, k in enumerate(ks.tolist()):
        if 1 <= k <= n:
            m = n - k + 1
            np.subtract(points_sorted[k - 1 :], points_sorted[:m], out=spans[:m])
            out[i] = float(spans[:m].min())
    return out


def shortest_touching_span(s: np.ndarray, h: np.ndarray, k: int) -> tuple[float, float]:
    """The tightest k intervals [s, h]: G such that k of them meet one half-open span
    [t, t + w) exactly when w > G, and the t that achieves it (inf and nan when there are
    fewer than k). ``touching_max(s, h, w) >= k`` iff ``w > G``.

    Exact when no k intervals share an instant; otherwise some G < 0 (any span then
    meets k of them). The span can start at the earliest h of the k (t = h_(r), the r-th
    smallest h); the k intervals with the smallest s among those with h >= t then fit
    when s_(r + k - 1) < t + w, since every interval with h < t has s < t as well."""
    return Intervals(s, h).shortest_touching_span(k)


class PrefixOrder:
    """Order statistics of the prefixes of a sequence: a wavelet matrix of its values' ranks
    (one stable split of the sequence per bit of the ranks, top bit first), built in
    O(n log n) numpy passes; any number of prefixes are then answered together, one pass
    per bit."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.float64)
        n = self.n = self.values.size
        self.order = np.argsort(self.values, kind="stable")
        self.int = np.int32 if n < 2**31 - 1 else np.int64
        seq: np.ndarray = np.empty(n, dtype=self.int)
        seq[self.order] = np.arange(n, dtype=self.int)  # distinct ranks, ascending by value
        self.levels: list[tuple[int, np.ndarray]] = []  # (bit, zeros before each position)
        for bit in reversed(range(max(1, (n - 1).bit_length()))):
            zero = ((seq >> bit) & 1) == 0
            zeros_before = np.zeros(n + 1, dtype=self.int)
            np.cumsum(zero, out=zeros_before[1:])
            self.levels.append((bit, zeros_before))
            seq = np.concatenate((seq[zero], seq[~zero]))

    def kth_largest(self, sizes: np.ndarray, k: int) -> np.ndarray:
        """The k-th largest of values[:m] for each m in ``sizes`` (each k..n)."""
        # the k-th largest of m values is the (m - k)-th smallest (0-based) of ranks [lo, hi)
        hi: np.ndarray = np.asarray(sizes, dtype=self.int)
        lo: np.ndarray = np.zeros(hi.size, dtype=self.int)
        want: np.ndarray = hi - k
        rank: np.ndarray = np.zeros(hi.size, dtype=self.int)
        for bit, zeros_before in self.levels:
            total = zeros_before[self.n]
            z_lo, z_hi = zeros_before[lo], zeros_before[hi]
            in_zeros = z_hi - z_lo
            one = want >= in_zeros
            want -= in_zeros * one
            lo = np.where(one, total + lo - z_lo, z_lo)
            hi = np.where(one, total + hi - z_hi, z_hi)
            rank |= one.astype(self.int) << bit
        return np.asarray(self.values[self.order[rank]])


def prefix_kth_largest(values: np.ndarray, k: int) -> np.ndarray:
    """For each prefix of at least k values, values[:m] for m = k..n: its k-th largest value
    (empty with fewer than k values), in O(n log n) (``PrefixOrder``)."""
    n = np.asarray(values).size
    if k < 1 or n < k:
        return np.zeros(0, dtype=np.float64)
    return PrefixOrder(values).kth_largest(np.arange(k, n + 1), k)


def longest_common_overlap(starts: np.ndarray, ends: np.ndarray, k: int) -> tuple[float, float]:
    """The longest time k closed intervals [start, end] all hold together, min(end) -
    max(start) over every k of them, and the latest start of that k (-inf and nan with
    fewer than k). Negative: no k share an instant, and the best k missed by that much.
    ``overlap_max(starts, ends, closed=True) >= k`` iff the result is >= 0.

    In order of start, the best k whose latest start is the m-th is the m-th with the k - 1
    latest ends before it; the best over every m equals the best over m of (the k-th latest
    end among the first m) - (the m-th start), reached first at the same m, since starts
    only grow."""
    return Intervals(starts, ends).longest_common_overlap(k)
