"""The token verdicts in the analysis pipeline: what a request weighs from its record
(usage, else the client's count of what it sent, calibrated), summary.json's ``tokens``
entries and their effect on the run's verdict, the client's count against the reference
server's, and the token charts' curves against brute force."""

from __future__ import annotations

import json
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from loadkit.analysis.columns import columns_from_records
from loadkit.analysis.summary import Summary, analyse
from loadkit.analysis.token_charts import arrival_tokens, trailing_volume
from loadkit.analysis.token_report import token_section
from loadkit.payloads import prepare
from loadkit.server.validation import validate_chat, validate_completion
from tests.analysis.builders import rec
from tests.analysis.synthetic import Limiter, run_meta

LOOSE = Limiter("sliding_log", requests=1000, window_s=60.0, concurrency=100)


def meta_with(**promise):
    meta = run_meta({"free": LOOSE}, [("k1", "free")])
    meta.tiers["free"].update(promise)
    return meta


def ok(send, prompt, out, **kw):
    """An admitted request with usage, as the reference server answers it."""
    return rec(
        send,
        send + 0.01,
        send + 0.2,
        key="k1",
        prompt_tokens=prompt,
        completion_tokens=out,
        finish_reason="length",
        sent_prompt_tokens=prompt,
        sent_max_tokens=out,
        **kw,
    )


def refused(send, prompt, out, **kw):
    """A token 429: no usage, only what the client asked."""
    return rec(
        send,
        send + 0.01,
        send + 0.02,
        key="k1",
        status=429,
        code="token_limit_exceeded",
        sent_prompt_tokens=prompt,
        sent_max_tokens=out,
        **kw,
    )


def summary_of(recs, **promise) -> Summary:
    return analyse(meta_with(**promise), columns_from_records(recs)).summary


def test_more_tokens_admitted_than_promised_fails_the_run():
    # 3 x 40 tokens inside 1 s under a 100-per-10-s promise
    s = summary_of([ok(t, 30, 10) for t in (0.0, 0.3, 0.6)], tokens=100, token_window_s=10.0)
    (e,) = s.tokens or ()
    assert (e.key, e.kind, e.verdict.enforced, e.verdict.observed_max) == (
        "k1",
        "tokens",
        "violated",
        120.0,
    )
    assert s.verdict == "fail" and "k1 tokens: not enforced" in s.verdict_reasons
    assert s.headline == "FAIL — 1 limit violated"
    assert e.weights is not None and (e.weights.from_usage, e.weights.unknown) == (3, 0)
    # summary.json reads back as it was written
    assert Summary.from_dict(json.loads(s.to_json())).to_json() == s.to_json()


def test_a_refusal_the_window_cannot_justify_is_unjustified():
    # 40 admitted, then a 40-token request refused: 80 <= 100
    s = summary_of([ok(0.0, 30, 10), refused(1.0, 30, 10)], tokens=100, token_window_s=10.0)
    (e,) = s.tokens or ()
    assert (e.verdict.honoured, e.verdict.unjustified) == ("violated", 1)
    assert e.verdict.examples[0].window_upper == 40 and e.verdict.examples[0].asked == 40
    assert "k1 tokens: not honoured" in s.verdict_reasons
    assert any("1 unjustified" in line for line in e.explanation)


def test_a_justified_refusal_holds_and_counts_the_client_count():
    recs = [ok(0.0, 50, 30), ok(0.5, 50, 30), refused(1.0, 50, 30)]  # 160 + 80 > 200
    s = summary_of(recs, tokens=200, token_window_s=10.0)
    (e,) = s.tokens or ()
    assert (e.verdict.enforced, e.verdict.honoured) == ("held", "held")
    assert e.weights is not None and e.weights.from_client_count == 1
    assert e.weights.count_ratio == (1.0, 1.0)
    assert s.verdict == "pass"


