"""The asyncio engine's scheduling on virtual time through a scripted transport: open-loop
arrivals sent on time and never dropped, closed-loop users with their pauses, the
client-side cap, the request count, Retry-After. Every time asserted is exact: nothing
else runs on the virtual clock."""

from __future__ import annotations

import random

import pytest

from loadkit.arrivals import arrivals
from loadkit.engine.transport import Reset
from tests.engine.scripted import (
    HANG,
    TEST_KEYS,
    Fail,
    Sent,
    Steps,
    json_reply,
    make_scenario,
    rate_limited,
    run_scripted,
)

EXACT = 1e-9  # float rounding between the loop's clock and the run's


def approx(v: object) -> object:
    return pytest.approx(v, abs=EXACT)


def test_open_loop_sends_every_arrival_on_time_however_slow_the_answers():
    sc = make_scenario({"pattern": "constant", "rate_per_s": 50})
    # Answers take 0.29 s (not 0.3: no answer ties with an arrival): 15 open at any moment.
    run = run_scripted(sc, json_reply(after_s=0.29))
    recs = sorted(run.records, key=lambda r: r.send_s)
    assert len(recs) == 100  # 2 s at 50/s, whatever the random phase
    assert 0 <= recs[0].scheduled_s < 0.02
    assert [r.scheduled_s for r in recs] == approx(
        [recs[0].scheduled_s + 0.02 * i for i in range(100)]
    )
    assert [r.send_s for r in recs] == approx([r.scheduled_s for r in recs])
    assert all(r.status == 200 and r.queued_s == 0 for r in recs)
    assert [s.t for s in run.transport.sent] == approx([r.send_s for r in recs])
    assert run.transport.max_in_flight == 15
    assert run.result.stop_reason == "schedule complete"


def test_open_loop_keeps_sending_when_nothing_ever_answers():
    sc = make_scenario({"pattern": "constant", "rate_per_s": 50}, drain_s=0)
    run = run_scripted(sc, [HANG])
    recs = run.records
    assert len(recs) == 100
    assert [r.send_s for r in recs] == approx([r.scheduled_s for r in recs])
    last = max(r.scheduled_s for r in recs)
    # The schedule ended with its last arrival; with no drain every request is cancelled then.
    assert all(r.transport_error == "cancelled" and r.status == 0 for r in recs)
    assert all(r.end_s == approx(last) for r in recs)
    assert run.result.cancelled == 100


def test_burst_arrivals_of_every_key_each_get_one_record():
    load = {"pattern": "burst", "burst_size": 10, "burst_period_s": 0.5, "phase_s": 0.1}
    sc = make_scenario(load)
    schedule = list(arrivals(sc.load[0], sc.duration_s, random.Random(0)))
    assert schedule == approx([0.1] * 10 + [0.6] * 10 + [1.1] * 10 + [1.6] * 10)
    run = run_scripted(sc, json_reply(after_s=0.05), keys=TEST_KEYS)
    for key in ("free-1", "free-2"):
        mine = sorted(r.scheduled_s for r in run.records if r.key == key)
        assert mine == approx(schedule)
    ids = [r.request_id for r in run.records]
    assert len(set(ids)) == 80
    assert sorted(ids) == sorted(s.request_id for s in run.transport.sent)


def test_client_cap_delays_arrivals_and_records_the_wait():
    sc = make_scenario(
        {
            "pattern": "burst",
            "burst_size": 5,
            "burst_period_s": 100,
            "phase_s": 0.1,
            "max_in_flight": 2,
        }
    )
    run = run_scripted(sc, json_reply(after_s=0.5))
    recs = sorted(run.records, key=lambda r: (r.send_s, r.request_id))
    assert run.transport.max_in_flight == 2
    assert [r.scheduled_s for r in recs] == approx([0.1] * 5)
    assert [r.send_s for r in recs] == approx([0.1, 0.1, 0.6, 0.6, 1.1])
    assert [r.queued_s for r in recs] == approx([0, 0, 0.5, 0.5, 1.0])
    assert [r.end_s for r in recs] == approx([0.6, 0.6, 1.1, 1.1, 1.6])
    assert all(r.status == 200 for r in recs)


def test_client_cap_never_drops_a_steady_overload():
    # 10/s offered, one at a time at 4/s served: the queue grows by 0.15 s per arrival.
    sc = make_scenario(
        {"pattern": "constant", "rate_per_s": 10, "max_in_flight": 1}, duration_s=1.0, drain_s=5
    )
    run = run_scripted(sc, json_reply(after_s=0.25))
    recs = sorted(run.records, key=lambda r: r.scheduled_s)
    assert len(recs) == 10 and all(r.status == 200 for r in recs)
    assert [r.queued_s for r in recs] == approx([0.15 * i for i in range(10)])
    assert [r.send_s - r.scheduled_s for r in recs] == approx([0.15 * i for i in range(10)])


