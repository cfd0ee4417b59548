"""Each 429 is judged against the limit its response named (the record's ``limit_kind``):
requests -> the requests limit only, concurrency -> the concurrency limit only, tokens ->
neither, none -> both. Version-1 records, which have no limit_kind, go by loadkit's codes."""

from __future__ import annotations

from loadkit.analysis.columns import columns_from_records
from loadkit.analysis.limits import RefusalCounts
from loadkit.analysis.outcome import Verdict
from loadkit.analysis.report import _evidence
from loadkit.analysis.summary import limit_verdicts
from loadkit.analysis.verdicts import (
    Policy,
    VerdictSettings,
    concurrency_verdict,
    key_view,
    requests_verdict,
)
from loadkit.runmeta import RunMeta
from tests.analysis.builders import rec

SET = VerdictSettings()
POLICY = Policy(3, 10.0, 2)


def judge(records):
    cols = columns_from_records(records)
    kv = key_view(cols, 0)
    return requests_verdict(kv, POLICY, SET, cols.ids), concurrency_verdict(
        kv, POLICY, SET, cols.ids
    )


def lone_refusal(**kw):
    """One admitted request that ended before a 429: neither limit can justify the 429."""
    return [rec(0.0, 0.1, 0.3), rec(1.0, 1.1, 1.2, status=429, **kw)]


def test_a_concurrency_refusal_never_makes_requests_not_honoured():
    # A provider's 429 whose body names no loadkit code; the engine attributed it to the
    # concurrency limit (TGI's "overloaded"). Judged against that limit alone.
    req, conc = judge(lone_refusal(error_type="overloaded"))
    assert req.honoured == Verdict.INCONCLUSIVE
    assert conc.honoured == Verdict.VIOLATED
    assert conc.evidence.honoured.unjustified_429s == 1
    assert req.evidence.honoured.refusals == RefusalCounts(
        requests=0, concurrency=1, tokens=0, unattributed=0, signals={"type=overloaded": 1}
    )


def test_a_requests_refusal_is_judged_by_the_requests_limit_only():
    req, conc = judge(
        lone_refusal(limit_kind="requests", limit_signal="header x-ratelimit-remaining-requests=0")
    )
    assert req.honoured == Verdict.VIOLATED
    assert req.evidence.honoured.unjustified_429s == 1
    assert conc.honoured == Verdict.INCONCLUSIVE
    assert conc.evidence.honoured.refusals is not None
    assert conc.evidence.honoured.refusals.signals == {"header x-ratelimit-remaining-requests=0": 1}


def test_an_unattributed_refusal_is_judged_against_both():
    req, conc = judge(lone_refusal(code="429"))
    assert (req.honoured, conc.honoured) == (Verdict.VIOLATED, Verdict.VIOLATED)
    assert req.evidence.honoured.unjustified_uncoded_429s == 1
    assert req.evidence.honoured.refusals.unattributed == 1
    assert req.evidence.honoured.refusals.signals == {"none": 1}


def test_a_tokens_refusal_is_judged_by_neither_and_counted():
    req, conc = judge(lone_refusal(code="tpm_rate_limit_exceeded"))
    assert (req.honoured, conc.honoured) == (Verdict.INCONCLUSIVE, Verdict.INCONCLUSIVE)
    assert req.offered.refused_tokens == 1
    assert req.evidence.honoured.refusals.tokens == 1


def test_token_refusals_are_not_load_the_requests_limit_refused():
    # 3 per 10 s promised; 10 requests in a second, 2 admitted, 8 refused for tokens: the
    # requests limiter never had to decide past its limit, so that is no under-admission.
    recs = [rec(0.1 * i, 0.1 * i + 0.01, 0.1 * i + 0.02) for i in range(2)]
    recs += [
        rec(0.2 + 0.1 * i, 0.21 + 0.1 * i, 0.22 + 0.1 * i, status=429, limit_kind="tokens")
        for i in range(8)
    ]
    req, _ = judge(recs)
    assert req.evidence.honoured.offered_max_in_window == 2
    assert req.honoured == Verdict.INCONCLUSIVE
    assert not req.evidence.honoured.under_admission


def test_version_1_records_go_by_loadkit_s_codes():
    v1 = {"schema": "loadkit.record/1", "limit_kind": None}
    req, conc = judge(lone_refusal(code="rate_limit_exceeded", **v1))
    assert (req.honoured, conc.honoured) == (Verdict.VIOLATED, Verdict.INCONCLUSIVE)
    req, conc = judge(lone_refusal(code="concurrency_limit_exceeded", **v1))
    assert (req.honoured, conc.honoured) == (Verdict.INCONCLUSIVE, Verdict.VIOLATED)
    req, conc = judge(lone_refusal(code=None, **v1))
    assert (req.honoured, conc.honoured) == (Verdict.VIOLATED, Verdict.VIOLATED)
    # a version-2 record with loadkit's code but no limit_kind: the engine found no signal
    # (it cannot, for this code), so it is unattributed
    req, conc = judge(lone_refusal(code="rate_limit_exceeded", limit_kind=None))
    assert (req.honoured, conc.honoured) == (Verdict.VIOLATED, Verdict.VIOLATED)


def test_the_report_evidence_names_the_attribution():
    recs = [rec(0.0, 0.1, 0.3, key="k1")]
    recs += [
        rec(1.0 + i, 1.1 + i, 1.2 + i, status=429, code="tpm_rate_limit_exceeded") for i in range(2)
    ]
    recs.append(rec(5.0, 5.1, 5.2, status=429, error_type="overloaded"))
    cols = columns_from_records(recs)
    meta = RunMeta(
        "t",
        "test",
        "http://x",
        "s",
        0.0,
        0,
        tiers={"free": {"requests": 3, "window_s": 10.0, "concurrency": 2}},
    )
    found = limit_verdicts(meta, cols, SET)
    html = _evidence(found.limits[0])
    assert (
        "429 refusals: 0 by the requests limit, 1 by the concurrency limit, 2 refused for "
        "tokens (not judged: no token limit is promised); what said so: "
        "<code>code=tpm_rate_limit_exceeded</code> ×2, <code>type=overloaded</code> ×1"
    ) in html
