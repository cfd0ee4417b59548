"""The pacer that wakes every stream's pump: no callback before its deadline, each one
exactly once, in deadline order, none starved while others are behind schedule; and on
real event loops (asyncio's, uvloop's; its timerfd and its loop-timer stand-in) the same,
with its file descriptor gone once idle."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from loadkit.server.pacer import Pacer, pacer
from tests.server.conftest import loop_factories


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def loop() -> Any:
    lp = asyncio.new_event_loop()  # only for the pacer's stand-in timer; never run here
    yield lp
    lp.close()


def test_nothing_runs_before_its_deadline_and_everything_runs_once(loop: Any) -> None:
    clock = FakeClock()
    p = Pacer(loop, slot_ns=250_000, clock=clock)
    rng = random.Random(7)
    ran: dict[int, list[int]] = {}
    deadlines = {}
    for i in range(500):
        d = clock.now + rng.randrange(50_000_000)
        deadlines[i] = d
        p.at(d, lambda i=i: ran.setdefault(i, []).append(clock.now))
    previous = clock.now
    while p.pending:
        clock.now += rng.randrange(1, 400_000)
        p.run_due()
        for i, times in ran.items():
            # a callback runs at the first pass at or after its deadline, not later
            if times[0] == clock.now:
                assert deadlines[i] <= clock.now, f"callback {i} ran early"
                assert deadlines[i] > previous, f"callback {i} skipped a pass it was due in"
        previous = clock.now
    assert sorted(ran) == list(range(500))
    assert all(len(t) == 1 for t in ran.values()), "a callback ran twice"


def test_due_callbacks_run_in_deadline_order_ties_first_come_first(loop: Any) -> None:
    clock = FakeClock()
    p = Pacer(loop, clock=clock)
    order: list[str] = []
    t = clock.now
    for name, d in [("c", t + 30), ("a", t + 10), ("b1", t + 20), ("b2", t + 20), ("z", t + 99)]:
        p.at(d, lambda name=name: order.append(name))
    clock.now = t + 50
    p.run_due()
    assert order == ["a", "b1", "b2", "c"]
    assert p.pending == 1


def test_a_callback_rescheduled_while_late_waits_for_the_next_pass(loop: Any) -> None:
    """100 streams all far behind schedule: in each pass every one writes once, none
    twice, none skipped (the loop reads its sockets between two passes)."""
    clock = FakeClock()
    p = Pacer(loop, clock=clock)
    count = [0] * 100

    def make(i: int) -> Callable[[], None]:
        def step() -> None:
            count[i] += 1
            if count[i] < 20:  # bounded, should the pacer run it again and again
                p.at(clock.now - 1_000_000, step)  # still behind: due again at once

        return step

    for i in range(100):
        p.at(clock.now - 5_000_000, make(i))
    for n in range(1, 11):
        clock.now += 1
        p.run_due()
        assert count == [n] * 100


def test_a_cancelled_callback_never_runs(loop: Any) -> None:
    clock = FakeClock()
    p = Pacer(loop, clock=clock)
    ran: list[int] = []
    tickets = [p.at(clock.now + 10 * i, lambda i=i: ran.append(i)) for i in range(10)]
    p.cancel(tickets[3])
    p.cancel(tickets[0])
    assert p.pending == 8
    clock.now += 1_000
    p.run_due()
    assert ran == [1, 2, 4, 5, 6, 7, 8, 9]
    assert p.pending == 0 and not p.timer_open


def _run(factory: Callable[[], Any], main: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=factory) as r:
        return r.run(main)


@pytest.mark.parametrize("factory", loop_factories())
@pytest.mark.parametrize("timerfd", [True, False], ids=["timerfd", "loop-timer"])
def test_on_a_running_loop_every_callback_runs_once_never_early(
    factory: Callable[[], Any], timerfd: bool
) -> None:
    """Streams of 40 steps 2 ms apart, phases scattered: uvloop's own timers would hand
    a good share of them over up to ~1.5 ms early."""

    async def main() -> tuple[list[int], int, int, bool]:
        p = Pacer(asyncio.get_running_loop(), timerfd=timerfd)
        fds_before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
        early: list[int] = []
        steps = [0] * 50
        done = asyncio.get_running_loop().create_future()
        rng = random.Random(3)
        t0 = time.perf_counter_ns()

        def make(i: int) -> Callable[[], None]:
            deadline = t0 + rng.randrange(2_000_000)

            def step() -> None:
                nonlocal deadline
                if time.perf_counter_ns() < deadline:
                    early.append(i)
                steps[i] += 1
                if steps[i] < 40:
                    deadline += 2_000_000
                    p.at(deadline, step)
                elif all(s == 40 for s in steps) and not done.done():
                    done.set_result(None)

            p.at(deadline, step)
            return step

        for i in range(50):
            make(i)
        open_while_busy = p.timer_open
        await asyncio.wait_for(done, 10)
        fds_after = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
        assert open_while_busy
        return early, sum(steps), fds_after - fds_before, p.timer_open

    early, total, fds, still_open = _run(factory, main())
    assert early == [], f"{len(early)} steps ran before their deadline"
    assert total == 50 * 40
    assert not still_open and fds <= 0, "an idle pacer keeps its timer"


def test_one_pacer_per_loop() -> None:
    async def two() -> tuple[Pacer, Pacer]:
        return pacer(), pacer()

    a, b = asyncio.run(two())
    c, _ = asyncio.run(two())
    assert a is b and a is not c
