"""What the asyncio engine does when the target fails (virtual time, scripted transport):
closed-loop users back off after any failure, longer with each failure in a row, and
record each pause; open-loop arrivals keep their schedule, but a run whose target fails
everything is stopped early with the reason."""

from __future__ import annotations

import pytest

from loadkit.engine.transport import Refused
from tests.engine.scripted import (
    Fail,
    Head,
    Sent,
    Steps,
    Wait,
    json_reply,
    make_scenario,
    rate_limited,
    run_scripted,
)

EXACT = 1e-9
HTML_404: Steps = [
    Wait(0.01),
    Head(404, {"content-type": "text/html"}),
    b"<html><body>Not Found</body></html>",
]
ERROR_500 = json_reply(500, {"error": {"code": "internal_error", "message": "x"}})


def approx(v: object) -> object:
    return pytest.approx(v, abs=EXACT)


def _closed(duration_s: float, think_s: float = 0.0) -> object:
    return make_scenario(
        {"pattern": "closed", "concurrency": 1, "think_s": think_s}, duration_s=duration_s
    )


def test_a_closed_loop_user_backs_off_longer_with_each_failure_in_a_row():
    run = run_scripted(_closed(30.0), HTML_404)
    recs = sorted(run.records, key=lambda r: r.send_s)
    # 1, 2, 4, 8 s, then at most 10 s: not thousands of 404s a second.
    assert [r.pause_s for r in recs] == approx([1, 2, 4, 8, 10, 10])
    assert [r.send_s for r in recs] == approx([0, 1.01, 3.02, 7.03, 15.04, 25.05])
    assert all(r.status == 404 for r in recs)
    assert run.ended_at == approx(30.0)  # the run's end cuts the last backoff short


def test_a_success_ends_the_streak_and_a_429_neither_counts_nor_doubles():
    answers = [ERROR_500, ERROR_500, json_reply(), ERROR_500, rate_limited({"retry-after": "0.5"})]
    answers += [[Fail(Refused)], [Fail(Refused)]]

    def script(sent: Sent) -> Steps:
        return answers[sent.n] if sent.n < len(answers) else json_reply()

    run = run_scripted(_closed(9.0, think_s=0.2), script)
    recs = sorted(run.records, key=lambda r: r.send_s)
    assert [r.status for r in recs][:8] == [500, 500, 200, 500, 429, 0, 0, 200]
    assert [r.transport_error for r in recs][5:7] == ["refused", "refused"]
    assert [r.pause_s for r in recs][:8] == approx([1, 2, 0.2, 1, 0.5, 1, 2, 0.2])


def test_open_loop_records_have_no_pause():
    sc = make_scenario({"pattern": "constant", "rate_per_s": 10}, duration_s=1.0)
    run = run_scripted(sc, ERROR_500)
    assert len(run.records) == 10
    assert all(r.pause_s is None for r in run.records)


def test_a_run_whose_target_fails_everything_stops_early_and_says_why():
    sc = make_scenario({"pattern": "constant", "rate_per_s": 50}, duration_s=60.0, drain_s=5)
    run = run_scripted(sc, HTML_404)
    res = run.result
    # FailureWatch's default: 50 failures in a row, over at least 2 s.
    assert res.stop_reason.startswith("target failing: the last ")
    assert "404 Not Found ×" in res.stop_reason
    first_end = min(r.end_s for r in run.records)
    assert 2.0 <= run.ended_at - first_end < 2.0 + 0.02 + 0.01  # one arrival, one answer
    # Open-loop arrivals kept their schedule until then: one record each, all answered.
    assert len(run.records) == res.arrivals == res.sent == len(run.transport.sent)
    assert all(r.status == 404 and r.send_s == approx(r.scheduled_s) for r in run.records)
    assert not res.interrupted


def test_an_interrupt_in_the_drain_keeps_the_reason_the_target_failed():
    sc = make_scenario({"pattern": "constant", "rate_per_s": 50}, duration_s=60.0, drain_s=30)
    slow_404 = [Wait(1.0), *HTML_404]  # 50 open at any moment: the drain lasts 1 s

    run = run_scripted(sc, slow_404, at=[(3.5, lambda e: e.interrupt("interrupted (SIGTERM)"))])
    reason = run.result.stop_reason
    assert reason.startswith("target failing: the last ")
    assert reason.endswith("; then interrupted (SIGTERM) in the drain")
    assert run.result.interrupted


def test_a_refused_connection_everywhere_stops_the_run_too():
    sc = make_scenario({"pattern": "constant", "rate_per_s": 50}, duration_s=60.0)
    run = run_scripted(sc, [Fail(Refused)])
    assert "no response (refused) ×" in run.result.stop_reason
    assert run.ended_at < 2.1


def test_a_limiter_refusing_everything_is_not_a_failing_target():
    sc = make_scenario({"pattern": "constant", "rate_per_s": 50}, duration_s=4.0)
    run = run_scripted(sc, rate_limited({}))
    assert run.result.stop_reason == "schedule complete"
    assert len(run.records) == 200 and all(r.status == 429 for r in run.records)
