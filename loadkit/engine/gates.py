"""Two waiting primitives the asyncio engine needs and asyncio lacks: a client-side cap on
requests in flight that can be closed (every waiter answered at once: "you will not be
sent"), and a one-way latch that can be awaited with a timeout without a task per wait."""

from __future__ import annotations

import asyncio
from collections import deque


class Slots:
    """``max_in_flight`` slots, handed out first come, first served. ``acquire`` returns
    True once a slot is held (give it back with ``release``), or False if the gate was
    closed first: a run that stops sending closes it, and each waiting arrival then records
    at once that it was never sent, instead of waiting to be cancelled at the drain's end."""

    __slots__ = ("_free", "_waiters", "_closed")

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def acquire(self) -> bool:
        if self._closed:
            return False
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            # Handed a slot in the same loop step as the cancel: pass it on, or it is lost
            # for good. (A cancelled waiter still in the queue is skipped by release.)
            if fut.done() and not fut.cancelled() and fut.result():
                self.release()
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                return
        self._free += 1

    def close(self) -> None:
        """No slot is handed out any more: every waiter, now and later, gets False."""
        self._closed = True
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(False)


class Latch:
    """A flag that is set once and never cleared, and that can be awaited (with a timeout)
    by any number of waiters sharing one future: closed-loop users pause on it after every
    request, where ``asyncio.wait_for(event.wait(), t)`` would make a task each time."""

    __slots__ = ("_set", "_fut")

    def __init__(self) -> None:
        self._set = False
        self._fut: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(None)

    def future(self) -> asyncio.Future[None]:
        """Done once the latch is set (made on first use, on the running loop). Waiting on
        it never cancels it."""
        if self._fut is None:
            self._fut = asyncio.get_running_loop().create_future()
            if self._set:
                self._fut.set_result(None)
        return self._fut

    async def wait(self, timeout: float | None = None) -> bool:
        """Until the latch is set or ``timeout`` seconds have passed; True if it is set."""
        if not self._set and (timeout is None or timeout > 0):
            await asyncio.wait((self.future(),), timeout=timeout)
        return self._set
