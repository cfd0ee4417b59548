"""The empirical arrival curve of a key's admissions, alpha(t) = most admissions in any span
of length t, next to the promised envelope N * ceil(t / W). A fixed window's boundary burst
(2N in a short span) or a token bucket's initial burst shows at a glance."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from loadkit.analysis.codec import JsonRecord
from loadkit.analysis.intervals import min_span_for_counts
from loadkit.analysis.verdicts import KeyView, Policy

BOUND_FRACTIONS = (1 / 8, 1 / 2, 1.0, 2.0, 3.0)


@dataclass(frozen=True)
class CurvePoint(JsonRecord):
    """k admissions (point estimate) fit in a span as short as ``span_s``."""

    k: int
    span_s: float


@dataclass(frozen=True)
class CurveBound(JsonRecord):
    """Most admissions certainly / possibly in one span of length ``t_s``, and the promise."""

    t_s: float
    certain: int
    possible: int
    promised: int


@dataclass(frozen=True)
class ArrivalCurve(JsonRecord):
    """summary.json's ``arrival.<key>``."""

    points: tuple[CurvePoint, ...]
    bounds: tuple[CurveBound, ...]
    point_max_in_window: int
    promised: int
    window_s: float


def count_points(n: int, policy: Policy, max_points: int) -> np.ndarray:
    """Which k to evaluate: log-spaced, plus the interesting counts around N and 2N."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    ks = np.unique(np.round(np.geomspace(1, n, num=max(2, max_points - 8))).astype(np.int64))
    extra = [policy.requests, policy.requests + 1, 2 * policy.requests, 2 * policy.requests + 1]
    ks = np.union1d(ks, [k for k in extra if 1 <= k <= n])
    return ks.astype(np.int64)


def arrival_curve(kv: KeyView, policy: Policy, max_points: int = 200) -> ArrivalCurve:
    """Point estimate (admission = midpoint of [send, headers]) as (k, shortest span with k
    admissions) pairs, plus certain / possible counts at a few span lengths."""
    adm = kv.admitted
    mid = np.sort((kv.s[adm] + kv.hi[adm]) / 2.0)
    ks = count_points(mid.size, policy, max_points)
    spans = min_span_for_counts(mid, ks)
    # a half-open span of length t holds k points iff their closed span is < t
    within = ks[spans < policy.window_s]
    point_max = int(within.max()) if within.size else 0
    admitted, maybe = kv.intervals("admitted"), kv.intervals("maybe")
    horizon = float(mid[-1] - mid[0]) if mid.size else 0.0
    bounds = []
    for frac in BOUND_FRACTIONS:
        t = policy.window_s * frac
        if frac > 1 and t > horizon + policy.window_s:
            break
        certain = admitted.contained_max(t)[0]
        possible = maybe.touching_max(t)[0]
        bounds.append(
            CurveBound(
                t_s=t,
                certain=certain,
                possible=possible,
                promised=int(policy.requests * math.ceil(frac)),
            )
        )
    return ArrivalCurve(
        points=tuple(CurvePoint(k=int(k), span_s=float(s)) for k, s in zip(ks, spans, strict=True)),
        bounds=tuple(bounds),
        point_max_in_window=point_max,
        promised=policy.requests,
        window_s=policy.window_s,
    )
