"""loadkit's e-divisive means against Apache Otava's published behaviour: the expected
change points of Otava's own test suite (``tests/analysis_test.py``,
``tests/change_point_divisive_test.py``, ``tests/tigerbeetle_test.py``) and of its CSV
example (``docs/BASICS.md``), reproduced exactly (``otava_compat``: Otava 0.8's merge
order); where loadkit's merge re-tests both neighbours of a dropped point it agrees with
Otava except where Otava's stale re-test decides. The Q-hat statistic is checked against
its definition in Matteson & James, computed the slow way."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadkit.history.changepoints import change_points, e_divisive, qhat_candidate, ttest
from tests.history.builders import noisy

# Otava tests/tigerbeetle_test.py: the TigerBeetle benchmark series from Nyrkiö's demo
# fmt: off
TIGERBEETLE = [26705, 26475, 26641, 26806, 26835, 26911, 26564, 26812, 26874, 26682, 15672, 26745, 26460, 26977, 26851, 23412, 23547, 23674, 23519, 23670, 23662, 23462, 23750, 23717, 23524, 23588, 23687, 23793, 23937, 23715, 23570, 23730, 23690, 23699, 23670, 23860, 23988, 23652, 23681, 23798, 23728, 23604, 23523, 23412, 23685, 23773, 23771, 23718, 23409, 23739, 23674, 23597, 23682, 23680, 23711, 23660, 23990, 23938, 23742, 23703, 23536, 24363, 24414, 24483, 24509, 24944, 24235, 24560, 24236, 24667, 24730, 28346, 28437, 28436, 28057, 28217, 28456, 28427, 28398, 28250, 28331, 28222, 28726, 28578, 28345, 28274, 28514, 28590, 28449, 28305, 28411, 28788, 28404, 28821, 28580, 27483, 26805, 27487, 27124, 26898, 27295, 26951, 27312, 27660, 27154, 27050, 26989, 27193, 27503, 27326, 27375, 27513, 27057, 27421, 27574, 27609, 27123, 27824, 27644, 27394, 27836, 27949, 27702, 27457, 27272, 28207, 27802, 27516, 27586, 28005, 27768, 28543, 28237, 27915, 28437, 28342, 27733, 28296, 28524, 28687, 28258, 28611, 29360, 28590, 29641, 28965, 29474, 29256, 28611, 28205, 28539, 27962, 28398, 28509, 28240, 28592, 28102, 28461, 28578, 28669, 28507, 28535, 28226, 28536, 28561, 28087, 27953, 28398, 28007, 28518, 28337, 28242, 28607, 28545, 28514, 28377, 28010, 28412, 28633, 28576, 28195, 28637, 28724, 28466, 28287, 28719, 28425, 28860, 28842, 28604, 28327, 28216, 28946, 28918, 29287, 28725, 29148, 29541, 29137, 29628, 29087, 28612, 29154, 29108, 28884, 29234, 28695, 28969, 28809, 28695, 28634, 28916, 29852, 29389, 29757, 29531, 29363, 29251, 29552, 29561, 29046, 29795, 29022, 29395, 28921, 29739, 29257, 29455, 29376, 29528, 28909, 29492, 28984, 29621, 29026, 29457, 29102, 29114, 28924, 29162, 29259, 29554, 29616, 29211, 29367, 29460, 28836, 29645, 29586, 28848, 29324, 28969, 29150, 29243, 29081, 29312, 28923, 29272, 29117, 29072, 29529, 29737, 29652, 29612, 29856, 29012, 30402, 29969, 29309, 29439, 29285, 29421, 29023, 28772, 29692, 29416, 29267, 29542, 29904, 30045, 29739, 29945, 29141, 29163, 29765, 29197, 29441, 28910, 29504, 29614, 29643, 29506, 29420, 29672, 29432, 29784, 29888, 29309, 29247, 29816, 29254, 29813, 29451, 29382, 29618, 28558, 29845, 29499, 29283, 29184, 29246, 28790, 29952, 29145, 29415, 30437, 29227, 29605, 29859, 29156, 29807, 29406, 29734, 29861, 29140, 29983, 29832, 29919, 29896, 29991, 29266, 29001, 29459, 29548, 29310, 29042, 29303, 29894, 29091, 29018, 29537, 29614, 29180, 29736, 29500, 29218, 29581, 28906, 28542, 29306, 28987, 29878, 28865, 30272, 29707, 29662, 29815, 30492, 29347, 30096, 29054, 30238, 28813, 31895, 28915]  # noqa: E501

# (max_pvalue, min_magnitude, expected change points), window 30: Otava's published results
TIGERBEETLE_EXPECTED = [
    (0.01, 0.05, [15, 71]),
    (0.05, 0.05, [15, 71]),
    (0.1, 0.05, [10, 11, 15, 71, 363]),
    (0.2, 0.05, [10, 11, 15, 71]),
    (0.2, 0.0, [3, 6, 7, 10, 11, 13, 15, 16, 28, 29, 35, 37, 39, 41, 44, 48, 49, 56, 58, 61, 65, 66, 69, 71, 74, 76, 82, 95, 108, 117, 125, 126, 129, 131, 136, 137, 142, 148, 165, 169, 187, 190, 192, 197, 200, 212, 220, 241, 243, 246, 247, 249, 250, 260, 265, 266, 268, 278, 282, 288, 305, 306, 325, 330, 337, 338, 340, 347, 349, 363]),  # noqa: E501
    (0.1, 0.0, [3, 6, 10, 11, 15, 16, 28, 29, 35, 37, 39, 41, 44, 48, 49, 61, 71, 95, 117, 131, 142, 148, 165, 169, 192, 206, 212, 260, 265, 268, 278, 282, 288, 305, 363]),  # noqa: E501
    (0.01, 0.0, [15, 26, 61, 71, 95, 117, 131, 142, 148, 165, 169, 192, 212, 260]),
    (0.001, 0.0, [15, 61, 71, 95, 117, 131, 142, 148, 192, 212, 260]),
    (0.0001, 0.0, [71, 95, 117, 131, 142, 148, 192, 212]),
    (1e-05, 0.0, [71, 95, 131, 192, 212]),
]
# fmt: on


@pytest.mark.parametrize(("pvalue", "magnitude", "expected"), TIGERBEETLE_EXPECTED)
def test_tigerbeetle_matches_otava(pvalue, magnitude, expected):
    found = change_points(
        TIGERBEETLE, window=30, max_pvalue=pvalue, min_magnitude=magnitude, otava_compat=True
    )
    assert [c.index for c in found] == expected


# (added, dropped) where re-testing the left neighbour too decides otherwise than Otava's
# stale test; every other published case gives the same answer both ways
FIXED_MERGE_DIFFERS = {
    (0.1, 0.05): ([], [363]),
    (0.2, 0.0): ([234], []),
    (0.1, 0.0): ([220], [6, 265, 288, 305]),
    (0.01, 0.0): ([], [26]),
    (0.001, 0.0): ([], [260]),
}


@pytest.mark.parametrize(("pvalue", "magnitude", "expected"), TIGERBEETLE_EXPECTED)
def test_tigerbeetle_with_both_neighbours_retested(pvalue, magnitude, expected):
    found = [c.index for c in change_points(TIGERBEETLE, 30, pvalue, magnitude)]
    added, dropped = FIXED_MERGE_DIFFERS.get((pvalue, magnitude), ([], []))
    assert found == sorted(set(expected) - set(dropped) | set(added))
    assert {15, 71} & set(expected) <= set(found)  # the big steps are found either way


def test_stale_retest_loses_a_drop_on_the_last_night():
    """A dip of two nights (24, 25) within 3 % noise, then -30 % on the last night: Otava's
    merge drops the last night, tested against the dip's stale segment, and keeps a
    change at 24 whose statistics describe two nights; loadkit finds the last night."""
    series = noisy(29, 100.0, seed=1) + [70.0]
    (compat,) = change_points(series, otava_compat=True)
    assert compat.index == 24 and compat.stats.n_after == 2  # stale: 6 nights follow
    (fixed,) = change_points(series)
    assert fixed.index == 29 and fixed.stats.mean_after == 70.0
    assert fixed.stats.n_before == 29 and fixed.stats.pvalue < 1e-6


def test_single_step_down_is_found_where_it_starts():
    # Otava tests/analysis_test.py::test_single_series
    series = [
        1.02,
        0.95,
        0.99,
        1.00,
        1.12,
        1.00,
        1.01,
        0.98,
        1.01,
        0.96,
        0.50,
        0.51,
        0.48,
        0.48,
        0.55,
        0.50,
        0.49,
        0.51,
        0.50,
        0.49,
    ]
    found = change_points(series, window=10, max_pvalue=0.0001)
    assert [c.index for c in found] == [10]
    assert found[0].stats.mean_before == pytest.approx(np.mean(series[:10]))
    assert found[0].stats.mean_after == pytest.approx(np.mean(series[10:]))


def test_otava_csv_example_with_default_settings():
    # docs/BASICS.md: `otava analyze local.sample` marks -12.9% in metric2 before aaa6 and
    # nothing in metric1 (Otava's defaults: window 50, p 0.001, magnitude 0)
    metric1 = [154023, 138455, 143112, 149190, 132098, 151344, 155145, 148889, 149466, 148209]
    metric2 = [10.43, 10.23, 10.29, 10.91, 10.34, 10.69, 9.23, 9.11, 9.13, 9.03]
    assert change_points(metric1) == []
    (cp,) = change_points(metric2)
    assert cp.index == 6
    assert f"{100 * cp.stats.forward_change:.1f}%" == "-12.9%"


SEQUENCE = np.array(
    [0.3, 2.4, 1.5, -0.9, -0.5, 99.7, 98.3, 99.1, 149.0, 149.7, 149.5, 149.1, 148.8, 150.0]
)


def test_hierarchical_e_divisive_with_t_test():
    # Otava tests/change_point_divisive_test.py::test_ttest
    assert [c.index for c in e_divisive(SEQUENCE, max_pvalue=0.01)] == [5, 8]


def test_t_test_significance():
    # Otava tests/analysis_test.py::test_significance_tester
    same = np.array([1.00, 1.02, 1.05, 0.95, 0.98, 1.00, 1.02, 1.05, 0.95, 0.98])
    assert 0.99 < ttest(same[:5], same[5:]).pvalue <= 1.0
    shifted = np.array([1.00, 1.02, 1.05, 0.95, 0.98, 0.80, 0.82, 0.85, 0.79, 0.77])
    assert 0.0 < ttest(shifted[:5], shifted[5:]).pvalue < 0.001


def _q_by_tau(z: list[float]) -> dict[int, float]:
    """Matteson & James's Q-hat by its definition, maximised over kappa for each tau."""
    out = {}
    for tau in range(1, len(z)):
        best = -np.inf
        for kappa in range(tau + 1, len(z) + 1):
            x, y = z[:tau], z[tau:kappa]
            n, m = len(x), len(y)
            between = sum(abs(a - b) for a in x for b in y)
            wx = sum(abs(x[i] - x[k]) for i in range(n) for k in range(i + 1, n))
            wy = sum(abs(y[j] - y[k]) for j in range(m) for k in range(j + 1, m))
            q = 2 / (m + n) * between
            q -= 2 * m / ((m + n) * (n - 1)) * wx if n > 1 else 0
            q -= 2 * n / ((m + n) * (m - 1)) * wy if m > 1 else 0
            best = max(best, q)
        out[tau] = best
    return out


