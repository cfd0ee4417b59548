"""Percentiles read from sorted parts are np.percentile's, to the bit (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from loadkit.analysis.stats import describe, describe_sorted, select_sorted

# coarse values provoke ties; wide ones the bit-level search; infinities. No -0.0: which
# of two equal zeros a sort or a partition puts first is its own affair (and a latency
# difference is never -0.0).
values = st.one_of(
    st.integers(min_value=-4, max_value=4).map(float),
    st.floats(allow_nan=False, allow_subnormal=True, width=64).map(lambda x: x + 0.0),
    st.sampled_from([0.0, np.inf, -np.inf, 1e-300, -1e300]),
)


@st.composite
def split_values(draw, max_size=80):
    v = np.array(draw(st.lists(values, min_size=1, max_size=max_size)), dtype=float)
    cuts = sorted(draw(st.lists(st.integers(0, v.size), max_size=5)))
    return v, [np.sort(p) for p in np.split(v, cuts)]


@given(split_values())
@settings(max_examples=400, deadline=None)
def test_describe_sorted_is_describe(vp):
    v, parts = vp
    with np.errstate(all="ignore"):
        want = describe(v)
        got = describe_sorted(parts, float(v.mean()))
    # repr: the same bits (nan equal to nan, -0.0 apart from 0.0) as summary.json writes
    assert repr(got) == repr(want)


@given(split_values(), st.data())
@settings(max_examples=300, deadline=None)
def test_select_sorted_is_the_sorted_union(vp, data):
    v, parts = vp
    ranks = np.array(data.draw(st.lists(st.integers(0, v.size - 1), min_size=1, max_size=8)))
    got = select_sorted(parts, ranks)
    want = np.sort(v)[ranks]
    assert got.tolist() == want.tolist()


def test_many_parts_and_large_parts():
    rng = np.random.default_rng(5)
    v = np.round(rng.lognormal(3, 1, 200_000), 3)
    for n_parts in (2, 9, 100):
        parts = [np.sort(p) for p in np.array_split(v, n_parts)]
        assert describe_sorted(parts, float(v.mean())) == describe(v)
