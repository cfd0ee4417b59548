"""Token and per-day verdicts (``analysis/tokens.py``): the weighted O(n log n) counting
against brute-force definitions (hypothesis), the verdicts on simulated servers (the exact
limiter is never judged wrong; each wrong one is caught), and the promises and weights
read from what a run keeps."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadkit.analysis import intervals, tokens
from loadkit.analysis.outcome import HeaderAgreement, Verdict
from loadkit.analysis.tokens import Requests, WindowPromise
from loadkit.server.token_limiter import Ask, Rules, TokenLimiter, WindowRule

grid = st.integers(min_value=0, max_value=40).map(lambda k: k * 0.25)
lengths = st.integers(min_value=0, max_value=30).map(lambda k: k * 0.25)
widths = st.sampled_from([0.25, 1.0, 2.5, 5.0, 7.75])


@st.composite
def weighted_intervals(draw, max_size=25):  # type: ignore[no-untyped-def]
    n = draw(st.integers(min_value=0, max_value=max_size))
    s = np.array([draw(grid) for _ in range(n)], dtype=float)
    h = s + np.array([draw(lengths) for _ in range(n)], dtype=float)
    w = np.array([draw(st.integers(0, 50)) for _ in range(n)], dtype=float)
    return s, h, w


# --- brute-force definitions -----------------------------------------------------------


def brute_contained(s, h, w, width):  # type: ignore[no-untyped-def]
    return [
        sum(w[j] for j in range(len(s)) if s[j] >= s[i] and h[j] < s[i] + width)
        for i in range(len(s))
    ]


def brute_touching_max(s, h, w, width):  # type: ignore[no-untyped-def]
    cands = set()
    for x in list(s) + list(h):
        for t in (x, x - width, np.nextafter(x - width, np.inf), np.nextafter(x, -np.inf)):
            cands.add(float(t))
    return max(
        (sum(w[j] for j in range(len(s)) if s[j] < t + width and h[j] >= t) for t in cands),
        default=0.0,
    )


def brute_covering(s, h, w, x, y):  # type: ignore[no-untyped-def]
    return [
        sum(w[j] for j in range(len(s)) if s[j] <= xi and h[j] > yi)
        for xi, yi in zip(x, y, strict=True)
    ]


# --- the counting primitives -----------------------------------------------------------


@given(weighted_intervals(), widths)
@settings(max_examples=150, deadline=None)
def test_weight_contained_matches_brute_force_and_counts_without_weights(iv, width):  # type: ignore[no-untyped-def]
    s, h, w = iv
    assert tokens.weight_contained(s, h, w, width).tolist() == brute_contained(s, h, w, width)
    ones = np.ones(s.size)
    assert tokens.weight_contained(s, h, ones, width).tolist() == (
        intervals.contained_counts(s, h, width).tolist()
    )


@given(weighted_intervals(), widths)
@settings(max_examples=150, deadline=None)
def test_weight_touching_max_matches_brute_force(iv, width):  # type: ignore[no-untyped-def]
    s, h, w = iv
    assert tokens.weight_touching_max(s, h, w, width)[0] == brute_touching_max(s, h, w, width)
    if s.size:
        assert (
            tokens.weight_touching_max(s, h, np.ones(s.size), width)[0]
            == (intervals.touching_max(s, h, width)[0])
        )


@given(weighted_intervals(), st.lists(st.tuples(grid, grid), min_size=1, max_size=10))
@settings(max_examples=150, deadline=None)
def test_weight_covering_brute_and_fenwick(iv, queries):  # type: ignore[no-untyped-def]
    s, h, w = iv
    x = np.array([q[0] for q in queries])
    y = np.array([q[1] for q in queries])
    expected = brute_covering(s, h, w, x, y)
    assert tokens.weight_covering(s, h, w, x, y).tolist() == expected
    old = tokens._BRUTE_CELLS
    tokens._BRUTE_CELLS = 0  # force the Fenwick sweep
    try:
        assert tokens.weight_covering(s, h, w, x, y).tolist() == expected
    finally:
        tokens._BRUTE_CELLS = old


@given(weighted_intervals(), st.lists(st.tuples(grid, lengths), min_size=1, max_size=10))
@settings(max_examples=150, deadline=None)
def test_weight_meeting_and_span_max_match_brute_force(iv, queries):  # type: ignore[no-untyped-def]
    s, h, w = iv
    a = np.array([q[0] for q in queries])
    b = a + np.array([q[1] for q in queries])
    got = tokens.weight_meeting(s, h, w, a, b).tolist()
    assert got == [
        sum(w[j] for j in range(len(s)) if s[j] <= bi and h[j] >= ai)
        for ai, bi in zip(a, b, strict=True)
    ]
    width = 2.5
    assert tokens.weight_span_max(s, w, width)[0] == max(
        (sum(w[j] for j in range(len(s)) if p <= s[j] < p + width) for p in s), default=0.0
    )


@given(weighted_intervals(), widths, st.data())
@settings(max_examples=150, deadline=None)
def test_remaining_bounds_match_brute_force(iv, width, data):  # type: ignore[no-untyped-def]
    s, h, w = iv
    n = s.size
    admitted = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    possible = ~admitted & np.array(
        data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool
    )
    r = Requests.of(s, h, admitted, np.zeros(n, dtype=bool), lo=w, up=w + 1, possible=possible)
    pos = np.flatnonzero(admitted)
    lower, upper = tokens.remaining_bounds(r, WindowPromise("tokens", 100, width, "total"), pos)
    adm, maybe = np.flatnonzero(admitted), np.flatnonzero(admitted | possible)
    for k, i in enumerate(pos):
        lo = w[i] + sum(w[j] for j in adm if j != i and s[j] > h[i] - width and h[j] < s[i])
        up = sum(w[j] + 1 for j in maybe if h[j] > s[i] - width and s[j] <= h[i])
        assert (lower[k], upper[k]) == (lo, up)


# --- verdicts on simulated servers -----------------------------------------------------

TOTAL = WindowPromise("tokens", 100, 10.0, "total")


def simulate(
    limiter: TokenLimiter,
    rules: Rules,
    promise: WindowPromise,
    sends: list[int],
    lags: list[tuple[int, int]],
    asks: list[tuple[int, int]],
    refuse_at: float = 1.0,
) -> tuple[Requests, list[tuple[int, int, bool]]]:
    """One key's requests through ``limiter`` (time in ticks: the client's seconds are the
    limiter's ns). Request i is sent at sends[i], decided lags[i][0] later, its headers
    arrive lags[i][1] after that. ``refuse_at`` < 1: the server also refuses once the
    window holds that share of the promise (false throttling). Returns the client's view
    and the truth: (admission instant, weight by the promise's rule, admitted)."""
    n = len(sends)
    at = [s + d for s, (d, _) in zip(sends, lags, strict=True)]
    hi = [a + h for a, (_, h) in zip(at, lags, strict=True)]
    admitted = np.zeros(n, dtype=bool)
    refused = np.zeros(n, dtype=bool)
    retry, limit, remaining, reset = (np.full(n, np.nan) for _ in range(4))
    truth = []
    rule = rules.windows[0]
    for i in sorted(range(n), key=lambda k: (at[k], k)):
        ask = Ask(asks[i][0], asks[i][1], "m")
        weight = ask.tokens(promise.counts or "total")
        refusal = limiter.check("k", rules, ask, at[i])
        used = limiter.header_state("k", rules, ask, at[i])
        assert used is not None
        if refusal is None and (used.limit - used.remaining) + weight > refuse_at * rule.limit:
            refusal = limiter.check("k", Rules((WindowRule("tokens", 0, 1, "total"),)), ask, at[i])
        if refusal is None:
            limiter.commit("k", rules, ask, at[i])
            admitted[i] = True
        else:
            refused[i] = True
            if refusal.retry_after_ns is not None and refuse_at == 1.0:
                retry[i] = refusal.retry_after_ns
        state = limiter.header_state("k", rules, ask, at[i])
        assert state is not None
        limit[i], remaining[i], reset[i] = state.limit, state.remaining, state.reset_ns
        truth.append((at[i], weight, bool(admitted[i])))
    weights = np.array([Ask(p, o, "m").tokens(promise.counts or "total") for p, o in asks], float)
    r = Requests.of(
        np.array(sends, float),
        np.array(hi, float),
        admitted,
        refused,
        lo=weights,
        up=weights,
        retry_after=retry,
        rl_limit=limit,
        rl_remaining=remaining,
        rl_reset=reset,
    )
    return r, truth


def true_max(truth: list[tuple[int, int, bool]], window: float) -> int:
    adm = [(a, w) for a, w, ok in truth if ok]
    return max((sum(w for b, w in adm if a - window < b <= a) for a, _ in adm), default=0)


def rules_for(promise: WindowPromise) -> Rules:
    return Rules((WindowRule("tokens", promise.limit, int(promise.window_s), promise.counts),))


@st.composite
def traffic(draw, max_size=30):  # type: ignore[no-untyped-def]
    n = draw(st.integers(1, max_size))
    gaps = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    sends = list(np.cumsum(gaps))
    lags = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=n, max_size=n))
    asks = draw(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 40)), min_size=n, max_size=n))
    return [int(x) for x in sends], lags, asks


