"""A model's own request window and concurrency (``[tiers.T.models.M]``) are judged per
(key, model) on the key's requests to that model, with the key's verdicts; their refusals
(``model_requests`` / ``model_concurrency``) never count against the key's promise, and an
unattributed 429 is still judged against the key's limits alone."""

from __future__ import annotations

import json
from typing import Any

from loadkit.analysis.cli import EXIT_FAIL, EXIT_OK, console_table, exit_status
from loadkit.analysis.columns import columns_from_records
from loadkit.analysis.limits import ConcurrencyLimit, RequestsLimit
from loadkit.analysis.outcome import Refused, RunVerdict, Verdict
from loadkit.analysis.summary import Summary, analyse
from loadkit.limit_signals import Refusal, attribute
from loadkit.records import RequestRecord
from loadkit.runmeta import RunMeta
from loadkit.server.errors import ApiError
from tests.analysis.builders import rec

# The key may send 10 per 10 s and 5 at once; to model m, 2 per 10 s and 1 at once.
TIER: dict[str, Any] = {
    "requests": 10,
    "window_s": 10.0,
    "concurrency": 5,
    "models": {"m": {"requests": 2, "window_s": 10.0, "concurrency": 1}},
}


def summary_of(records: list[RequestRecord], tier: dict[str, Any] = TIER) -> Summary:
    meta = RunMeta("t", "test", "http://x", "s", 0.0, 0, tiers={"free": tier}, ended_unix=60.0)
    return analyse(meta, columns_from_records(records)).summary


def entries(s: Summary) -> dict[str, RequestsLimit | ConcurrencyLimit]:
    return {e.kind: e for e in s.limits}


def model_refusal(send: float, code: str = "model_rate_limit_exceeded", **kw: Any) -> Any:
    return rec(send, send + 0.01, send + 0.02, status=429, code=code, **kw)


def test_the_servers_model_refusals_are_told_apart_from_the_keys() -> None:
    """What the reference server sends for each limit, read back by the engines' rule."""

    def kind(error: ApiError) -> str | None:
        body = error.body()["error"]
        return attribute(Refusal(body["code"], body["type"], body["message"])).kind

    def refused(code: str, param: str | None = None) -> ApiError:
        return ApiError(429, code, "limit reached", param)

    assert kind(refused("model_rate_limit_exceeded", "model")) == "model_requests"
    assert kind(refused("model_concurrency_limit_exceeded", "model")) == "model_concurrency"
    assert kind(refused("rate_limit_exceeded")) == "requests"  # the key's, as API.md says
    assert kind(refused("concurrency_limit_exceeded")) == "concurrency"
    cols = columns_from_records(
        [
            model_refusal(0.0),
            model_refusal(1.0, "model_concurrency_limit_exceeded"),
            model_refusal(2.0, "rate_limit_exceeded"),
        ]
    )
    assert cols.refused.tolist() == [
        Refused.MODEL_REQUESTS,
        Refused.MODEL_CONCURRENCY,
        Refused.REQUESTS,
    ]


def test_justified_model_refusals_hold_and_do_not_accuse_the_key() -> None:
    recs = [
        rec(0.0, 0.01, 0.1),
        rec(1.0, 1.01, 1.1),
        model_refusal(2.0),  # the model's third in 10 s: justified
        rec(3.0, 3.01, 3.1, model="other"),  # another model: only the key's limits count it
    ]
    s = summary_of(recs)
    got = entries(s)
    assert list(got) == [
        "requests",
        "concurrency",
        "models.m.requests",
        "models.m.concurrency",
    ]
    key, model = got["requests"], got["models.m.requests"]
    # The key's window held 3 of 10: a refusal counted against it would be unjustified.
    assert key.verdict.honoured == Verdict.INCONCLUSIVE
    assert key.verdict.evidence.honoured.unjustified_429s == 0
    assert key.verdict.evidence.honoured.refusals is not None
    assert key.verdict.evidence.honoured.refusals.models == 1
    assert isinstance(model, RequestsLimit) and model.model == "m"
    assert (model.verdict.promised, model.verdict.observed_max) == (2, 2)
    assert (model.verdict.enforced, model.verdict.honoured) == (Verdict.HELD, Verdict.HELD)
    assert model.verdict.evidence.honoured.rate_limit_429s == 1
    assert model.verdict.offered.requests == 3  # the key's requests to m only
    assert s.verdict == RunVerdict.PASS and exit_status(s) == EXIT_OK
    assert s.keys is not None and s.keys[0].limited.models == 1


