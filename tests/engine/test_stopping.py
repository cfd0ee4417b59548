"""How the asyncio engine ends a run (virtual time, scripted transport): the drain lets
in-flight requests finish within ``drain_s`` and records the rest as cancelled; an
interrupt (Ctrl-C) skips the drain, or cuts one short; every request keeps its record."""

from __future__ import annotations

import pytest

from tests.engine.scripted import (
    HANG,
    Head,
    Sent,
    Steps,
    Wait,
    json_reply,
    make_scenario,
    run_scripted,
    sse_reply,
    token_event,
)

EXACT = 1e-9


def approx(v: object) -> object:
    return pytest.approx(v, abs=EXACT)


def _four_kinds(sent: Sent) -> Steps:
    """Two answers taking 1.5 s, one that never answers, one stream that stalls."""
    if sent.n < 2:
        return json_reply(after_s=1.5)
    if sent.n == 2:
        return [HANG]
    return [Wait(0.05), Head(200, {"content-type": "text/event-stream"}), Wait(0.01)] + [
        token_event("a"),
        HANG,
    ]


def _burst(**run: object) -> object:
    load = {"pattern": "burst", "burst_size": 4, "burst_period_s": 100, "phase_s": 0.1}
    return make_scenario(load, **run)


def _by_n(run) -> list:  # records in the order their requests were sent
    order = {s.request_id: s.n for s in run.transport.sent}
    return sorted(run.records, key=lambda r: order[r.request_id])


def test_drain_lets_requests_finish_and_cancels_the_rest_at_its_end():
    run = run_scripted(_burst(drain_s=2.0), _four_kinds)
    a, b, hung, stalled = _by_n(run)
    assert run.result.stop_reason == "schedule complete"  # at 0.1 s, the last arrival
    assert [a.status, b.status] == [200, 200] and a.end_s == approx(1.6)
    assert (hung.status, hung.transport_error, hung.headers_s) == (0, "cancelled", None)
    assert hung.end_s == approx(2.1)  # 0.1 s + drain_s
    # A stream cut by the drain keeps what it delivered.
    assert (stalled.status, stalled.transport_error) == (200, "cancelled")
    assert stalled.chunk_s == approx([0.16]) and stalled.end_s == approx(2.1)
    assert run.result.cancelled == 2
    assert run.ended_at == approx(2.1)
    assert not run.result.interrupted
    assert run.transport.in_flight == 0 and run.transport.closed


def test_drain_ends_as_soon_as_nothing_is_in_flight():
    run = run_scripted(_burst(drain_s=30.0), json_reply(after_s=1.5))
    assert len(run.records) == 4 and all(r.status == 200 for r in run.records)
    assert run.ended_at == approx(1.6)
    assert run.result.cancelled == 0


def test_duration_end_drains_closed_loop_users():
    sc = make_scenario({"pattern": "closed", "concurrency": 2}, duration_s=1.0, drain_s=0.5)
    run = run_scripted(sc, [HANG])
    assert run.result.stop_reason == "duration reached"
    assert len(run.records) == 2  # each user's one request, never answered
    assert all(r.transport_error == "cancelled" for r in run.records)
    assert [r.end_s for r in run.records] == approx([1.5, 1.5])


def test_interrupt_skips_the_drain():
    sc = make_scenario({"pattern": "closed", "concurrency": 3}, duration_s=60, drain_s=30)
    ctrl_c = [(0.5, lambda e: e.interrupt("interrupted (Ctrl-C)", drain=False))]
    run = run_scripted(sc, sse_reply(tokens=["x"] * 100, itl_s=0.1), at=ctrl_c)
    assert run.result.interrupted
    assert run.result.stop_reason == "interrupted (Ctrl-C)"
    assert run.ended_at == approx(0.5)
    assert len(run.records) == 3
    assert all(r.transport_error == "cancelled" and r.end_s == approx(0.5) for r in run.records)
    assert all(r.status == 200 and len(r.chunk_s) == 4 for r in run.records)  # 0.15…0.45 s


def test_interrupt_cuts_a_drain_short():
    ctrl_c = [(0.5, lambda e: e.interrupt("interrupted (Ctrl-C)", drain=False))]
    run = run_scripted(_burst(drain_s=30.0), _four_kinds, at=ctrl_c)
    assert run.result.interrupted and run.result.drain_cut
    assert run.result.stop_reason == "schedule complete; then interrupted (Ctrl-C) in the drain"
    assert run.ended_at == approx(0.5)
    assert len(run.records) == 4
    assert all(r.transport_error == "cancelled" and r.end_s == approx(0.5) for r in run.records)


def test_interrupt_abandons_a_pending_retry():
    sc = make_scenario(
        {"pattern": "burst", "burst_size": 1, "burst_period_s": 100, "phase_s": 0.1},
        honour_retry_after=True,
        drain_s=30,
    )
    ctrl_c = [(0.5, lambda e: e.interrupt("interrupted (Ctrl-C)", drain=False))]
    run = run_scripted(
        sc, json_reply(429, {"error": {"code": "x"}}, {"retry-after": "2"}), at=ctrl_c
    )
    assert [(r.attempt, r.status) for r in run.records] == [(1, 429)]
    assert len(run.transport.sent) == 1
    assert run.ended_at == approx(0.5)


def test_a_retry_may_run_into_the_drain():
    sc = make_scenario(
        {"pattern": "burst", "burst_size": 1, "burst_period_s": 100, "phase_s": 0.1},
        honour_retry_after=True,
        drain_s=30,
    )

    def script(sent: Sent) -> Steps:
        return (
            json_reply(429, {"error": {"code": "x"}}, {"retry-after": "2"})
            if sent.n == 0
            else json_reply()
        )

    run = run_scripted(sc, script)
    assert [(r.attempt, r.status) for r in sorted(run.records, key=lambda r: r.attempt)] == [
        (1, 429),
        (2, 200),
    ]
    assert run.ended_at == approx(2.1)