@given(traffic(), st.sampled_from(["input", "output", "total"]))
@settings(max_examples=200, deadline=None)
def test_the_exact_limiter_is_never_judged_wrong(t, counts):  # type: ignore[no-untyped-def]
    sends, lags, asks = t
    promise = WindowPromise("tokens", 60, 10.0, counts)
    r, truth = simulate(TokenLimiter("exact"), rules_for(promise), promise, sends, lags, asks)
    v = tokens.window_verdict(r, promise)
    assert true_max(truth, promise.window_s) <= promise.limit
    assert v.enforced != Verdict.VIOLATED and v.honoured != Verdict.VIOLATED
    assert v.observed_max <= promise.limit
    assert tokens.remaining_check(r, promise).verdict != HeaderAgreement.DISAGREES
    assert tokens.reset_check(r, promise).verdict != Verdict.VIOLATED


@given(traffic(), st.sampled_from(["fixed_window", "output_only", "refuses_early"]))
@settings(max_examples=200, deadline=None)
def test_a_violation_found_is_a_violation_made(t, wrong):  # type: ignore[no-untyped-def]
    sends, lags, asks = t
    promise = TOTAL
    limiter = TokenLimiter("exact" if wrong == "refuses_early" else wrong)
    refuse_at = 0.7 if wrong == "refuses_early" else 1.0
    r, truth = simulate(limiter, rules_for(promise), promise, sends, lags, asks, refuse_at)
    v = tokens.window_verdict(r, promise)
    if v.enforced == Verdict.VIOLATED:  # proven from the client's view: true in fact
        assert true_max(truth, promise.window_s) > promise.limit
    if v.honoured == Verdict.VIOLATED:  # some refusal had room when it was made
        adm = [(a, w) for a, w, ok in truth if ok]
        assert any(
            not ok and sum(x for b, x in adm if a - 10 < b <= a) + w <= promise.limit
            for a, w, ok in truth
        )