def test_an_unjustified_model_refusal_fails_the_run_beside_the_keys_promise() -> None:
    recs = [rec(0.0, 0.01, 0.1), model_refusal(1.0), rec(2.0, 2.01, 2.1, model="other")]
    s = summary_of(recs)
    got = entries(s)
    assert got["requests"].verdict.honoured != Verdict.VIOLATED
    model = got["models.m.requests"]
    assert model.verdict.honoured == Verdict.VIOLATED
    ex = model.verdict.evidence.honoured.unjustified_examples
    assert [(x.send_s, x.max_admitted_in_window) for x in ex] == [(1.0, 1)]
    assert s.verdict == RunVerdict.FAIL and exit_status(s) == EXIT_FAIL
    assert "k1 models.m.requests: not honoured" in s.verdict_reasons
    assert "1 of 1 model_rate_limit_exceeded refusals came" in " ".join(model.explanation)
    assert model.explanation[0].startswith("Model m's own promise (tiers.free.models.m)")
    table = console_table(s)
    row = next(x for x in table.splitlines() if "models.m.requests" in x)
    assert row.split() == [
        "k1",
        "free",
        "models.m.requests",
        "2",
        "1",
        "1",
        "2",
        "inconclusive",
        "violated",
    ]


def test_a_model_window_exceeded_is_not_enforced_while_the_keys_holds() -> None:
    recs = [rec(float(t), t + 0.01, t + 0.1) for t in range(3)]  # 3 to m within 10 s
    got = entries(summary_of(recs))
    assert got["models.m.requests"].verdict.enforced == Verdict.VIOLATED
    assert got["models.m.requests"].verdict.observed_max == 3
    assert got["requests"].verdict.enforced == Verdict.INCONCLUSIVE  # 3 of 10


def test_model_concurrency_judged_on_the_models_requests() -> None:
    recs = [
        rec(0.0, 0.01, 5.0),  # a stream to m, open until 5 s
        model_refusal(1.0, "model_concurrency_limit_exceeded"),  # justified: m is full
        rec(1.5, 1.51, 4.0, model="other"),  # another model: not m's slot
        model_refusal(6.0, "model_concurrency_limit_exceeded"),  # nothing open: unjustified
    ]
    got = entries(summary_of(recs))
    conc = got["models.m.concurrency"]
    assert isinstance(conc, ConcurrencyLimit) and conc.model == "m"
    assert conc.verdict.observed_max == 1
    h = conc.verdict.evidence.honoured
    assert (h.concurrency_429s, h.unjustified_429s) == (2, 1)
    assert [x.send_s for x in h.unjustified_examples] == [6.0]
    assert conc.verdict.honoured == Verdict.VIOLATED
    key = got["concurrency"]
    assert key.verdict.honoured != Verdict.VIOLATED
    assert key.verdict.evidence.honoured.unjustified_429s == 0


def test_an_unattributed_refusal_is_still_judged_against_the_keys_limits_only() -> None:
    recs = [rec(0.0, 0.01, 0.1), model_refusal(1.0, code="429")]  # no signal names it
    got = entries(summary_of(recs))
    assert got["requests"].verdict.honoured == Verdict.VIOLATED
    assert got["requests"].verdict.evidence.honoured.unjustified_uncoded_429s == 1
    model = got["models.m.requests"].verdict
    assert model.honoured == Verdict.INCONCLUSIVE
    assert model.evidence.honoured.unjustified_uncoded_429s == 0
    assert model.evidence.honoured.refusals is not None
    assert model.evidence.honoured.refusals.unattributed == 1


def test_only_the_promises_a_model_makes_get_entries_and_they_read_back() -> None:
    tier = {**TIER, "models": {"m": {"concurrency": 1}, "n": {"tokens": 100}}}
    s = summary_of([rec(0.0, 0.01, 0.1)], tier)
    assert [e.kind for e in s.limits] == ["requests", "concurrency", "models.m.concurrency"]
    d = json.loads(s.to_json())
    m = d["limits"][2]
    assert (m["kind"], m["model"], m["promised"]) == ("concurrency", "m", 1)
    assert "model" not in d["limits"][0] and "remaining_header" in d["limits"][0]
    assert Summary.from_dict(d) == s
    # a model's window left out is the tier's
    tier = {**TIER, "models": {"m": {"requests": 2}}}
    (model,) = [e for e in summary_of([rec(0.0)], tier).limits if e.kind == "models.m.requests"]
    assert isinstance(model, RequestsLimit) and model.verdict.window_s == 10.0
    assert model.remaining_header is None


def test_the_report_shows_a_models_limits_beside_the_keys() -> None:
    from loadkit.analysis.glance import limits_by_key
    from loadkit.analysis.report import _keys_table, _limits_table

    recs = [rec(0.0, 0.01, 0.1), model_refusal(1.0), rec(2.0, 2.01, 2.1, model="other")]
    s = summary_of(recs)
    first_screen = limits_by_key(s.limits)
    assert first_screen.count("<tr><td class=key>") == 2
    assert "<td class=key>k1 · model m</td><td>free</td><td class=num>2 / 10 s</td>" in (
        first_screen
    )
    assert '<span class="badge violated">violated</span>' in first_screen
    detail = _limits_table(s)
    assert "<td>models.m.requests</td><td>2 per 10 s</td>" in detail
    # the model's entry counts its own refusals as its requests limit's
    assert "429 refusals: 1 by the requests limit, 0 by the concurrency limit; what " in detail
    assert "<th>429 a model's limit</th>" in _keys_table(s)
