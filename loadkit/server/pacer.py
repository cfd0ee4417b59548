"""One wake-up source for every stream's token deadlines on an event loop: a heap of
(deadline, callback) and one timer that fires at the earliest deadline, rounded up to a
slot of ``SLOT_NS``; each wake-up runs every callback whose deadline has come, and none
before its deadline.

A loop timer per token costs a timer handle per token, and uvloop's timers count in
whole milliseconds from a loop clock read at the start of the loop's pass: a callback
asked for in 3.4 ms runs after 3 ms of that clock, up to ~1.5 ms before its deadline
(measured: 42 % of tokens went out early). On Linux the pacer's timer is a timerfd on
the ``perf_counter_ns`` clock (CLOCK_MONOTONIC) with an absolute expiry, watched by the
loop like a socket: exact to the slot on either loop. Elsewhere a loop timer of at least
a millisecond stands in (never early, since a wake-up before the deadline runs nothing).

A callback that schedules itself again while the pacer runs waits for the next wake-up,
even when its deadline has passed: a server behind schedule still reads its sockets
between two steps of a stream (one step per pass of the event loop)."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import heapq
import os
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

_NS = 1_000_000_000
# Wake-ups are rounded up to this grid: at most one per slot however many streams are
# due in it (at 1,000 streams of ITL 20 ms, 50 tokens fall in each millisecond), at the
# price of up to one slot of lateness.
SLOT_NS = 250_000

Clock = Callable[[], int]


class _Waker:
    """Calls ``wake`` once at or after an absolute ``perf_counter_ns`` time."""

    def arm(self, at_ns: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _LoopWaker(_Waker):
    """A loop timer of at least a millisecond (uvloop rounds shorter ones to nothing)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None], clock: Clock):
        self._loop, self._wake, self._clock = loop, wake, clock
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, at_ns: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(at_ns - self._clock(), 1_000_000)
        self._timer = self._loop.call_later(delay / _NS, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._wake()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _TimerfdWaker(_Waker):
    """A Linux timerfd on CLOCK_MONOTONIC (``perf_counter_ns``'s clock), absolute expiry,
    read by the loop as a file descriptor."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None]) -> None:
        self._loop, self._wake = loop, wake
        self._fd = _timerfd.create()
        try:
            loop.add_reader(self._fd, self._fire)
        except BaseException:
            os.close(self._fd)
            raise

    def arm(self, at_ns: int) -> None:
        _timerfd.set_abs(self._fd, max(at_ns, 1))  # 0 would disarm it

    def _fire(self) -> None:
        # Not read: the pacer re-arms (or closes) the timer at the end of every wake-up,
        # and setting a timerfd clears its expiry count (a read would be one more system
        # call per wake-up).
        self._wake()

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


class _Timerfd:
    """timerfd_create / timerfd_settime: from ``os`` (Python 3.13+) or libc."""

    _CLOCK_MONOTONIC = 1
    _TFD_TIMER_ABSTIME = 1
    _FLAGS = 0o4000 | 0o2000000  # TFD_NONBLOCK | TFD_CLOEXEC

    def __init__(self) -> None:
        # Python 3.13+ (looked up by name: the type stubs of older Pythons lack them)
        self._os_create: Any = getattr(os, "timerfd_create", None)
        self._os_settime: Any = getattr(os, "timerfd_settime_ns", None)
        self._os = self._os_create is not None and self._os_settime is not None
        self._settime: Any = None
        # struct itimerspec {interval: {sec, nsec}, value: {sec, nsec}}, filled in place:
        # a ctypes call costs half as much with its argument types declared and no
        # structure built per call (~1 µs here)
        self._spec = (ctypes.c_long * 4)()
        self._libc: ctypes.CDLL | None = None
        if not self._os and sys.platform == "linux":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
                self._settime = libc.timerfd_settime
                libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.timerfd_create.restype = ctypes.c_int
                self._libc = libc
            except (OSError, AttributeError):
                self._settime = None
            else:
                self._settime.argtypes = [
                    ctypes.c_int,
                    ctypes.c_int,
                    ctypes.c_void_p,
                    ctypes.c_void_p,
                ]
                self._settime.restype = ctypes.c_int
        self.available = self._os or self._settime is not None

    def create(self) -> int:
        if self._os:
            return int(self._os_create(time.CLOCK_MONOTONIC, flags=self._FLAGS))
        assert self._libc is not None
        fd = self._libc.timerfd_create(self._CLOCK_MONOTONIC, self._FLAGS)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return int(fd)

    def set_abs(self, fd: int, at_ns: int) -> None:
        """Expire once at ``at_ns`` on CLOCK_MONOTONIC (clears any expiry not read)."""
        if self._os:
            self._os_settime(fd, flags=self._TFD_TIMER_ABSTIME, initial=at_ns)
            return
        spec = self._spec
        spec[2], spec[3] = divmod(at_ns, _NS)
        if self._settime(fd, self._TFD_TIMER_ABSTIME, spec, None):
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))


_timerfd = _Timerfd()


class Pacer:
    """Runs callbacks at absolute ``perf_counter_ns`` deadlines, never before, from one
    wake-up per slot; each callback scheduled before a wake-up runs at most once in it.

    The timer (a timerfd or a loop timer) exists while something is scheduled: an idle
    pacer holds no file descriptor."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        slot_ns: int = SLOT_NS,
        clock: Clock = time.perf_counter_ns,
        timerfd: bool = True,
    ) -> None:
        self._loop = weakref.ref(loop)  # the registry below maps the loop to its pacer
        self._slot = max(1, slot_ns)
        self._clock = clock
        self._use_timerfd = timerfd and _timerfd.available and clock is time.perf_counter_ns
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 1  # tickets: the entries' order among equal deadlines
        self._cancelled: set[int] = set()
        self._waker: _Waker | None = None
        self._armed_at = 0  # 0: not armed
        self._waking = False
        self.wakeups = 0  # how many times the timer fired (for benchmarks and tests)

    @property
    def pending(self) -> int:
        """Callbacks scheduled and not run (nor cancelled) yet."""
        return len(self._heap) - len(self._cancelled)

    @property
    def timer_open(self) -> bool:
        """Whether the pacer holds its timer (and, on Linux, a file descriptor)."""
        return self._waker is not None

    def at(self, deadline_ns: int, callback: Callable[[], None]) -> int:
        """Run ``callback`` once at or after ``deadline_ns``; a ticket for ``cancel``."""
        seq = self._seq
        self._seq = seq + 1
        heapq.heappush(self._heap, (deadline_ns, seq, callback))
        if not self._waking:
            self._arm()
        return seq

    async def sleep_until(self, deadline_ns: int) -> None:
        """``asyncio.sleep`` to an absolute deadline, never waking before it (cancelled,
        its entry stays until its deadline and then does nothing)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self.at(deadline_ns, wake)
        await fut

    def cancel(self, ticket: int) -> None:
        """The callback of ``ticket``, scheduled and not run yet, will not run."""
        self._cancelled.add(ticket)
        if not self._waking:
            self._arm()

    def _arm(self) -> None:
        heap = self._heap
        cancelled = self._cancelled
        while heap and heap[0][1] in cancelled:
            cancelled.discard(heapq.heappop(heap)[1])
        if not heap:
            self._close()
            return
        slot = self._slot
        at = -(-heap[0][0] // slot) * slot  # the deadline rounded up to the slot grid
        if at == self._armed_at:
            return
        if self._waker is None:
            self._waker = self._new_waker()
        self._waker.arm(at)
        self._armed_at = at

    def _new_waker(self) -> _Waker:
        loop = self._loop()
        if loop is None:
            raise RuntimeError("the pacer's event loop is gone")
        if self._use_timerfd:
            try:
                return _TimerfdWaker(loop, self.run_due)
            except (OSError, NotImplementedError, RuntimeError):
                self._use_timerfd = False
        return _LoopWaker(loop, self.run_due, self._clock)

    def _close(self) -> None:
        self._armed_at = 0
        if self._waker is not None:
            self._waker.close()
            self._waker = None

    def run_due(self) -> None:
        """Run every callback due now that was scheduled before this wake-up."""
        self.wakeups += 1
        self._armed_at = 0
        self._waking = True
        heap = self._heap
        cancelled = self._cancelled
        clock = self._clock
        limit = self._seq  # entries from here on were scheduled during this wake-up
        later: list[tuple[int, int, Callable[[], None]]] = []
        pop = heapq.heappop
        try:
            now = clock()
            while heap:
                top = heap[0]
                if top[0] > now:
                    now = clock()  # what came due while the others ran runs now too
                    if top[0] > now:
                        break
                pop(heap)
                seq = top[1]
                if seq >= limit:  # rescheduled while behind: the next pass of the loop
                    later.append(top)
                elif cancelled and seq in cancelled:
                    cancelled.discard(seq)
                else:
                    top[2]()
        finally:
            for e in later:
                heapq.heappush(heap, e)
            self._waking = False
            self._arm()


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer] = weakref.WeakKeyDictionary()


def pacer() -> Pacer:
    """The running loop's pacer (one per loop, created on first use)."""
    loop = asyncio.get_running_loop()
    p = _pacers.get(loop)
    if p is None:
        p = _pacers[loop] = Pacer(loop)
    return p
