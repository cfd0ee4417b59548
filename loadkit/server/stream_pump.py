"""The token pump: a stream's steps written from callbacks of the loop's pacer, for the
common stream (timed, no fault due, each step cheap enough to render inline).

A coroutine that sleeps to each deadline costs, per token, a future, a task wake-up and
a resume through every frame between aiohttp's request handler and the stream, and
aiohttp's write adds three more coroutines before the transport. With hundreds of
streams that is most of the server's CPU per token; the pump's callback renders the step
and hands it to the transport itself (with aiohttp's HTTP/1.1 chunk framing), so a token
costs a place in the pacer's heap and one write. The handler awaits the pump once, and
again only when the socket pushes back (it drains, then restarts the pump).

The pump starts after the stream's first write went through aiohttp (the response head
is then on the wire), and keeps what the coroutine path keeps: absolute deadlines,
lateness measured at the hand-off, one write per pass of the event loop when late. A
late stream's write carries every step already due (up to ``MAX_BATCH``): a server that
fell behind catches up with fewer writes instead of falling further behind.

Every pump on a loop is woken by the loop's one ``Pacer`` (``loadkit.server.pacer``): one
timer wake-up serves every stream due in its slot, no timer handle per token, and no
token leaves before its deadline on either event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp.abc import AbstractStreamWriter

from loadkit.server.pacer import pacer
from loadkit.server.responses import LiveStream
from loadkit.server.stats import LatenessRing

# Above this many bytes waiting in the transport the pump stops for a drain (aiohttp's
# own write drains at the same size).
DRAIN_BYTES = 65_536

# Steps a late stream sends in one write at most (a stream 1 s behind at ITL 20 ms owes 50).
MAX_BATCH = 16

DONE = "done"
DRAIN = "drain"


class Pump:
    """Write ``live``'s steps at ``deadline``, then each ``next_itl()`` later, until the
    stream is done (``run`` returns ``DONE``) or the socket pushes back (``DRAIN``: drain,
    then a new pump from ``deadline``). ``on_written(tokens)`` follows each hand-off."""

    def __init__(
        self,
        live: LiveStream,
        transport: asyncio.Transport,
        writer: AbstractStreamWriter,
        deadline: int,
        next_itl: Callable[[], int],
        lateness: LatenessRing,
        on_written: Callable[[int], None],
    ) -> None:
        self.live = live
        self.deadline = deadline  # the next step's, on the perf_counter_ns clock
        self._next_itl = next_itl
        self._transport = transport
        self._writer = writer
        self._chunked = bool(getattr(writer, "chunked", False))
        self._lateness = lateness
        self._on_written = on_written
        self._loop = asyncio.get_running_loop()
        self._pacer = pacer()
        self._fut: asyncio.Future[str] | None = None
        self._ticket: int | None = None
        self._tick_cb = self._tick

    async def run(self) -> str:
        """Pump until done (``DONE``) or pushed back (``DRAIN``); raises
        ``ConnectionError`` when the client is gone."""
        self._fut = self._loop.create_future()
        self._schedule()
        try:
            return await self._fut
        finally:
            self.cancel()

    def cancel(self) -> None:
        if self._ticket is not None:
            self._pacer.cancel(self._ticket)
            self._ticket = None

    def _schedule(self) -> None:
        # late or not: the pacer runs it at the next wake-up at or after the deadline
        self._ticket = self._pacer.at(self.deadline, self._tick_cb)

    def _tick(self) -> None:
        self._ticket = None
        fut = self._fut
        if fut is None or fut.done():
            return
        try:
            t = self._transport
            if t.is_closing():
                raise ConnectionResetError("the client closed the connection")
            live = self.live
            data, tokens = live.step_bytes()
            due = self.deadline
            self.deadline = deadline = due + self._next_itl()
            now = time.perf_counter_ns()
            if deadline > now or live.done:
                self._lateness.add(now - due)
            else:
                # Behind schedule: the steps already due leave in the same write (fewer
                # writes while catching up), each counted late from its own deadline.
                deadlines = [due]
                parts = [data]
                while True:
                    more, n = live.step_bytes()
                    parts.append(more)
                    tokens += n
                    deadlines.append(deadline)
                    self.deadline = deadline = deadline + self._next_itl()
                    if live.done or len(deadlines) >= MAX_BATCH:
                        break
                    if deadline > time.perf_counter_ns():
                        break
                data = b"".join(parts)
                now = time.perf_counter_ns()
                for d in deadlines:
                    self._lateness.add(now - d)
            if self._chunked:
                data = b"%x\r\n%b\r\n" % (len(data), data)
            t.write(data)
            # aiohttp's count of bytes written: a cut and the access log read it
            self._writer.output_size += len(data)
            self._on_written(tokens)
            if live.done:
                fut.set_result(DONE)
            elif t.get_write_buffer_size() > DRAIN_BYTES:
                fut.set_result(DRAIN)
            else:
                self._ticket = self._pacer.at(self.deadline, self._tick_cb)
        except Exception as e:  # to the handler, which owns the response
            fut.set_exception(e)
