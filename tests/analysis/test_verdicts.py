"""Limit verdicts on synthetic limiters of every kind, hand-made edge cases, and the
verdict counts against brute-force definitions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from loadkit.analysis.columns import columns_from_records
from loadkit.analysis.outcome import Verdict
from loadkit.analysis.promises import remaining_bounds, remaining_header_check, retry_after_check
from loadkit.analysis.verdicts import (
    Policy,
    VerdictSettings,
    concurrency_verdict,
    justified_by_requests,
    key_view,
    requests_verdict,
)
from tests.analysis import reference as ref
from tests.analysis.builders import rec
from tests.analysis.synthetic import Limiter, Timing, even_sends, key_run_records, simulate_key

SET = VerdictSettings()


def judge(records, policy):
    cols = columns_from_records(records)
    kv = key_view(cols, 0)
    req = requests_verdict(kv, policy, SET, cols.ids)
    conc = concurrency_verdict(kv, policy, SET, cols.ids)
    return kv, cols, req, conc


def sim(limiter, sends, timing=None, promise=None):
    kr = simulate_key("k1", "free", limiter, sends, timing or Timing())
    policy = promise or Policy(limiter.requests, limiter.window_s, limiter.concurrency or 10**6)
    return judge(key_run_records(kr), policy)


def test_sliding_log_holds():
    lim = Limiter("sliding_log", requests=20, window_s=10.0, concurrency=4)
    # 3.3 req/s against 2 req/s allowed; the period does not line up with the window edge
    kv, cols, req, conc = sim(lim, even_sends(0.3, 60.0))
    assert req.enforced == "held"
    assert req.honoured == "held"
    assert req.observed_max == 20
    assert req.offered.max_in_window > 20
    ra = retry_after_check(kv, 5, cols.ids)
    assert ra.verdict == "held"
    rh = remaining_header_check(kv, Policy(20, 10.0, 4), 5, cols.ids)
    assert rh.verdict == "agrees" and rh.checked > 0


def test_fixed_window_boundary_burst_is_violated():
    lim = Limiter("fixed_window", requests=20, window_s=10.0)
    sends = np.linspace(9.0, 11.0, 40)  # 20 just before the window edge, 20 just after
    _, _, req, _ = sim(lim, sends)
    assert req.enforced == "violated"
    assert req.observed_max == 40
    ev = req.evidence.enforced
    assert len(ev.request_ids) == 21
    start, end = ev.certain_span_s
    assert end - start < 10.0


def test_token_bucket_burst_beyond_limit_is_violated():
    lim = Limiter("token_bucket", requests=20, window_s=10.0, burst=30)
    _, _, req, _ = sim(lim, np.linspace(0.0, 2.0, 40))
    assert req.enforced == "violated"
    # the 30-token burst plus 2 tokens/s of refill over the ~1.7 s it takes to drain it
    assert req.observed_max == 33


def test_concurrency_cap_off_by_one_is_violated():
    lim = Limiter("none", requests=1000, window_s=10.0, concurrency=3, concurrency_slack=1)
    timing = Timing(ttft_s=0.5, itl_s=0.05, tokens=20)
    _, _, _, conc = sim(lim, even_sends(0.1, 10.0), timing)
    assert conc.enforced == "violated"
    assert conc.observed_max == 4
    assert len(conc.evidence.enforced.request_ids) == 4
    assert conc.honoured == "held"


def test_exact_concurrency_cap_holds():
    lim = Limiter("none", requests=1000, window_s=10.0, concurrency=3)
    timing = Timing(ttft_s=0.5, itl_s=0.05, tokens=20)
    _, _, _, conc = sim(lim, even_sends(0.1, 10.0), timing)
    # 4 requests were open at once (the 4th refused), but at most 3 admitted ones could have
    # been in flight together, even allowing for the timing uncertainty: held, not possible.
    assert (conc.observed_max, conc.observed_max_possible, conc.offered.max_concurrent) == (3, 3, 4)
    assert conc.enforced == Verdict.HELD
    assert conc.honoured == Verdict.HELD


def test_refusing_at_80_percent_is_not_honoured():
    lim = Limiter("sliding_log", requests=20, window_s=10.0, admit_fraction=0.8)
    _, _, req, _ = sim(lim, even_sends(0.3, 60.0))
    # Offered 34 in a window against 20 promised, admitted at most 16: never more than
    # promised (enforced held; the load did exceed the limit, so not inconclusive) ...
    assert (req.observed_max_possible, req.offered.max_in_window) == (16, 34)
    assert req.enforced == Verdict.HELD
    # ... but it refused requests the promise allowed.
    assert req.honoured == Verdict.VIOLATED
    hon = req.evidence.honoured
    assert hon.unjustified_429s > 0
    assert hon.under_admission
    assert all(x.max_admitted_in_window < 20 for x in hon.unjustified_examples)


def test_under_loaded_is_inconclusive():
    lim = Limiter("sliding_log", requests=20, window_s=10.0, concurrency=5)
    _, _, req, conc = sim(lim, even_sends(1.0, 60.0))
    assert req.enforced == "inconclusive"
    assert req.honoured == "inconclusive"
    assert conc.enforced == "inconclusive"
    assert conc.honoured == "inconclusive"
    assert req.offered.max_in_window == 10


def test_held_within_the_timing_tolerance_possible_beyond_it_violated_when_proven():
    policy = Policy(2, 10.0, 100)
    # three admissions: the third may fall in the first one's window, but need not; the
    # shortfall (0.15 s) is within the two widest intervals (0.1 s + 0.1 s)
    maybe = [rec(0.0, 0.1), rec(5.0, 5.1), rec(9.95, 10.05)]
    _, _, req, _ = judge(maybe, policy)
    assert req.enforced == "held"
    assert (req.observed_max, req.observed_max_possible) == (2, 3)
    tol = req.tolerance
    assert tol is not None
    assert tol.timing_uncertainty_s == 0.2
    assert tol.margin_s == -0.15  # 3 could fall in a span of 9.85 s at the shortest
    # the same shape on a 2 s window: 0.2 s of uncertainty is more than 5 % of it
    short = Policy(2, 2.0, 100)
    _, _, req, _ = judge([rec(0.0, 0.1), rec(1.0, 1.1), rec(1.95, 2.05)], short)
    assert req.enforced == "possible"
    assert req.tolerance is not None and req.tolerance.margin_s == -0.15
    # move the third one 0.15 s earlier: now all three certainly fit in < 10 s
    sure = [rec(0.0, 0.1), rec(5.0, 5.1), rec(9.8, 9.9)]
    _, _, req, _ = judge(sure, policy)
    assert req.enforced == "violated"
    assert req.evidence.enforced.certain_span_s == (0.0, 9.9)


def test_transport_failures_count_as_possible_only():
    policy = Policy(2, 10.0, 100)
    recs = [rec(0.0, 0.1), rec(1.0, 1.1), rec(2.0, None, 2.5, status=0, transport_error="reset")]
    _, _, req, _ = judge(recs, policy)
    assert req.observed_max == 2
    assert req.observed_max_possible == 3
    assert req.enforced == "possible"


def test_unjustified_429_and_uncoded_429():
    policy = Policy(3, 10.0, 2)
    recs = [rec(0.0, 0.1), rec(1.0, 1.1, status=429, code="rate_limit_exceeded")]
    _, _, req, conc = judge(recs, policy)
    assert req.honoured == "violated"
    assert req.evidence.honoured.unjustified_429s == 1
    # a 429 without a code while 2 requests were in flight: the concurrency limit justifies it
    recs = [rec(0.0, 0.1, 5.0), rec(0.5, 0.6, 5.0), rec(1.0, 1.1, 1.2, status=429)]
    _, _, req, conc = judge(recs, policy)
    # the refusal is the concurrency limiter's, so the requests limiter only saw 2 < 3 requests
    assert req.honoured == Verdict.INCONCLUSIVE
    assert conc.honoured == Verdict.HELD
    # ... but not when nothing was in flight and the window was empty
    recs = [rec(0.0, 0.1, 0.3), rec(1.0, 1.1, 1.2, status=429)]
    _, _, req, conc = judge(recs, policy)
    assert req.honoured == "violated" and conc.honoured == "violated"


def test_concurrency_refusal_with_free_slots_is_violated():
    policy = Policy(100, 10.0, 3)
    recs = [rec(0.0, 0.1, 5.0), rec(1.0, 1.1, 1.2, status=429, code="concurrency_limit_exceeded")]
    _, _, _, conc = judge(recs, policy)
    assert conc.honoured == "violated"
    assert conc.evidence.honoured.unjustified_examples[0].max_in_flight == 1


def test_dishonest_retry_after_is_violated():
    sends = np.array([0.0, 1.0, 2.0, 3.5])  # the 4th waits exactly the advised 1 s
    for mode, expected in (("short", "violated"), ("honest", "inconclusive")):
        lim = Limiter("sliding_log", requests=2, window_s=10.0, retry_after=mode)
        kv, cols, _, _ = sim(lim, sends)
        assert retry_after_check(kv, 5, cols.ids).verdict == expected
    lim = Limiter("sliding_log", requests=2, window_s=10.0, retry_after="honest")
    kv, cols, _, _ = sim(lim, np.array([0.0, 1.0, 2.0, 10.5]))
    ra = retry_after_check(kv, 5, cols.ids)
    assert ra.verdict == "held" and ra.followups_admitted == 1


def test_retry_after_follow_up_refused_but_slot_taken_is_not_a_breach():
    recs = [
        rec(0.0, 0.01),
        rec(0.5, 0.51, status=429, code="rate_limit_exceeded", retry_after_s=1.0),
        rec(1.6, 1.61),
        rec(1.7, 1.71, status=429, code="rate_limit_exceeded"),
    ]
    cols = columns_from_records(recs)
    ra = retry_after_check(key_view(cols, 0), 5, cols.ids)
    assert ra.broken == 0 and ra.checked == 1


def test_remaining_header_disagreement():
    lim = Limiter("sliding_log", requests=20, window_s=10.0, remaining="off")
    kv, cols, _, _ = sim(lim, even_sends(0.3, 30.0))
    rh = remaining_header_check(kv, Policy(20, 10.0, 5), 5, cols.ids)
    assert rh.verdict == "disagrees"
    assert rh.disagreements > 0 and len(rh.examples) == 5


def test_advertised_limit_mismatch_is_reported():
    recs = [rec(0.0, rl_limit_requests=100, rl_remaining_requests=99)]
    cols = columns_from_records(recs)
    rh = remaining_header_check(key_view(cols, 0), Policy(60, 60.0, 3), 5, cols.ids)
    assert rh.limit_mismatches == 1 and rh.advertised_limits == {"100": 1}


# -- brute-force cross-checks of the verdict counts ------------------------------------

grid = st.integers(min_value=0, max_value=40).map(lambda k: k * 0.25)
lengths = st.integers(min_value=0, max_value=12).map(lambda k: k * 0.25)
statuses = st.sampled_from([200, 200, 200, 400, 0, 429, 401])


@st.composite
def key_records(draw):
    n = draw(st.integers(min_value=1, max_value=18))
    out = []
    for _ in range(n):
        s = draw(grid)
        st_ = draw(statuses)
        h = s + draw(lengths)
        e = h + draw(lengths)
        code = "rate_limit_exceeded" if st_ == 429 else None
        if st_ == 0:
            out.append(rec(s, None, e, status=0, transport_error="timeout"))
        else:
            out.append(
                rec(
                    s,
                    h,
                    e,
                    status=st_,
                    code=code,
                    rl_limit_requests=3,
                    rl_remaining_requests=draw(st.integers(0, 3)),
                )
            )
    return out


@given(key_records(), st.sampled_from([1.0, 2.5, 5.0]), st.integers(1, 4))
@settings(max_examples=120, deadline=None)
def test_verdict_counts_match_brute_force(records, w, n_lim):
    policy = Policy(n_lim, w, 2)
    kv, cols, req, conc = judge(records, policy)
    adm, maybe = kv.admitted, kv.maybe
    sa, ha, sp, hp = kv.s[adm], kv.hi[adm], kv.s[maybe], kv.hi[maybe]
    assert req.observed_max == ref.certain_max(sa, ha, w)
    assert req.observed_max_possible == ref.possible_max(sp, hp, w)
    keep = (kv.e[adm] - SET.concurrency_margin_s) > ha
    cert = ref.overlap_max(ha[keep], (kv.e[adm] - SET.concurrency_margin_s)[keep], closed=False)
    assert conc.observed_max == cert
    refused = np.flatnonzero(kv.rate429)
    fast = justified_by_requests(kv, refused, policy)
    brute = [
        sum(1 for j in range(sp.size) if sp[j] <= kv.hi[r] and hp[j] >= kv.s[r] - w)
        for r in refused
    ]
    assert fast.tolist() == brute
    rows = np.flatnonzero(adm)
    if rows.size:
        lo, up = remaining_bounds(kv, policy, rows)
        blo, bup = ref.remaining_bounds(sa, ha, sp, hp, list(range(rows.size)), w)
        assert lo.tolist() == blo.tolist()
        assert up.tolist() == bup.tolist()


def test_refused_connections_never_reached_the_server():
    policy = Policy(2, 10.0, 100)
    recs = [rec(0.0, 0.1), rec(1.0, 1.1)]
    recs += [
        rec(2.0 + i / 10, None, 2.0 + i / 10, status=0, transport_error="refused") for i in range(5)
    ]
    _, _, req, _ = judge(recs, policy)
    assert req.observed_max_possible == 2  # a refused connection cannot be admitted
    # ... nor did it offer the limiter anything: only 2 requests reached it, so the limit
    # of 2 was never tested
    assert req.offered.max_in_window == 2
    assert req.enforced == "inconclusive"


def test_cancelled_requests_are_not_service_errors():
    from loadkit.analysis.throughput import errors_summary

    recs = [
        rec(0.0),
        rec(0.1),
        rec(0.2, None, 0.3, status=0, transport_error="cancelled"),
        rec(0.3, 0.31, 0.4, status=500, code="internal_error"),
    ]
    err = errors_summary(columns_from_records(recs), 0.0)
    assert err.errors == 1 and err.cancelled == 1
    assert err.error_rate == 0.25