def test_the_count_is_scaled_by_what_usage_says_of_it():
    # the service counts 1.5 x what the client counted: the refused 60-token ask is 90
    recs = [
        rec(
            0.0,
            0.01,
            0.2,
            key="k1",
            prompt_tokens=90,
            completion_tokens=0,
            sent_prompt_tokens=60,
            sent_max_tokens=0,
        ),
        refused(1.0, 60, 0),
    ]
    s = summary_of(recs, tokens=170, token_window_s=10.0, token_counts="input")
    (e,) = s.tokens or ()
    assert e.weights is not None and e.weights.count_ratio == (1.5, 1.5)
    assert e.verdict.honoured == "held"  # 90 + 90 > 170: justified (60 + 60 would not be)
    s2 = summary_of(recs, tokens=190, token_window_s=10.0, token_counts="input")
    assert s2.tokens is not None and s2.tokens[0].verdict.honoured == "violated"


def test_a_model_promise_is_judged_on_that_models_requests_only():
    recs = [ok(t, 30, 10, model="big") for t in (0.0, 0.2)] + [ok(t, 30, 10) for t in (0.4, 0.6)]
    s = summary_of(
        recs, models={"big": {"tokens": 70, "token_window_s": 10.0, "token_counts": "total"}}
    )
    (e,) = s.tokens or ()
    assert (e.kind, e.verdict.observed_max, e.verdict.enforced) == (
        "models.big.tokens",
        80.0,
        "violated",
    )


def test_a_daily_promise_out_of_reach_says_so():
    s = summary_of([ok(0.0, 5, 5), ok(1.0, 5, 5)], requests_per_day=1000, day_window_s=86_400.0)
    (e,) = s.tokens or ()
    assert e.kind == "requests_per_day" and e.verdict.enforced == "inconclusive"
    assert e.verdict.reach is not None and e.verdict.reach.startswith(
        "cannot be reached in this run: at most 2 requests sent in any 86400 s span"
    )
    assert any(
        "requests_per_day enforced: inconclusive (cannot be reached" in r for r in s.verdict_reasons
    )
    # a daily refusal is judged here, not by the requests limit
    s = summary_of(
        [ok(0.0, 5, 5), rec(1.0, key="k1", status=429, code="daily_limit_exceeded")],
        requests_per_day=2,
        day_window_s=86_400.0,
    )
    (e,) = s.tokens or ()
    assert (e.verdict.refusals, e.verdict.honoured) == (1, "violated")
    requests = next(x for x in s.limits if x.kind == "requests")
    assert requests.verdict.honoured != "violated"


def test_no_promise_no_section():
    s = summary_of([ok(0.0, 5, 5)])
    assert s.tokens == () and token_section(s) == ""
    assert '"tokens": []' in s.to_json()


def test_the_report_section_shows_each_verdict_beside_its_evidence():
    s = summary_of([ok(t, 30, 10) for t in (0.0, 0.3, 0.6)], tokens=100, token_window_s=10.0)
    html = token_section(s)
    assert "<h2>Token and per-day limits: promised vs observed</h2>" in html
    assert (
        "100 total tokens / 10 s" in html and '<span class="badge violated">violated</span>' in html
    )


def test_the_client_count_is_the_reference_servers():
    rng = random.Random(3)
    for kind, validate in (("chat", validate_chat), ("completions", validate_completion)):
        for words in (1, 7, 300):
            req = prepare(kind, "loadkit-small", words, 16, rng)
            assert req.body is not None
            counted = validate(json.loads(req.body))
            assert counted.prompt_tokens == req.prompt_tokens, (kind, words)
            assert req.max_tokens == 16


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 20)), max_size=30),
    st.integers(1, 20),
)
def test_chart_curves_match_brute_force(points, width):
    t = np.sort(np.array([p[0] for p in points], dtype=float))
    w = np.array([p[1] for p in points], dtype=float)
    x, level = trailing_volume(t, w, float(width))
    for xi, li in zip(x, level, strict=True):
        assert li == w[(t > xi - width) & (t <= xi)].sum()
    spans = np.arange(0.0, 25.0)
    got = arrival_tokens(t, w, spans)
    for length, g in zip(spans, got, strict=True):
        want = max((w[(t >= a) & (t <= a + length)].sum() for a in t), default=0.0)
        assert g == want
