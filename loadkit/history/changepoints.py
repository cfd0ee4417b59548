"""Change points in a series of nightly figures: e-divisive means with the Hunter/Otava
refinements (a Student t-test instead of the permutation test, overlapping windows, weak
change points merged back at the strict threshold).

Method: Matteson & James, "A Nonparametric Approach for Multiple Change Point Analysis of
Multivariate Data" (2014); Fleming et al., "Hunter: Using Change Point Detection to Hunt
for Performance Regressions" (ICPE 2023); Apache Otava's ``compute_change_points``, whose
published expectations (its test suite, its CSV example) ``tests/history/test_changepoints.py``
reproduces. No maintained package fits loadkit's dependencies (``apache-otava`` pins
``numpy==2.2.*`` and brings BigQuery, Slack and Graphite clients; MongoDB's
``signal-processing-algorithms`` needs ``numpy<2`` and gevent), so this is a fresh
implementation of the published method. Pure functions: arrays in, frozen dataclasses out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

DEFAULT_WINDOW = 50
DEFAULT_MAX_PVALUE = 0.001
DEFAULT_MIN_MAGNITUDE = 0.0


@dataclass(frozen=True)
class Segments:
    """The two sides of a change point and the t-test between them."""

    mean_before: float
    mean_after: float
    std_before: float
    std_after: float
    n_before: int
    n_after: int
    pvalue: float

    @property
    def forward_change(self) -> float:
        """Relative change from before to after (0 when the before-mean is 0, as Otava)."""
        return 0.0 if self.mean_before == 0 else self.mean_after / self.mean_before - 1.0

    @property
    def backward_change(self) -> float:
        return 0.0 if self.mean_after == 0 else self.mean_before / self.mean_after - 1.0

    @property
    def magnitude(self) -> float:
        """The larger relative change read either way (Otava's ``change_magnitude``)."""
        return max(abs(self.forward_change), abs(self.backward_change))


@dataclass(frozen=True)
class ChangePoint:
    """``index`` is the first point of the new regime (never 0)."""

    index: int
    qhat: float
    stats: Segments


def qhat_candidate(z: NDArray[np.float64]) -> tuple[int, float]:
    """The best split of ``z``: the index tau maximising the e-divisive statistic
    Q(z[:tau], z[tau:kappa]) over every 0 < tau < kappa <= len(z), and that maximum.

    Q(X, Y) = 2/(m+n) sum|x-y| - 2m/((m+n)(n-1)) sum_{i<k}|x_i-x_k|
              - 2n/((m+n)(m-1)) sum_{j<k}|y_j-y_k|           (n = |X|, m = |Y|, alpha = 1)

    Ties and an all-negative Q resolve as Otava's grid does: pairs are scanned tau-major on
    a grid where kappa <= tau counts as 0."""
    size = len(z)
    if size < 2:
        raise ValueError("qhat_candidate needs at least 2 points")
    dist = np.abs(z[:, None] - z[None, :])
    # prefix[a, b] = sum of dist[:a, :b]: block sums in O(1) each
    prefix = np.zeros((size + 1, size + 1))
    prefix[1:, 1:] = dist.cumsum(axis=0).cumsum(axis=1)
    tau = np.arange(1, size)[:, None]  # rows: tau = 1 .. size-1
    kappa = np.arange(2, size + 1)[None, :]  # columns: kappa = 2 .. size
    valid = kappa > tau
    kap = np.where(valid, kappa, tau + 1)  # any valid stand-in; masked below
    n = tau.astype(float)
    m = (kap - tau).astype(float)
    p0 = prefix[0, tau]  # zeros, shaped for broadcasting
    between = prefix[tau, kap] - prefix[tau, tau] - (prefix[0, kap] - p0)
    within_x = prefix[tau, tau] / 2.0
    within_y = (prefix[kap, kap] - 2 * prefix[tau, kap] + prefix[tau, tau]) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        term_x = np.where(n > 1, 2 * m / ((m + n) * (n - 1)) * within_x, 0.0)
        term_y = np.where(m > 1, 2 * n / ((m + n) * (m - 1)) * within_y, 0.0)
    q = np.where(valid, 2 / (m + n) * between - term_x - term_y, 0.0)
    flat = int(np.argmax(q))
    row, col = divmod(flat, q.shape[1])
    return row + 1, float(q[row, col])


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float, y: float | None = None) -> float:
    """The regularized incomplete beta function I_x(a, b); ``y`` = 1 - x when the caller
    knows it more exactly than 1 - x can be computed (x close to 1)."""
    y = 1.0 - x if y is None else y
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, y) / b


