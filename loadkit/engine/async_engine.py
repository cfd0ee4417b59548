"""The asyncio engine: exact open-loop arrivals per key, closed-loop users per key, bursts.

One scheduler per (key, load phase). A late send is recorded as late (``scheduled_s`` is
kept), never re-timed; arrivals are never dropped (a client-side cap makes them wait, and the
wait is recorded in ``queued_s``). Every request, whatever happens to it, yields one record
through :class:`loadkit.trace.RequestTrace`, written as it finishes. Requests go out through
a :class:`~loadkit.engine.transport.Transport` (aiohttp unless another is given).
"""

from __future__ import annotations

import asyncio
import gc
import random
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from loadkit import records as R
from loadkit.arrivals import arrivals
from loadkit.engine.aiohttp_transport import AiohttpTransport, ClientConfig
from loadkit.engine.transport import (
    Incomplete,
    Refused,
    Reset,
    TimedOut,
    Transport,
    TransportError,
)
from loadkit.payloads import MixPicker, PreparedRequest, prepare
from loadkit.records import RecordWriter, RequestRecord
from loadkit.runmeta import Clock
from loadkit.scenario import Key, LoadSpec, Scenario, plan
from loadkit.trace import RequestInfo, RequestTrace

REQUEST_ID_HEADER = "x-loadkit-request-id"

# The record's name for each way a transport can fail (anything else is "other").
_ERROR_KINDS: dict[type[TransportError], str] = {
    TimedOut: R.TIMEOUT,
    Refused: R.REFUSED,
    Reset: R.RESET,
    Incomplete: R.INCOMPLETE_STREAM,
}


def error_kind(exc: TransportError) -> str:
    """The record's ``transport_error`` for a transport's failure."""
    for cls in type(exc).__mro__:
        kind = _ERROR_KINDS.get(cls)
        if kind is not None:
            return kind
    return R.OTHER


class RunClock(Protocol):
    """The run's clock (``runmeta.Clock``; tests pass one on a virtual-time loop)."""

    def now(self) -> float: ...


class RecordSink(Protocol):
    """Where finished records go (``records.RecordWriter``; tests keep them in memory)."""

    @property
    def count(self) -> int: ...

    def write(self, rec: RequestRecord) -> None: ...


# The selector sleeps in whole milliseconds (rounded up), so a plain sleep wakes up to 1 ms
# late. Wake a little early, then yield to the loop (which keeps serving I/O) until due.
WAKE_EARLY_S = 0.0012


@dataclass
class EngineResult:
    """How a run went, for run.json and the progress line."""

    records: int = 0
    interrupted: bool = False
    stop_reason: str = ""
    statuses: Counter[int] = field(default_factory=Counter)
    cancelled: int = 0


def client_config(scenario: Scenario) -> ClientConfig:
    """The aiohttp transport's settings for a scenario's target."""
    t = scenario.target
    return ClientConfig(t.connect_timeout_s, t.request_timeout_s, t.read_timeout_s)