def test_qhat_on_otava_sequence():
    tau, q = qhat_candidate(SEQUENCE)
    slow = _q_by_tau(list(SEQUENCE))
    assert q == pytest.approx(max(slow.values()))
    assert tau == max(slow, key=lambda t: slow[t]) == 5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-50, 50), min_size=3, max_size=12))
def test_qhat_matches_its_definition(values):
    z = [float(v) for v in values]
    tau, q = qhat_candidate(np.array(z))
    slow = _q_by_tau(z)
    best = max(slow.values())
    if best > 1e-9:
        assert q == pytest.approx(best, abs=1e-9)
        assert slow[tau] == pytest.approx(best, abs=1e-9)  # the split it names is a maximum
    else:
        assert q == pytest.approx(0.0, abs=1e-9)  # Otava's grid: nothing positive reads as 0


def test_flat_and_short_series_have_no_change_point():
    assert change_points([5.0] * 30) == []
    assert change_points([1.0, 2.0]) == []
    assert change_points([]) == []


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        change_points([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="max_pvalue"):
        change_points([1.0, 2.0, 3.0], max_pvalue=0)
    with pytest.raises(ValueError, match="window"):
        change_points([1.0, 2.0, 3.0], window=1)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=20),
    st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=20),
)
def test_t_test_is_scipys(left, right):
    from scipy.stats import ttest_ind_from_stats

    a, b = np.array(left), np.array(right)
    ours = ttest(a, b)
    if len(a) + len(b) <= 2:
        assert ours.pvalue == 1.0
        return
    _, p = ttest_ind_from_stats(
        ours.mean_before, ours.std_before, len(a), ours.mean_after, ours.std_after, len(b)
    )
    if np.isnan(p):
        assert ours.pvalue == 1.0
    else:
        assert ours.pvalue == pytest.approx(float(p), rel=1e-9, abs=1e-300)


@settings(max_examples=300, deadline=None)
@given(st.floats(-60, 60), st.integers(1, 5000))
def test_student_t_tail_is_scipys(t, df):
    from scipy.special import stdtr

    from loadkit.history.changepoints import student_t_two_sided

    expected = float(2 * stdtr(df, -abs(t)))
    got = student_t_two_sided(t, df)
    if expected > 0.5:  # p near 1: absolute accuracy is what matters (and what both have)
        assert got == pytest.approx(expected, abs=1e-8)
    else:  # the tail a significance level is compared with: relative accuracy
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-300)