def test_closed_loop_users_alternate_request_and_think_time():
    sc = make_scenario({"pattern": "closed", "concurrency": 2, "think_s": 0.1}, duration_s=1.0)
    run = run_scripted(sc, json_reply(after_s=0.05))
    # Users start 10 ms apart; each cycle is 50 ms of request and 100 ms of thinking, and a
    # user sends only while the run lasts.
    user0 = [0.15 * i for i in range(7)]
    user1 = [0.01 + 0.15 * i for i in range(7)]
    assert sorted(r.send_s for r in run.records) == approx(sorted(user0 + user1))
    assert all(r.scheduled_s is None and r.status == 200 for r in run.records)
    assert all(r.pause_s == approx(0.1) for r in run.records)
    assert run.transport.max_in_flight == 2
    assert run.result.stop_reason == "duration reached"
    # The end of the run cuts the last think time short: the drain is for requests.
    assert run.ended_at == approx(1.0)


def test_closed_loop_user_pauses_after_429_and_after_a_failed_connection():
    def script(sent: Sent) -> Steps:
        if sent.n == 0:
            return rate_limited({"retry-after": "0.5"})
        if sent.n == 1:
            return [Fail(Reset)]
        return json_reply()

    sc = make_scenario({"pattern": "closed", "concurrency": 1, "think_s": 0.1}, duration_s=1.95)
    run = run_scripted(sc, script)
    recs = sorted(run.records, key=lambda r: r.send_s)
    # 429 → the advertised 0.5 s; reset → 1 s; then the 0.1 s think time.
    assert [r.send_s for r in recs] == approx([0, 0.5, 1.5, 1.6, 1.7, 1.8, 1.9])
    assert [r.status for r in recs] == [429, 0, 200, 200, 200, 200, 200]
    assert [r.transport_error for r in recs] == [None, "reset"] + [None] * 5
    assert recs[0].retry_after_s == 0.5 and recs[0].error_code == "rate_limit_exceeded"
    assert [r.pause_s for r in recs] == approx([0.5, 1.0] + [0.1] * 5)


def test_request_count_ends_a_closed_loop_run():
    sc = make_scenario({"pattern": "closed", "concurrency": 3}, duration_s=30, max_requests=10)
    run = run_scripted(sc, json_reply(after_s=0.01))
    assert len(run.records) == 10 and len(run.transport.sent) == 10
    assert run.result.stop_reason == "request count reached"
    # Users start 10 ms apart and send back to back; the 10th request goes at 40 ms.
    assert run.ended_at == approx(0.05)


def test_request_count_ends_an_open_loop_run():
    sc = make_scenario({"pattern": "constant", "rate_per_s": 100}, max_requests=25)
    run = run_scripted(sc, json_reply(after_s=0.01))
    assert len(run.records) == 25
    assert run.result.stop_reason == "request count reached"
    assert max(r.scheduled_s for r in run.records) < 0.25


def _retry_scenario(max_retries: int = 2) -> object:
    return make_scenario(
        {"pattern": "burst", "burst_size": 1, "burst_period_s": 100, "phase_s": 0.1},
        honour_retry_after=True,
        max_retries=max_retries,
    )


def test_retry_after_is_honoured_and_each_attempt_is_its_own_record():
    def script(sent: Sent) -> Steps:
        return rate_limited({"retry-after-ms": "250"}) if sent.n < 2 else json_reply()

    run = run_scripted(_retry_scenario(), script)
    recs = sorted(run.records, key=lambda r: r.attempt)
    assert [r.attempt for r in recs] == [1, 2, 3]
    assert [r.status for r in recs] == [429, 429, 200]
    assert [r.send_s for r in recs] == approx([0.1, 0.35, 0.6])
    # A retry is scheduled by the promise it follows, not by the original schedule.
    assert [r.scheduled_s for r in recs] == approx([0.1, 0.35, 0.6])
    assert len({r.request_id for r in recs}) == 3


def test_retries_stop_at_max_retries_and_default_to_one_second():
    run = run_scripted(_retry_scenario(max_retries=2), rate_limited({}))
    recs = sorted(run.records, key=lambda r: r.attempt)
    assert [r.attempt for r in recs] == [1, 2, 3]
    assert all(r.status == 429 for r in recs)
    assert [r.send_s for r in recs] == approx([0.1, 1.1, 2.1])  # no Retry-After: 1 s