class AsyncEngine:
    def __init__(
        self,
        scenario: Scenario,
        keys: list[Key],
        base_url: str,
        writer: RecordSink,
        clock: RunClock,
        run_id: str,
        worker: str = "async-0",
        progress: bool = True,
        transport: Transport | None = None,
        wake_early_s: float = WAKE_EARLY_S,
    ) -> None:
        """``wake_early_s``: how long before a scheduled send to stop sleeping and spin
        (0 on a loop whose timers are exact, such as the tests' virtual-time loop)."""
        self.scenario = scenario
        self.keys = keys
        self.base_url = base_url.rstrip("/")
        self.writer = writer
        self.clock = clock
        self.run_id = run_id
        self.worker = worker
        self.transport = transport or AiohttpTransport(client_config(scenario))
        self.wake_early_s = wake_early_s
        self.progress = progress
        self.result = EngineResult()
        self._seq = 0
        self._sent = 0
        self._inflight: set[asyncio.Future[Any]] = set()  # open-loop requests, users
        self._open = 0  # HTTP requests under way
        self._stop = asyncio.Event()
        self._interrupted = asyncio.Event()  # no drain, or the rest of it cut short
        self._auth = {k.label: f"Bearer {k.secret}" for k in keys}

    # -- public -----------------------------------------------------------------------

    async def run(self) -> EngineResult:
        loop = asyncio.get_running_loop()
        installed = self._install_sigint(loop)
        try:
            await self.transport.open()
            try:
                await self._run_load()
            finally:
                await self.transport.close()
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGINT)
        self.result.interrupted = self._interrupted.is_set()
        self.result.records = self.writer.count
        return self.result

    def stop(self, reason: str = "stopped", interrupt: bool = False) -> None:
        """End the run: in-flight requests get the drain, or none if ``interrupt``. The
        first reason is kept, unless an interrupt cuts a drain short."""
        if not self._stop.is_set() or (interrupt and not self._interrupted.is_set()):
            self.result.stop_reason = reason
        if interrupt:
            self._interrupted.set()
        self._stop.set()

    # -- scheduling -------------------------------------------------------------------

    async def _run_load(self) -> None:
        """Every (key, phase) driven until the end, then the drain."""
        s = self.scenario
        drivers = [
            asyncio.ensure_future(self._drive(key, load, i))
            for i, (key, load) in enumerate(plan(s, self.keys))
        ]
        progress = asyncio.ensure_future(self._progress()) if self.progress else None
        try:
            await self._wait_end(drivers)
        finally:
            for d in drivers:
                d.cancel()
            await asyncio.gather(*drivers, return_exceptions=True)
            await self._drain(0.0 if self._interrupted.is_set() else s.drain_s)
            if progress:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
                self._print_progress(final=True)

    async def _wait_end(self, drivers: list[asyncio.Task[None]]) -> None:
        s = self.scenario
        loop = asyncio.get_running_loop()
        stop_wait = asyncio.ensure_future(self._stop.wait())
        deadline = (
            None if s.duration_s == float("inf") else loop.time() + s.duration_s - self.clock.now()
        )
        pending: set[asyncio.Future[Any]] = {stop_wait, *drivers}
        try:
            while True:
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if stop_wait in done:
                    return
                if not done:
                    self.stop("duration reached")
                    return
                if pending == {stop_wait}:
                    self.stop(
                        "request count reached"
                        if s.max_requests and self._sent >= s.max_requests
                        else "schedule complete"
                    )
                    return
        finally:
            stop_wait.cancel()

    async def _drive(self, key: Key, load: LoadSpec, index: int) -> None:
        rng = random.Random(f"{self.scenario.seed}/{index}/{key.label}")
        picker = MixPicker(load.mix)
        sem = asyncio.Semaphore(load.max_in_flight) if load.max_in_flight else None
        if load.pattern == "closed":
            users = [
                asyncio.ensure_future(self._user(key, load, rng, picker, sem, u))
                for u in range(load.concurrency)
            ]
            # Users are tracked like open requests: at the end they finish the request they
            # are in (within the drain), cancelling this driver does not cancel them.
            for u in users:
                self._inflight.add(u)
                u.add_done_callback(self._inflight.discard)
            await asyncio.wait(users)
            return
        loop = asyncio.get_running_loop()
        origin = loop.time() - self.clock.now()  # loop.time() of the run's t=0
        for t in arrivals(load, self.scenario.duration_s, rng):
            await _sleep_until(loop, origin + t, self.wake_early_s)
            if self._stop.is_set() or not self._take_slot():
                return
            self._spawn(key, load, rng, picker, sem, t)

    async def _user(
        self,
        key: Key,
        load: LoadSpec,
        rng: random.Random,
        picker: MixPicker,
        sem: asyncio.Semaphore | None,
        user: int,
    ) -> None:
        # Users start spread evenly over min(1 s, 10 ms per user), not all at once.
        ramp = min(1.0, 0.01 * load.concurrency)
        start = load.start_s + ramp * user / load.concurrency
        await asyncio.sleep(max(0.0, start - self.clock.now()))
        end = load.active_until(self.scenario.duration_s)
        while not self._stop.is_set() and self.clock.now() < end and self._take_slot():
            rec = await self._request(key, self._prepare(load, rng, picker), sem, None, 1)
            pause = load.think_s
            if rec is not None:
                pause = load.pause_after(rec.status, rec.retry_after_s, rec.transport_error)
            if pause:
                await asyncio.sleep(pause)

    def _take_slot(self) -> bool:
        cap = self.scenario.max_requests
        if cap and self._sent >= cap:
            self.stop("request count reached")
            return False
        self._sent += 1
        return True

    def _spawn(
        self,
        key: Key,
        load: LoadSpec,
        rng: random.Random,
        picker: MixPicker,
        sem: asyncio.Semaphore | None,
        scheduled: float | None,
    ) -> asyncio.Task[RequestRecord | None]:
        req = self._prepare(load, rng, picker)
        task = asyncio.ensure_future(self._request(key, req, sem, scheduled, 1))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return task

    def _prepare(self, load: LoadSpec, rng: random.Random, picker: MixPicker) -> PreparedRequest:
        return prepare(
            picker.pick(rng),
            load.model or self.scenario.target.model,
            load.prompt_tokens.sample(rng),
            load.max_tokens.sample(rng),
            rng,
        )

    async def _drain(self, grace: float) -> None:
        if self._inflight and grace > 0:
            finished = asyncio.ensure_future(asyncio.wait(set(self._inflight), timeout=grace))
            interrupted = asyncio.ensure_future(self._interrupted.wait())
            await asyncio.wait({finished, interrupted}, return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
            interrupted.cancel()
            await asyncio.gather(finished, interrupted, return_exceptions=True)
        pending = set(self._inflight)
        for t in pending:
            t.cancel()
        if pending:
            self.result.cancelled += len(pending)
            await asyncio.gather(*pending, return_exceptions=True)

    # -- one request ------------------------------------------------------------------

    async def _request(
        self,
        key: Key,
        req: PreparedRequest,
        sem: asyncio.Semaphore | None,
        scheduled: float | None,
        attempt: int,
    ) -> RequestRecord | None:
        """Send one request (and its retries); returns the last attempt's record."""
        clock = self.clock
        self._seq += 1
        info = RequestInfo(
            self.run_id,
            "async",
            self.worker,
            f"{self.worker}-{self._seq}",
            key.tier,
            key.label,
            req.endpoint,
            req.stream,
            req.model,
            attempt,
            scheduled,
        )
        queued = 0.0
        if sem is not None:
            q0 = clock.now()
            # Cancelled here (the run ended while it queued), a request leaves no record: it
            # was never sent, and no record kind says so yet ("cancelled" reads as "the
            # server may have admitted it" in the verdicts).
            await sem.acquire()
            queued = clock.now() - q0
        try:
            rec = await self._exchange(key, req, info, queued)
        finally:
            if sem is not None:
                sem.release()
        self.writer.write(rec)
        self.result.statuses[rec.status] += 1
        s = self.scenario
        # A retry belongs to its request: it may run into the drain, not past an interrupt.
        if (
            s.honour_retry_after
            and rec.status == 429
            and attempt <= s.max_retries
            and not self._interrupted.is_set()
        ):
            delay = rec.retry_after_s if rec.retry_after_s is not None else 1.0
            await asyncio.sleep(delay)
            if not self._interrupted.is_set():
                return await self._request(key, req, sem, clock.now(), attempt + 1)
        return rec

    def _url(self, req: PreparedRequest) -> str:
        return self.base_url + req.path

    def _headers(self, key: Key, req: PreparedRequest, info: RequestInfo) -> dict[str, str]:
        """Everything sent besides the body: the one place that knows how a key is
        presented and how a request is labelled."""
        headers = {"Authorization": self._auth[key.label], REQUEST_ID_HEADER: info.request_id}
        if req.body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    async def _exchange(
        self, key: Key, req: PreparedRequest, info: RequestInfo, queued: float
    ) -> RequestRecord:
        clock = self.clock
        url = self._url(req)
        headers = self._headers(key, req, info)
        trace = RequestTrace(info, clock.now(), queued)
        self._open += 1
        try:
            async with self.transport.send(req.method, url, headers, req.body) as resp:
                trace.response(clock.now(), resp.status, resp.headers)
                read = resp.read
                while chunk := await read():
                    trace.data(clock.now(), chunk)
                return trace.finish(clock.now())
        except asyncio.CancelledError:
            self.writer.write(trace.fail(clock.now(), R.CANCELLED))
            raise
        except TransportError as exc:
            return trace.fail(clock.now(), error_kind(exc))
        finally:
            self._open -= 1

    # -- progress and signals ---------------------------------------------------------

    def _install_sigint(self, loop: asyncio.AbstractEventLoop) -> bool:
        try:
            loop.add_signal_handler(signal.SIGINT, self.stop, "interrupted (Ctrl-C)", True)
        except (NotImplementedError, RuntimeError, ValueError):
            return False  # not the main thread (tests), or no signals on this platform
        return True

    async def _progress(self) -> None:
        period = 1.0 if sys.stderr.isatty() else 5.0
        while True:
            await asyncio.sleep(period)
            self._print_progress()

    def _print_progress(self, final: bool = False) -> None:
        st = self.result.statuses
        ok = sum(n for s, n in st.items() if 200 <= s < 300)
        limited = st.get(429, 0)
        other = sum(st.values()) - ok - limited
        line = (
            f"[{self.clock.now():7.1f}s] sent {self._sent}  done {self.writer.count}  "
            f"in flight {self._open}  2xx {ok}  429 {limited}  other {other}"
        )
        end = "\n" if final or not sys.stderr.isatty() else "\r"
        print(line, end=end, file=sys.stderr, flush=True)


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float, early: float) -> None:
    delay = when - loop.time()
    if delay > early:
        await asyncio.sleep(delay - early)
    while loop.time() < when:
        await asyncio.sleep(0)


def run_engine(
    scenario: Scenario,
    keys: list[Key],
    base_url: str,
    writer: RecordWriter,
    clock: Clock,
    run_id: str,
    progress: bool = True,
) -> EngineResult:
    """Run the asyncio engine to completion in a fresh event loop."""
    engine = AsyncEngine(scenario, keys, base_url, writer, clock, run_id, progress=progress)
    # Records and traces are acyclic: fewer, later collections keep GC pauses out of the
    # timings without letting memory grow.
    gc.freeze()
    old = gc.get_threshold()
    gc.set_threshold(50_000, 20, 50)
    try:
        return asyncio.run(engine.run())
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()
