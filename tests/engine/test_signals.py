"""Signals while the asyncio engine runs (real signals to this process, virtual time,
scripted transport): SIGINT, SIGTERM and SIGHUP each stop sending and drain, keeping every
record; a second signal of any of them cuts the drain short. The handlers the process had
before are back afterwards."""

from __future__ import annotations

import os
import signal

import pytest

from tests.engine.scripted import json_reply, make_scenario, run_scripted

EXACT = 1e-9
LABELS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


def approx(v: object) -> object:
    return pytest.approx(v, abs=EXACT)


def send(sig: signal.Signals):
    return lambda engine: os.kill(os.getpid(), sig)


def _burst_of_six_two_at_a_time() -> object:
    load = {
        "pattern": "burst",
        "burst_size": 6,
        "burst_period_s": 0.25,
        "phase_s": 0.1,
        "max_in_flight": 2,
    }
    return make_scenario(load, duration_s=10.0, drain_s=30)


@pytest.fixture
def own_handlers():
    """A handler of the test's own on each stop signal, which the run must put back."""
    seen: list[int] = []
    mine = {sig: signal.signal(sig, lambda s, f: seen.append(s)) for sig in LABELS}
    try:
        yield seen
    finally:
        for sig, previous in mine.items():
            signal.signal(sig, previous)


@pytest.mark.parametrize("sig", list(LABELS))
def test_a_signal_stops_sending_and_drains_keeping_every_record(sig, own_handlers):
    before = {s: signal.getsignal(s) for s in LABELS}
    run = run_scripted(
        _burst_of_six_two_at_a_time(), json_reply(after_s=1.0), at=[(0.5, send(sig))]
    )
    res = run.result
    assert res.interrupted and not res.drain_cut
    assert res.stop_reason == f"interrupted ({LABELS[sig]})"
    # Bursts at 0.1 and 0.35; two sent at 0.1 and answered within the drain at 1.1; the
    # other ten were waiting for a slot: recorded at the signal, never sent.
    recs = sorted(run.records, key=lambda r: (r.send_s, r.scheduled_s))
    assert [(r.status, r.transport_error) for r in recs] == [(200, None)] * 2 + [
        (0, "not_sent")
    ] * 10
    assert [r.end_s for r in recs] == approx([1.1, 1.1] + [0.5] * 10)
    assert len(run.transport.sent) == 2 and run.ended_at == approx(1.1)
    assert (res.sent, res.not_sent, res.in_flight, res.queued) == (2, 10, 2, 10)
    # The engine's handlers are gone; the process's own are back, and never ran.
    assert {s: signal.getsignal(s) for s in LABELS} == before
    assert own_handlers == []


def test_a_second_signal_cuts_the_drain_short(own_handlers):
    at = [(0.5, send(signal.SIGTERM)), (0.7, send(signal.SIGINT))]
    run = run_scripted(_burst_of_six_two_at_a_time(), json_reply(after_s=1.0), at=at)
    res = run.result
    assert res.interrupted and res.drain_cut
    assert res.stop_reason == "interrupted (SIGTERM); drain cut short"
    assert run.ended_at == approx(0.7)
    sent = [r for r in run.records if r.transport_error != "not_sent"]
    assert [(r.transport_error, r.end_s) for r in sent] == [("cancelled", approx(0.7))] * 2
    assert len(run.records) == 12 and res.cancelled == 2


def test_a_signal_during_a_drain_holds_what_is_still_queued(own_handlers):
    # The schedule ends at 0.1 (one burst); its drain sends the queued arrivals as slots
    # free, until a signal stops sending: the rest are recorded as never sent.
    load = {
        "pattern": "burst",
        "burst_size": 6,
        "burst_period_s": 100,
        "phase_s": 0.1,
        "max_in_flight": 1,
    }
    sc = make_scenario(load, duration_s=10.0, drain_s=30)
    run = run_scripted(sc, json_reply(after_s=0.2), at=[(0.45, send(signal.SIGHUP))])
    recs = sorted(run.records, key=lambda r: r.send_s)
    assert [r.send_s for r in recs] == approx([0.1, 0.3, 0.45, 0.45, 0.45, 0.45])
    assert [r.status for r in recs] == [200, 200, 0, 0, 0, 0]
    assert run.result.interrupted
    assert run.result.stop_reason == "schedule complete; then interrupted (SIGHUP) in the drain"
    assert run.ended_at == approx(0.5)  # the one in flight at the signal: answered


def test_a_signal_abandons_a_pending_retry_at_once(own_handlers):
    sc = make_scenario(
        {"pattern": "burst", "burst_size": 1, "burst_period_s": 100, "phase_s": 0.1},
        honour_retry_after=True,
        drain_s=30,
    )
    reply = json_reply(429, {"error": {"code": "x"}}, {"retry-after": "2"})
    run = run_scripted(sc, reply, at=[(0.5, send(signal.SIGTERM))])
    # The retry was due at 2.1: it is never sent, and leaves no record of its own.
    assert [(r.attempt, r.status) for r in run.records] == [(1, 429)]
    assert len(run.transport.sent) == 1 and run.ended_at == approx(0.5)
