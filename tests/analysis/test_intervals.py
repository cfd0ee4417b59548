"""The O(n log n) counting primitives against brute-force definitions (hypothesis)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadkit.analysis import intervals
from tests.analysis import reference as ref

# coarse grids provoke ties, the edge cases of half-open spans
grid = st.integers(min_value=0, max_value=40).map(lambda k: k * 0.25)
lengths = st.integers(min_value=0, max_value=30).map(lambda k: k * 0.25)
widths = st.sampled_from([0.25, 1.0, 2.5, 5.0, 7.75])


@st.composite
def interval_sets(draw, max_size=25):
    n = draw(st.integers(min_value=0, max_value=max_size))
    s = np.array([draw(grid) for _ in range(n)], dtype=float)
    h = s + np.array([draw(lengths) for _ in range(n)], dtype=float)
    return s, h


@given(interval_sets(), widths)
@settings(max_examples=150, deadline=None)
def test_certain_max_matches_brute_force(iv, w):
    s, h = iv
    fast = int(intervals.contained_counts(s, h, w).max()) if s.size else 0
    assert fast == ref.certain_max(s, h, w)


@given(interval_sets(), widths)
@settings(max_examples=150, deadline=None)
def test_possible_max_matches_brute_force(iv, w):
    s, h = iv
    assert intervals.touching_max(s, h, w)[0] == ref.possible_max(s, h, w)


@given(interval_sets(), st.lists(st.tuples(grid, grid), min_size=1, max_size=10))
@settings(max_examples=150, deadline=None)
def test_count_covering_brute_and_fenwick(iv, queries):
    s, h = iv
    x = np.array([q[0] for q in queries])
    y = np.array([q[1] for q in queries])
    expected = ref.covering(s, h, x, y)
    assert intervals.count_covering(s, h, x, y).tolist() == expected.tolist()
    old = intervals._BRUTE_CELLS
    intervals._BRUTE_CELLS = 0  # force the Fenwick sweep
    try:
        assert intervals.count_covering(s, h, x, y).tolist() == expected.tolist()
    finally:
        intervals._BRUTE_CELLS = old


@given(interval_sets(), st.booleans())
@settings(max_examples=150, deadline=None)
def test_overlap_max_matches_brute_force(iv, closed):
    s, h = iv
    expected = ref.overlap_max(
        s[h >= s] if closed else s[h > s], h[h >= s] if closed else h[h > s], closed
    )
    assert intervals.overlap_max(s, h, closed)[0] == expected


@given(st.lists(grid, max_size=30), widths)
@settings(max_examples=100, deadline=None)
def test_span_max_matches_brute_force(points, w):
    p = np.array(points, dtype=float)
    assert intervals.span_max(p, w)[0] == ref.span_max(points, w)


def test_fenwick_prefix_sums():
    f = intervals.Fenwick(8)
    for pos in (0, 3, 3, 7):
        f.add(pos)
    assert [f.prefix(c) for c in range(9)] == [0, 1, 1, 1, 3, 3, 3, 3, 4]


def test_contained_counts_with_long_intervals():
    # the first interval is longer than the span: it is inside no span of length 5
    s = np.array([0.0, 1.0, 1.5])
    h = np.array([20.0, 1.2, 1.6])
    assert intervals.contained_counts(s, h, 5.0).tolist() == [2, 2, 1]


@pytest.mark.parametrize("k,expected", [(1, 0.0), (2, 0.5), (3, 2.0), (5, 10.0)])
def test_min_span_for_counts(k, expected):
    p = np.array([0.0, 0.5, 2.0, 2.5, 10.0])
    assert intervals.min_span_for_counts(p, np.array([k]))[0] == pytest.approx(expected)


@given(interval_sets(max_size=8), st.integers(min_value=1, max_value=4))
@settings(max_examples=150, deadline=None)
def test_shortest_touching_span_matches_brute_force(iv, k):
    # the tightest k intervals: the smallest (latest send - earliest headers) over every k
    s, h = iv
    gap, _ = intervals.shortest_touching_span(s, h, k)
    combos = list(itertools.combinations(range(s.size), k))
    want = min((max(s[list(c)]) - min(h[list(c)]) for c in combos), default=np.inf)
    if want >= 0:
        assert gap == want
    else:  # k intervals share an instant: only the sign is promised
        assert gap < 0
    # and it is where touching_max crosses k: more than it holds k, it does not
    if np.isfinite(gap):
        assert intervals.touching_max(s, h, gap + 0.125)[0] >= k
        assert intervals.touching_max(s, h, gap)[0] < k or gap <= 0


@given(interval_sets(max_size=8), st.integers(min_value=1, max_value=4))
@settings(max_examples=150, deadline=None)
def test_longest_common_overlap_matches_brute_force(iv, k):
    s, e = iv
    overlap, _ = intervals.longest_common_overlap(s, e, k)
    combos = list(itertools.combinations(range(s.size), k))
    want = max((min(e[list(c)]) - max(s[list(c)]) for c in combos), default=-np.inf)
    assert overlap == want
    # k share an instant exactly when the overlap is not negative
    if s.size:
        assert (intervals.overlap_max(s, e, closed=True)[0] >= k) == (overlap >= 0)


@given(st.lists(grid, max_size=40), st.integers(min_value=0, max_value=6))
@settings(max_examples=200, deadline=None)
def test_prefix_kth_largest_matches_sorting_each_prefix(values, k):
    v = np.array(values, dtype=float)
    want = [sorted(values[:m], reverse=True)[k - 1] for m in range(k, len(values) + 1)] if k else []
    assert intervals.prefix_kth_largest(v, k).tolist() == want


# unordered floats: ends before starts, ties and distinct values at full precision
floats = st.floats(min_value=-50, max_value=50, allow_nan=False, allow_subnormal=False)


@given(
    st.lists(st.tuples(st.one_of(grid, floats), st.one_of(grid, floats)), max_size=60),
    st.integers(min_value=0, max_value=12),
)
@settings(max_examples=300, deadline=None)
def test_longest_common_overlap_same_as_heap_sweep(pairs, k):
    # value and instant, bit for bit, as the heap sweep it replaced (summary.json unchanged)
    s = np.array([p[0] for p in pairs], dtype=float)
    e = np.array([p[1] for p in pairs], dtype=float)
    got = intervals.longest_common_overlap(s, e, k)
    want = ref.longest_common_overlap_heap(s, e, k)
    assert got[0] == want[0]
    assert got[1] == want[1] or (np.isnan(got[1]) and np.isnan(want[1]))


@given(
    st.lists(st.tuples(st.one_of(grid, floats), st.one_of(grid, floats)), max_size=60),
    st.integers(min_value=1, max_value=12),
)
@settings(max_examples=200, deadline=None)
def test_longest_common_overlap_pruned_same_as_heap_sweep(pairs, k):
    s = np.array([p[0] for p in pairs], dtype=float)
    e = np.array([p[1] for p in pairs], dtype=float)
    with pytest.MonkeyPatch.context() as mp:  # blocks of 2: small sets take the pruned path
        mp.setattr(intervals, "_BLOCK", 2)
        mp.setattr(intervals, "_PRUNE_MIN", 0)
        got = intervals.longest_common_overlap(s, e, k)
    want = ref.longest_common_overlap_heap(s, e, k)
    assert got[0] == want[0]
    assert got[1] == want[1] or (np.isnan(got[1]) and np.isnan(want[1]))


def test_longest_common_overlap_large_k_against_heap_sweep():
    rng = np.random.default_rng(7)
    s = np.round(rng.uniform(0, 100, 5000), 3)
    e = s + np.round(rng.exponential(2.0, 5000), 3)
    for k in (1, 2, 17, 866, 4999, 5000):
        assert intervals.longest_common_overlap(s, e, k) == ref.longest_common_overlap_heap(s, e, k)
    assert intervals.longest_common_overlap(s, e, 5001)[0] == -np.inf


@given(interval_sets(max_size=30), widths)
@settings(max_examples=200, deadline=None)
def test_contained_counts_each_anchor_by_brute_force(iv, w):
    s, h = iv
    want = [int(((s >= a) & (h < a + w)).sum()) for a in s]
    assert intervals.contained_counts(s, h, w).tolist() == want


@given(interval_sets(max_size=40), widths, st.booleans())
@settings(max_examples=200, deadline=None)
def test_pruned_maxima_match_brute_force(iv, w, closed):
    s, h = iv
    with pytest.MonkeyPatch.context() as mp:  # blocks of 2: small sets take the pruned path
        mp.setattr(intervals, "_BLOCK", 2)
        mp.setattr(intervals, "_PRUNE_MIN", 0)
        iset = intervals.Intervals(s, h)
        touching = iset.touching_max(w)
        contained = iset.contained_max(w)
        span = intervals.Intervals(s, s).span_max(w)
        overlap = iset.overlap_max(closed)
    if s.size == 0:
        return
    assert touching == intervals.touching_max(s, h, w)  # the full count, outside the patch
    assert touching[0] == ref.possible_max(s, h, w)
    counts = intervals.contained_counts(s, h, w)
    i = int(np.argmax(counts))  # the first in input order, as requests_verdict reads it
    assert contained == (int(counts[i]), float(s[i]))
    assert contained[0] == ref.certain_max(s, h, w)
    assert span == intervals.span_max(s, w)
    assert span[0] == ref.span_max(list(s), w)
    full = intervals.overlap_max(s, h, closed)
    assert overlap[0] == full[0] and (overlap[1] == full[1] or full[0] == 0)


def test_pruned_maxima_on_a_large_run():
    rng = np.random.default_rng(11)
    s = np.round(np.sort(rng.uniform(0, 600, 40_000)), 4)[rng.permutation(40_000)]
    h = s + np.round(rng.exponential(0.3, s.size), 4)
    iset = intervals.Intervals(s, h)
    for w in (0.5, 7.5, 60.0):
        cnt = np.searchsorted(np.sort(s), np.sort(h) + w) - np.searchsorted(np.sort(h), np.sort(h))
        assert iset.touching_max(w) == (int(cnt.max()), float(np.sort(h)[np.argmax(cnt)]))
        counts = intervals.contained_counts(s, h, w)
        assert iset.contained_max(w) == (int(counts.max()), float(s[np.argmax(counts)]))