def test_each_wrong_limiter_is_caught() -> None:
    # ten requests, one every 2 ticks, answered at once
    sends = [2 * k for k in range(10)]
    lags = [(0, 0)] * 10
    promise = WindowPromise("tokens", 100, 10.0, "total")
    rules = rules_for(promise)
    # a fixed window: the clock's window edge at 10 lets 3 + 3 through within 4 ticks
    r, _ = simulate(
        TokenLimiter("fixed_window"),
        rules,
        promise,
        [6, 7, 8, 10, 11, 12],
        [(0, 0)] * 6,
        [(10, 20)] * 6,
    )
    v = tokens.window_verdict(r, promise)
    assert (v.enforced, v.observed_max) == (Verdict.VIOLATED, 180.0)
    assert v.certain_span_s == (6.0, 12.0) and v.certain_request_ids == tuple("012345")
    # output counted alone: 25 + 5 tokens charged as 5
    r, _ = simulate(TokenLimiter("output_only"), rules, promise, sends, lags, [(25, 5)] * 10)
    assert tokens.window_verdict(r, promise).enforced == Verdict.VIOLATED
    # refusing at 70 of 100: every refusal of 30 with 60 in the window had room
    r, _ = simulate(TokenLimiter("exact"), rules, promise, sends, lags, [(10, 20)] * 10, 0.7)
    v = tokens.window_verdict(r, promise)
    assert (v.honoured, v.refusals, v.unjustified) == (Verdict.VIOLATED, 6, 6)
    assert v.examples[0] == tokens.RefusalExample("2", 4.0, 4.0, 60.0, 30.0)
    assert v.enforced == Verdict.HELD  # it never admitted too much


