"""Every scheduled arrival gets exactly one record, whatever happens to it (virtual time,
scripted transport): counted against the arrival schedule itself (``loadkit.arrivals``),
not against what reached the server, with client-side caps, bursts, drains and interrupts.
An arrival still waiting for a client-side slot when the run stops is recorded as
``not_sent``: status 0, its wait kept, "sent" at the stop."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from loadkit.arrivals import arrivals
from loadkit.scenario import Scenario, plan
from tests.engine.scripted import (
    HANG,
    TEST_KEYS,
    Run,
    json_reply,
    make_scenario,
    run_scripted,
)

EXACT = 1e-9


def approx(v: object) -> object:
    return pytest.approx(v, abs=EXACT)


def schedule(sc: Scenario, key: str) -> list[float]:
    """The arrival times the engine draws for ``key`` (one load phase): its RNG is seeded
    by the (key, phase) pair's place in the plan, and the schedule takes the first draws."""
    (index,) = [i for i, (k, _) in enumerate(plan(sc, TEST_KEYS)) if k.label == key]
    rng = random.Random(f"{sc.seed}/{index}/{key}")
    return list(arrivals(sc.load[0], sc.duration_s, rng))


def check_one_record_per_arrival(run: Run, sc: Scenario, until: float | None = None) -> None:
    """Each key's first attempts are exactly its schedule (up to ``until``, a stop), and
    every request sent has exactly one record, every record not sent none."""
    recs = run.records
    keys = {r.key for r in recs}
    for key in keys:
        want = [t for t in schedule(sc, key) if until is None or t < until]
        got = sorted(r.scheduled_s for r in recs if r.key == key and r.attempt == 1)
        assert got == approx(want), key
    ids = [r.request_id for r in recs]
    assert len(set(ids)) == len(ids)
    sent = {s.request_id for s in run.transport.sent}
    assert {r.request_id for r in recs if r.transport_error != "not_sent"} == sent
    res = run.result
    assert res.records == len(recs) == res.sent + res.not_sent
    assert res.sent == len(run.transport.sent)
    assert res.arrivals == sum(r.attempt == 1 for r in recs)
    for r in recs:
        if r.transport_error == "not_sent":
            assert (r.status, r.headers_s, r.chunk_s) == (0, None, [])
            assert r.send_s == r.end_s and r.queued_s >= 0


def _burst(size: int, cap: int, **run: object) -> Scenario:
    load = {
        "pattern": "burst",
        "burst_size": size,
        "burst_period_s": 100,
        "phase_s": 0.1,
        "max_in_flight": cap,
    }
    return make_scenario(load, **run)


def test_a_burst_queued_behind_a_cap_keeps_every_record_when_the_drain_ends():
    sc = _burst(5, 1, drain_s=0.3)
    run = run_scripted(sc, json_reply(after_s=0.5))
    recs = sorted(run.records, key=lambda r: r.send_s)
    assert len(recs) == 5
    first, *queued = recs
    # Sent at 0.1 (the schedule's end), cut at the drain's end 0.3 s later.
    assert first.transport_error == "cancelled"
    assert (first.send_s, first.end_s) == approx((0.1, 0.4))
    for r in queued:
        assert (r.status, r.transport_error) == (0, "not_sent")
        assert r.scheduled_s == approx(0.1)
        assert r.queued_s == approx(0.3) and r.send_s == approx(0.4)
    res = run.result
    assert (res.sent, res.not_sent, res.cancelled, res.arrivals) == (1, 4, 1, 5)
    assert (res.in_flight, res.queued) == (1, 4)  # at the stop (the schedule's end, 0.1 s)
    assert len(run.transport.sent) == 1
    check_one_record_per_arrival(run, sc)


def test_a_queued_arrival_is_sent_within_the_drain_when_a_slot_frees():
    sc = _burst(5, 1, drain_s=0.3)
    run = run_scripted(sc, json_reply(after_s=0.25))
    recs = sorted(run.records, key=lambda r: (r.send_s, r.transport_error or ""))
    assert [(r.status, r.transport_error) for r in recs] == [
        (200, None),
        (0, "cancelled"),
        (0, "not_sent"),
        (0, "not_sent"),
        (0, "not_sent"),
    ]
    assert [r.send_s for r in recs] == approx([0.1, 0.35, 0.4, 0.4, 0.4])
    assert [r.queued_s for r in recs] == approx([0, 0.25, 0.3, 0.3, 0.3])
    check_one_record_per_arrival(run, sc)


@dataclass
class Case:
    load: dict
    run: dict
    reply_s: float
    stop_at: float | None = None  # an interrupt (with its drain) at this time
    cut_at: float | None = None  # a second interrupt: the drain cut short
    keys: int = 1
    expect_not_sent: bool = True
    extra: dict = field(default_factory=dict)