def student_t_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom: I_{df/(df+t^2)}(df/2, 1/2).
    (scipy's ``stdtr`` gives the same to 1e-12, ``test_changepoints.py`` checks; scipy
    costs a second of import time on every ``history`` command, this costs nothing.)"""
    if math.isinf(t):
        return 0.0
    t2 = t * t
    return betainc(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))


def ttest(left: NDArray[np.float64], right: NDArray[np.float64]) -> Segments:
    """Two-sided Student t-test with pooled variance (scipy's ``ttest_ind_from_stats``),
    fed with the population standard deviations as Otava does: its published results
    depend on it. A degenerate test (both sides constant and equal) has p = 1, not NaN."""
    if len(left) == 0 or len(right) == 0:
        raise ValueError("ttest needs two non-empty segments")
    n1, n2 = len(left), len(right)
    mean_l, mean_r = float(np.mean(left)), float(np.mean(right))
    std_l = float(np.std(left)) if n1 >= 2 else 0.0
    std_r = float(np.std(right)) if n2 >= 2 else 0.0
    pvalue = 1.0
    if n1 + n2 > 2:
        df = n1 + n2 - 2
        pooled = ((n1 - 1) * std_l**2 + (n2 - 1) * std_r**2) / df
        denom = math.sqrt(pooled * (1.0 / n1 + 1.0 / n2))
        diff = mean_l - mean_r
        if denom > 0:
            pvalue = student_t_two_sided(diff / denom, df)
        elif diff != 0:
            pvalue = 0.0  # two constant, different segments
    return Segments(mean_l, mean_r, std_l, std_r, n1, n2, pvalue)


def _bounds(indexes: Sequence[int], size: int) -> list[tuple[int, int]]:
    """The segments [start, stop) between sorted change point indexes."""
    cuts = [0, *indexes, size]
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if a != b]


def _stats_at(z: NDArray[np.float64], indexes: list[int], pos: int) -> Segments:
    """The t-test of change point ``indexes[pos]`` between its neighbouring change points."""
    lo = indexes[pos - 1] if pos > 0 else 0
    hi = indexes[pos + 1] if pos + 1 < len(indexes) else len(z)
    return ttest(z[lo : indexes[pos]], z[indexes[pos] : hi])


def e_divisive(z: NDArray[np.float64], max_pvalue: float) -> list[ChangePoint]:
    """Hierarchical e-divisive on one window: split the segment with the largest Q-hat
    while the split passes the t-test at ``max_pvalue``."""
    found: list[ChangePoint] = []
    known: dict[tuple[int, int], tuple[int, float]] = {}  # segment -> its best split
    while True:
        best: tuple[float, int, int, int] | None = None  # (qhat, index, seg start, seg stop)
        for a, b in _bounds([c.index for c in found], len(z)):
            if b - a < 2:
                continue
            if (a, b) not in known:
                known[(a, b)] = qhat_candidate(z[a:b])
            tau, q = known[(a, b)]
            if best is None or q > best[0]:
                best = (q, a + tau, a, b)
        if best is None:
            return found
        q, index, a, b = best
        stats = ttest(z[a:index], z[index:b])
        if not stats.pvalue <= max_pvalue:
            return found
        found.append(ChangePoint(index, q, stats))
        found.sort(key=lambda c: c.index)


def split(z: NDArray[np.float64], window: int, max_pvalue: float) -> list[ChangePoint]:
    """Weak change points: e-divisive in overlapping windows (step window/2, restarting
    at the last change point found), united, then re-tested between their neighbours."""
    if window < 2:
        raise ValueError(f"window must be at least 2, got {window}")
    step = window // 2
    indexes: dict[int, float] = {}
    start = 0
    while start < len(z):
        end = min(start + window, len(z))
        new = e_divisive(z[start:end], max_pvalue)
        for c in new:
            indexes.setdefault(start + c.index, c.qhat)
        start = max(start + new[-1].index if new else 0, start + step)
    order = sorted(indexes)
    return [ChangePoint(i, indexes[i], _stats_at(z, order, k)) for k, i in enumerate(order)]


def merge(
    z: NDArray[np.float64],
    points: list[ChangePoint],
    max_pvalue: float,
    min_magnitude: float,
    otava_compat: bool = False,
) -> list[ChangePoint]:
    """Drop weak change points one at a time, weakest first (the highest p-value above
    ``max_pvalue``; once all pass, the smallest change if it is not above
    ``min_magnitude``), re-testing the neighbours each drop changes.

    Dropping point k joins the segments either side of it, which changes the tests of its
    left and right neighbours. Otava 0.8 re-tests the point after k and the one after
    that, so the left neighbour keeps a test of a segment that no longer exists (its
    maintainers suspect as much: apache/otava#96); that stale test can keep a spurious
    point and drop a real one (``test_changepoints.py`` shows a 30 % drop on the last night
    lost that way). loadkit re-tests both neighbours; ``otava_compat`` keeps Otava's order,
    to reproduce its published results."""
    points = list(points)
    while points:
        weakest = max(range(len(points)), key=lambda k: points[k].stats.pvalue)
        if points[weakest].stats.pvalue < max_pvalue:
            weakest = min(range(len(points)), key=lambda k: points[k].stats.magnitude)
            if points[weakest].stats.magnitude > min_magnitude:
                return points
        del points[weakest]
        indexes = [c.index for c in points]
        neighbours = (weakest, weakest + 1) if otava_compat else (weakest - 1, weakest)
        for k in neighbours:
            if 0 <= k < len(points):
                points[k] = ChangePoint(points[k].index, points[k].qhat, _stats_at(z, indexes, k))
    return points


def change_points(
    values: Sequence[float] | NDArray[np.float64],
    window: int = DEFAULT_WINDOW,
    max_pvalue: float = DEFAULT_MAX_PVALUE,
    min_magnitude: float = DEFAULT_MIN_MAGNITUDE,
    otava_compat: bool = False,
) -> list[ChangePoint]:
    """Change points of a series (Otava's ``compute_change_points``): weak change points
    at a relaxed p-value (x10 below 0.05, x2 below 0.5), merged at ``max_pvalue`` and
    ``min_magnitude`` (relative change). Values must be finite. ``otava_compat``: merge
    exactly as Otava 0.8 does (see ``merge``)."""
    z = np.asarray(values, dtype=np.float64)
    if z.ndim != 1:
        raise ValueError("change_points takes a 1-d series")
    if not np.all(np.isfinite(z)):
        raise ValueError("change_points: the series has NaN or infinite values")
    if not 0 < max_pvalue <= 1:
        raise ValueError(f"max_pvalue must be in (0, 1], got {max_pvalue}")
    if min_magnitude < 0:
        raise ValueError(f"min_magnitude must be >= 0, got {min_magnitude}")
    if max_pvalue < 0.05:
        first_pass = max_pvalue * 10
    elif max_pvalue < 0.5:
        first_pass = max_pvalue * 2
    else:
        first_pass = max_pvalue
    return merge(z, split(z, window, first_pass), max_pvalue, min_magnitude, otava_compat)