def test_a_lying_header_and_a_broken_retry_after_are_caught() -> None:
    promise = WindowPromise("tokens", 100, 10.0, "total")
    # admitted 60, then 60 refused with retry-after 2, then the same again at 12: refused
    r = Requests.of(
        np.array([0.0, 1.0, 12.0]),
        np.array([0.0, 1.0, 12.0]),
        np.array([True, False, False]),
        np.array([False, True, True]),
        lo=60.0,
        up=60.0,
        retry_after=np.array([np.nan, 9.0, np.nan]),
        rl_limit=np.array([100.0, 100, 100]),
        rl_remaining=np.array([70.0, 40, 40]),  # the first one says 30 used: it was 60
        rl_reset=np.array([10.0, 9, 9]),
    )
    check = tokens.remaining_check(r, promise)
    assert (check.verdict, check.disagreements) == (HeaderAgreement.DISAGREES, 1)
    assert check.examples[0] == tokens.RemainingExample("0", 0.0, 30.0, 60.0, 60.0)
    reset = tokens.reset_check(r, promise)
    assert (reset.verdict, reset.broken) == (Verdict.VIOLATED, 3)
    assert {(e.source, e.request_id, e.followup_id) for e in reset.examples} == {
        ("retry-after", "1", "2"),
        ("reset", "0", "2"),
        ("reset", "1", "2"),
    }
    # another request admitted between them took the room: not broken
    r2 = Requests.of(
        np.array([0.0, 1.0, 5.0, 12.0]),
        np.array([0.0, 1.0, 5.0, 12.0]),
        np.array([True, False, True, False]),
        np.array([False, True, False, True]),
        lo=60.0,
        up=60.0,
        retry_after=np.array([np.nan, 9.0, np.nan, np.nan]),
    )
    assert tokens.reset_check(r2, promise).verdict == Verdict.HELD


def test_a_refusal_whose_own_weight_is_unknown_is_not_judged() -> None:
    promise = WindowPromise("tokens", 100, 10.0, "total")
    r = Requests.of(
        np.array([0.0, 1.0]),
        np.array([0.5, 1.5]),
        np.array([True, False]),
        np.array([False, True]),
        lo=np.array([30.0, 0.0]),
        up=np.array([30.0, np.nan]),
    )
    v = tokens.window_verdict(r, promise)
    assert (v.refusals, v.unjustified, v.unjudged, v.honoured) == (1, 0, 1, Verdict.INCONCLUSIVE)
    # the same refusal asking 20: 30 + 20 fit, unjustified
    r2 = Requests.of(
        r.s, r.hi, r.admitted, r.refused, lo=np.array([30.0, 20]), up=np.array([30.0, 20])
    )
    assert tokens.window_verdict(r2, promise).honoured == Verdict.VIOLATED
    # another promise of the same kind (the model's) justified it: not a violation
    other = np.array([False, True])
    assert tokens.window_verdict(r2, promise, also_justified=other).honoured != Verdict.VIOLATED


def test_requests_per_day_too_large_for_the_run_says_so() -> None:
    day = WindowPromise("requests_per_day", 1000, 86_400.0)
    sends = np.arange(0.0, 300.0, 1.0)
    r = Requests.of(sends, sends + 0.1, np.ones(300, dtype=bool), np.zeros(300, dtype=bool))
    v = tokens.window_verdict(r, day, run_s=300.0)
    assert (v.enforced, v.honoured, v.observed_max) == (
        Verdict.INCONCLUSIVE,
        Verdict.INCONCLUSIVE,
        300.0,
    )
    assert v.reach == (
        "cannot be reached in this run: at most 300 requests sent in any 86400 s span, the "
        "promise is 1000; the run lasted 300 s, so a load that reaches it sends over 1000 "
        "requests within the run"
    )
    # a small promise is reached and held: 50 admitted, the rest refused for the day
    adm = np.arange(300) < 50
    r = Requests.of(sends, sends + 0.1, adm, ~adm)
    v = tokens.window_verdict(r, WindowPromise("requests_per_day", 50, 86_400.0), run_s=300.0)
    assert (v.enforced, v.honoured, v.reach, v.unjustified) == (
        Verdict.HELD,
        Verdict.HELD,
        None,
        0,
    )