CASES = {
    "bursts, cap, short drain": Case(
        {"pattern": "burst", "burst_size": 10, "burst_period_s": 0.5, "max_in_flight": 3},
        {"duration_s": 2.0, "drain_s": 0.4},
        0.3,
        keys=2,
    ),
    "bursts, cap, long drain": Case(
        {"pattern": "burst", "burst_size": 10, "burst_period_s": 0.5, "max_in_flight": 3},
        {"duration_s": 2.0, "drain_s": 30},
        0.3,
        expect_not_sent=False,
    ),
    "steady overload, cap, no drain": Case(
        {"pattern": "constant", "rate_per_s": 20, "max_in_flight": 2},
        {"duration_s": 2.0, "drain_s": 0},
        0.25,
        keys=2,
    ),
    "interrupt with a drain": Case(
        {"pattern": "constant", "rate_per_s": 20, "max_in_flight": 1},
        {"duration_s": 5.0, "drain_s": 5},
        0.2,
        stop_at=1.03,
    ),
    "interrupt, drain cut short": Case(
        {"pattern": "constant", "rate_per_s": 20, "max_in_flight": 2},
        {"duration_s": 5.0, "drain_s": 5},
        0.7,
        stop_at=1.03,
        cut_at=1.2,
        keys=2,
    ),
    "interrupt, never answered, no cap": Case(
        {"pattern": "poisson", "rate_per_s": 30},
        {"duration_s": 5.0, "drain_s": 5},
        -1,  # hang
        stop_at=1.03,
        cut_at=1.5,
        expect_not_sent=False,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_every_arrival_has_exactly_one_record(name):
    c = CASES[name]
    sc = make_scenario(c.load, **c.run)
    at = []
    if c.stop_at is not None:
        at.append((c.stop_at, lambda e: e.interrupt("interrupted (test)")))
    if c.cut_at is not None:
        at.append((c.cut_at, lambda e: e.interrupt("interrupted (test)")))
    script = [HANG] if c.reply_s < 0 else json_reply(after_s=c.reply_s)
    run = run_scripted(sc, script, keys=TEST_KEYS[: c.keys], at=at)
    if c.load["pattern"] == "poisson":
        # Its draws interleave with the request mix's: count, and order, only.
        assert run.result.arrivals == len(run.records) > 20
        assert all(r.scheduled_s < c.stop_at for r in run.records)
    else:
        check_one_record_per_arrival(run, sc, until=c.stop_at)
    kinds = {r.transport_error for r in run.records}
    assert ("not_sent" in kinds) == c.expect_not_sent
    if c.stop_at is not None:
        # Nothing is sent once the operator stopped the run.
        assert all(s.t <= c.stop_at + EXACT for s in run.transport.sent)
        assert run.result.interrupted
        assert run.result.drain_cut == (c.cut_at is not None)
    if c.cut_at is not None:
        assert run.ended_at == approx(c.cut_at)
        assert "cancelled" in kinds


def test_an_interrupt_records_queued_arrivals_at_once_and_drains_the_sent_ones():
    sc = make_scenario(
        {
            "pattern": "burst",
            "burst_size": 6,
            "burst_period_s": 100,
            "phase_s": 0.1,
            "max_in_flight": 2,
        },
        duration_s=10.0,
        drain_s=30,
    )
    run = run_scripted(sc, json_reply(after_s=0.5), at=[(0.3, lambda e: e.interrupt("x"))])
    recs = sorted(run.records, key=lambda r: (r.send_s, r.request_id))
    assert [(r.status, r.transport_error) for r in recs] == [(200, None)] * 2 + [
        (0, "not_sent")
    ] * 4
    assert [r.end_s for r in recs] == approx([0.6, 0.6] + [0.3] * 4)  # drained; at the stop
    assert all(r.queued_s == approx(0.2) for r in recs[2:])
    assert run.ended_at == approx(0.6)
    check_one_record_per_arrival(run, sc)


def test_a_request_count_with_a_cap_keeps_one_record_per_counted_arrival():
    sc = make_scenario(
        {"pattern": "constant", "rate_per_s": 50, "max_in_flight": 1},
        duration_s=10.0,
        drain_s=0.2,
        max_requests=30,
    )
    run = run_scripted(sc, json_reply(after_s=0.1))
    assert run.result.stop_reason == "request count reached"
    assert len(run.records) == 30 == run.result.arrivals
    got = sorted(r.scheduled_s for r in run.records)
    assert got == approx(schedule(sc, "free-1")[:30])
    assert any(r.transport_error == "not_sent" for r in run.records)
