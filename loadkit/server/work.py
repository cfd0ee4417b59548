"""Cooperative work: pure code that may take long is written as a generator that yields
``None`` at points where it may pause and returns its result. ``drive`` runs one to the
end at once (tests, small jobs); ``WorkLane.run`` runs it on the event loop in slices of
about a millisecond, one request's slice at a time, so whatever one request asks for,
every other request is answered between two slices."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import TypeVar

T = TypeVar("T")

Work = Generator[None, None, T]

SLICE_NS = 500_000


def drive(work: Work[T]) -> T:
    """Run ``work`` to its end and return its result."""
    while True:
        try:
            next(work)
        except StopIteration as done:
            result: T = done.value
            return result


class WorkLane:
    """Heavy work of all requests goes through one lane, one slice per turn: a holder
    runs for at most ``slice_ns``, then keeps the lane through one pass of the event
    loop, so everything else that is ready (every light request, every socket) runs
    before the next heavy slice. Turns go round-robin (the lock is FIFO)."""

    def __init__(self, slice_ns: int = SLICE_NS) -> None:
        self.slice_ns = slice_ns
        self._lock = asyncio.Lock()
        self.slices = 0  # slices handed out (a measure of heavy work)

    async def run(self, work: Work[T]) -> T:
        clock = time.perf_counter_ns
        while True:
            async with self._lock:
                self.slices += 1
                until = clock() + self.slice_ns
                try:
                    next(work)  # at least one unit per turn
                    while clock() < until:
                        next(work)
                except StopIteration as done:
                    result: T = done.value
                    return result
                finally:
                    # Still holding the lane: the others run before any next slice.
                    await asyncio.sleep(0)

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run one indivisible piece of work (a JSON parse, say) in its turn."""
        async with self._lock:
            self.slices += 1
            try:
                return fn(*args)
            finally:
                await asyncio.sleep(0)