def test_timing_uncertainty_makes_a_violation_possible_not_proven() -> None:
    promise = WindowPromise("tokens", 100, 10.0, "total")
    # 60 + 60: the first answered late, so it may have been admitted within 10 of the second
    r = Requests.of(
        np.array([0.0, 12.0]),
        np.array([5.0, 12.5]),
        np.ones(2, dtype=bool),
        np.zeros(2, dtype=bool),
        lo=60.0,
        up=60.0,
    )
    v = tokens.window_verdict(r, promise)
    assert (v.enforced, v.observed_max, v.observed_max_possible) == (Verdict.POSSIBLE, 60.0, 120.0)


def test_window_promises_from_run_json() -> None:
    tier = {
        "requests": 60,
        "window_s": 60.0,
        "concurrency": 3,
        "tokens": 1000,
        "token_window_s": 60.0,
        "token_counts": "input",
        "requests_per_day": 500,
        "day_window_s": 86400.0,
        "models": {"m": {"tokens": 50, "token_window_s": 10.0, "token_counts": "output"}},
    }
    assert tokens.window_promises("free", tier) == (
        WindowPromise("tokens", 1000, 60.0, "input"),
        WindowPromise("requests_per_day", 500, 86400.0),
        WindowPromise("tokens", 50, 10.0, "output", "m"),
    )
    assert tokens.window_promises("free", {"requests": 60, "window_s": 60, "concurrency": 3}) == ()
    with pytest.raises(ValueError, match=r"run.json tiers.free: token_counts 'both'"):
        tokens.window_promises("free", {**tier, "token_counts": "both"})
    with pytest.raises(ValueError, match=r"run.json tiers.free.models.m: limits must be positive"):
        tokens.window_promises("free", {**tier, "models": {"m": {"tokens": 0}}})


def test_weights_follow_the_reservation_rule() -> None:
    nan = np.nan
    usage_prompt = np.array([10.0, 10.0, nan, nan, 10.0])
    usage_completion = np.array([16.0, 7.0, nan, nan, 3.0])
    finish_length = np.array([True, False, False, False, False])
    sent_prompt = np.array([nan, nan, 12.0, nan, nan])
    sent_output = np.array([nan, nan, 16.0, nan, 16.0])
    lo, hi = tokens.weights(
        "total",
        usage_prompt=usage_prompt,
        usage_completion=usage_completion,
        finish_length=finish_length,
        sent_prompt=sent_prompt,
        sent_output=sent_output,
    )
    # complete: exact; stopped early: at least what came, no bound; refused with its ask
    # recorded: exact; nothing known: 0 and unbounded; cut short, ask recorded: exact
    assert lo.tolist() == [26.0, 17.0, 28.0, 0.0, 26.0]
    assert np.isnan(hi).tolist() == [False, True, False, True, False]
    assert hi[[0, 2, 4]].tolist() == [26.0, 28.0, 26.0]
    lo_in, hi_in = tokens.weights(
        "input",
        usage_prompt=usage_prompt,
        usage_completion=usage_completion,
        finish_length=finish_length,
    )
    assert lo_in.tolist() == [10.0, 10.0, 0.0, 0.0, 10.0] and np.isnan(hi_in).tolist() == [
        False,
        False,
        True,
        True,
        False,
    ]


def test_large_runs_stay_n_log_n() -> None:
    # 200,000 requests of one key: a quadratic step would not finish
    rng = random.Random(1)
    n = 200_000
    s = np.cumsum([rng.expovariate(500.0) for _ in range(n)])
    h = s + np.array([rng.uniform(0, 0.05) for _ in range(n)])
    adm = np.array([rng.random() < 0.8 for _ in range(n)])
    w = np.array([float(rng.randint(1, 100)) for _ in range(n)])
    r = Requests.of(s, h, adm, ~adm, lo=w, up=w)
    v = tokens.window_verdict(r, WindowPromise("tokens", 100_000, 60.0, "total"))
    assert v.refusals == int((~adm).sum())
