"""Limit verdicts on synthetic limiters of every kind, hand-made edge cases, and the
verdict counts against brute-force definitions."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from loadkit.analysis.columns import columns_from_records
from loadkit.analysis.explain import explain_concurrency, explain_requests
from loadkit.analysis.limits import ConcurrencyLimit, RequestsLimit
from loadkit.analysis.outcome import RunVerdict, Verdict
from loadkit.analysis.promises import remaining_bounds, remaining_header_check, retry_after_check
from loadkit.analysis.report import _limits_table
from loadkit.analysis.summary import overall_verdict, read_summary
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
    # the same shape on a 2 s window: a shortfall of 0.15 s is more than 5 % of it
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


def sliding_log_records(rng, n_lim, w, sends, up_max, down_max, stream=True):
    """A correct sliding log (admit iff fewer than n_lim admissions in (a - w, a]) seen by a
    client whose requests take up to ``up_max`` to reach it and whose answers take up to
    ``down_max`` to come back: the admission instants are known to the test, not to the
    analysis."""
    sends = np.sort(sends)
    admit_at = sends + rng.uniform(0.0, up_max, sends.size)
    log: list[float] = []
    recs = []
    for i in np.argsort(admit_at, kind="stable"):
        a = float(admit_at[i])
        ok = sum(1 for x in log if x > a - w) < n_lim
        if ok:
            log.append(a)
        h = a + float(rng.uniform(0.0, down_max))
        recs.append(
            rec(
                float(sends[i]),
                h,
                h + 0.05,
                stream=stream,
                status=200 if ok else 429,
                code=None if ok else "rate_limit_exceeded",
            )
        )
    return recs, np.array(sorted(log))


def test_a_correct_limiter_under_sustained_overload_reads_held_at_its_tolerance():
    rng = np.random.default_rng(13)
    n_lim, w = 20, 10.0
    # 3x the allowed rate for 6 windows: the limiter admits each request the instant the
    # oldest one leaves the window, so the client's timing always allows one too many
    sends = rng.uniform(0.0, 60.0, 360)
    recs, truth = sliding_log_records(rng, n_lim, w, sends, up_max=0.03, down_max=0.05)
    assert max(np.searchsorted(truth, truth + w, side="left") - np.arange(truth.size)) == n_lim
    _, _, req, _ = judge(recs, Policy(n_lim, w, 100))
    assert req.observed_max_possible > n_lim  # the old rule read "possible" here
    assert req.enforced == "held" and req.honoured == "held"
    tol = req.tolerance
    assert tol is not None and tol.margin_s is not None and tol.timing_uncertainty_s
    assert 0 < -tol.margin_s <= tol.timing_uncertainty_s <= 2 * (0.03 + 0.05)
    explained = " ".join(explain_requests(req, None, None))
    assert f"never more than {n_lim} in any {w + tol.margin_s:.3f}"[:-1] in explained
    assert "timing uncertainty" in explained


def test_a_window_shorter_than_promised_is_not_held():
    # a limiter that lets the 21st request in 0.5 s early, seen through tight timing: the
    # excess is far beyond the timing uncertainty (and proven)
    rng = np.random.default_rng(14)
    recs, _ = sliding_log_records(
        rng, 20, 9.5, rng.uniform(0.0, 40.0, 240), up_max=0.002, down_max=0.002
    )
    _, _, req, _ = judge(recs, Policy(20, 10.0, 100))
    assert req.enforced == "violated"
    assert req.tolerance is not None and req.tolerance.margin_s < -0.4


def test_concurrency_overlap_within_the_tolerance_is_held_beyond_it_possible():
    policy = Policy(100, 60.0, 2)
    a, b = rec(0.0, 0.01, 1.0), rec(0.5, 0.51, 2.0)
    # a third stream sent 5 ms before the first one's end reached the client, admitted after
    near = [a, b, rec(0.995, 1.02, 2.5)]
    _, _, _, conc = judge(near, policy)
    assert (conc.observed_max, conc.observed_max_possible) == (2, 3)
    assert conc.enforced == "held"
    tol = conc.tolerance
    assert tol is not None and tol.timing_uncertainty_s == 0.05  # 2 x its 25 ms headers
    assert tol.margin_s == -0.005
    text = " ".join(explain_concurrency(conc))
    assert "3 could only look open together for 5 ms" in text
    # a non-streamed third request open 200 ms before that end: its own interval is its
    # whole response, so it is not a measure of the decision; 200 ms is beyond 2 x 10 ms
    far = [a, b, rec(0.8, 2.5, 2.5, stream=False)]
    _, _, _, conc = judge(far, policy)
    assert conc.enforced == "possible"
    assert "more than the timing uncertainty (20 ms) explains" in " ".join(
        explain_concurrency(conc)
    )


def test_non_streamed_concurrency_says_it_cannot_be_decided():
    policy = Policy(100, 60.0, 2)
    # a cap one too high on non-streamed traffic: 3 open together for 0.4 s, never proven
    recs = [rec(t, t + 1.0, t + 1.0, stream=False) for t in (0.0, 0.3, 0.6)]
    _, _, _, conc = judge(recs, policy)
    assert conc.enforced == "possible"
    assert conc.tolerance is not None and conc.tolerance.limitation
    text = " ".join(explain_concurrency(conc))
    assert "cannot decide a concurrency overrun" in text
    assert "headers come with its last byte" in text


def test_a_key_driven_exactly_at_its_cap_tests_honouring():
    policy = Policy(100, 60.0, 3)
    # 3 closed-loop users, each sending its next stream the moment the last one ended
    recs = [
        rec(start + 1.01 * i, start + 1.01 * i + 0.01, start + 1.01 * i + 1.0)
        for start in (0.0, 0.3, 0.6)
        for i in range(5)
    ]
    _, _, _, conc = judge(recs, policy)
    assert conc.offered.max_concurrent == 3
    assert conc.enforced == "inconclusive"  # never above the cap: enforcement not tested
    assert conc.honoured == "held"
    assert "driven at its cap (3 open at once)" in " ".join(explain_concurrency(conc))
    # a slot freed late: the next stream of one user is refused with 2 in flight
    late = [*recs, rec(5.06, 5.07, 5.08, status=429, code="concurrency_limit_exceeded")]
    _, _, _, conc = judge(late, policy)
    assert conc.honoured == "violated"


def test_limits_the_scenario_did_not_provoke_are_listed_apart():
    golden = read_summary(Path(__file__).parent / "golden" / "summary-v2.json")
    ok_slo = replace(golden.slo, met=True, checks=golden.slo.checks[:1])
    req = next(e for e in golden.limits if isinstance(e, RequestsLimit) and e.key == "free-1")
    conc = next(e for e in golden.limits if isinstance(e, ConcurrencyLimit) and e.key == "free-1")
    req = replace(
        req,
        verdict=replace(req.verdict, enforced=Verdict.HELD, honoured=Verdict.HELD),
        retry_after=replace(req.retry_after, verdict=Verdict.HELD),
    )
    conc = replace(
        conc,
        verdict=replace(conc.verdict, enforced=Verdict.INCONCLUSIVE, honoured=Verdict.INCONCLUSIVE),
    )
    assert overall_verdict([req, conc], ok_slo) == (
        RunVerdict.PASS,
        [
            "no violation and every SLO met; 2 verdicts held, 2 not tested by this scenario "
            "(the load never provoked them):",
            "free-1 concurrency enforced: inconclusive",
            "free-1 concurrency honoured: inconclusive",
        ],
    )
    page = _limits_table(replace(golden, limits=(req, conc)))
    tested, untested = page.split("Not tested by this scenario")
    assert "<td>requests</td>" in tested and "<td>concurrency</td>" not in tested
    assert "<td>concurrency</td>" in untested and "<td>requests</td>" not in untested
    # the held enforcement says what it proves, at which timing uncertainty
    assert "never more than 10 in any" in tested and "timing uncertainty 8 ms" in tested
