"""The asyncio engine: exact open-loop arrivals per key, closed-loop users per key, bursts.

One scheduler per (key, load phase). A late send is recorded as late (``scheduled_s`` is
kept), never re-timed; arrivals are never dropped (a client-side cap makes them wait, and the
wait is recorded in ``queued_s``). Every arrival, whatever happens to it, yields exactly one
record through :class:`loadkit.trace.RequestTrace`, written as it finishes — one that was
still waiting for a client-side slot when the run stopped included (``not_sent``).
Requests go out through a :class:`~loadkit.engine.transport.Transport` (loadkit's own
HTTP/1.1 client, or aiohttp's as ``[target] http_client`` says), addressed by the
target's :class:`~loadkit.api.TargetApi`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from loadkit import records as R
from loadkit.api import TargetApi
from loadkit.arrivals import arrivals
from loadkit.engine import stop_signals
from loadkit.engine.aiohttp_transport import AiohttpTransport
from loadkit.engine.gates import Latch, Slots
from loadkit.engine.http1_transport import Http1Transport
from loadkit.engine.transport import (
    ClientConfig,
    Incomplete,
    Refused,
    Reset,
    TimedOut,
    Transport,
    TransportError,
)
from loadkit.outcomes import FailureWatch, classify
from loadkit.payloads import MixPicker, PreparedRequest, prepare
from loadkit.records import RecordWriter, RequestRecord
from loadkit.runmeta import Clock
from loadkit.scenario import Key, LoadSpec, Scenario, plan
from loadkit.trace import DEFAULT_LIMITS, RequestInfo, RequestTrace, TraceLimits

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
    """How a run went, for run.json and the progress line.

    Every arrival (a scheduled open-loop send, or a closed-loop user's next request) has
    exactly one first-attempt record, so ``records == sent + not_sent`` and ``arrivals``
    equals the records with ``attempt == 1``.
    """

    records: int = 0
    interrupted: bool = False  # a signal (or ``interrupt``) ended the run early
    drain_cut: bool = False  # ... and the drain was skipped or cut short
    stop_reason: str = ""
    statuses: Counter[int] = field(default_factory=Counter)
    arrivals: int = 0  # arrivals taken (first attempts), sent or not
    sent: int = 0  # requests handed to the transport, retries included
    not_sent: int = 0  # arrivals still waiting for a client-side slot when the run stopped
    cancelled: int = 0  # requests open when the drain ended (recorded "cancelled")
    in_flight: int = 0  # requests sent and unanswered at the moment the run stopped
    queued: int = 0  # arrivals waiting for a client-side slot at that moment
    # Exceptions from inside the engine (a bug, never the target's doing), by class name;
    # each such request was recorded as transport error "other" and its user went on.
    engine_errors: Counter[str] = field(default_factory=Counter)


def client_config(scenario: Scenario) -> ClientConfig:
    """The transport's settings for a scenario's target."""
    t = scenario.target
    return ClientConfig(t.connect_timeout_s, t.request_timeout_s, t.read_timeout_s)


def make_transport(scenario: Scenario) -> Transport:
    """The HTTP client the scenario asks for (``[target] http_client``): loadkit's own
    HTTP/1.1 client unless it names aiohttp."""
    config = client_config(scenario)
    if scenario.target.http_client == "aiohttp":
        return AiohttpTransport(config)
    return Http1Transport(config)


@dataclass(slots=True)
class _User:
    """A closed-loop user's state between its requests."""

    load: LoadSpec
    # Failed requests in a row, the last one included: answers that are neither a 2xx nor
    # a 429, or none. A 429 has its own pause (Retry-After) and shows a working target, so
    # it ends a streak: a limiter under test must not stretch the next fault's backoff.
    failures: int = 0


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
        api: TargetApi | None = None,
        handle_signals: bool = True,
        trace_limits: TraceLimits = DEFAULT_LIMITS,
        watch: FailureWatch | None = None,
        pairs: Sequence[tuple[int, Key, LoadSpec]] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        """``wake_early_s``: how long before a scheduled send to stop sleeping and spin
        (0 on a loop whose timers are exact, such as the tests' virtual-time loop).
        ``api``: the target's layout and auth style (None: the scenario's, with
        ``${NAME}`` in header values read from the environment). ``handle_signals``:
        SIGINT, SIGTERM and SIGHUP stop the run while it lasts (when on the main thread).
        ``watch``: decides when a target that fails everything ends the run.
        ``pairs``: the (plan index, key, load phase) pairs this engine drives, when it
        drives only part of the run's plan (one worker of several); None: the whole plan.
        ``on_start``: called once the transport is open, just before the load begins (the
        run re-anchors its t=0 there)."""
        self.scenario = scenario
        self.keys = keys
        self.base_url = base_url.rstrip("/")
        self.writer = writer
        self.clock = clock
        self.run_id = run_id
        self.worker = worker
        self.transport = transport or make_transport(scenario)
        self.wake_early_s = wake_early_s
        self.progress = progress
        self.api = api if api is not None else scenario.target.target_api(os.environ)
        self.handle_signals = handle_signals
        self.trace_limits = trace_limits
        self.watch = watch if watch is not None else FailureWatch()
        self.pairs = pairs
        self.on_start = on_start
        self.result = EngineResult()
        self._seq = 0
        self._inflight: set[asyncio.Future[Any]] = set()  # open-loop requests, users
        self._open = 0  # HTTP requests under way
        self._queued = 0  # arrivals waiting for a client-side slot
        self._slots: list[Slots] = []
        self._stop = Latch()  # no new arrivals; the drain begins
        self._hold = Latch()  # nothing more is sent: queued arrivals and retries neither
        self._cut = Latch()  # no drain, or the rest of it cut short
        # Every static header of each key (auth in the target's style, extra headers),
        # built once: the secret is never formatted again.
        self._key_headers = {k.label: self.api.headers(k.secret) for k in keys}

    # -- public -----------------------------------------------------------------------

    async def run(self) -> EngineResult:
        loop = asyncio.get_running_loop()
        # SIGINT, SIGTERM and SIGHUP all mean "stop sending, drain, keep every record"; a
        # second one of any cuts the drain short.
        installed = stop_signals.install(loop, self._on_signal) if self.handle_signals else []
        try:
            await self.transport.open()
            try:
                if self.on_start is not None:
                    self.on_start()
                await self._run_load()
            finally:
                await self.transport.close()
        finally:
            stop_signals.remove(loop, installed)
        self.result.records = self.writer.count
        return self.result

    def stop(self, reason: str = "stopped", *, hold: bool = False) -> None:
        """End the run: no new arrivals; requests in flight get the drain. Arrivals still
        waiting for a client-side slot are sent within the drain (they belong to the
        schedule), unless ``hold``: then nothing more is sent. The first reason is kept."""
        r = self.result
        if not self._stop.is_set():
            r.stop_reason = reason
            r.in_flight = self._open
            r.queued = self._queued
        if hold:
            self._hold_sends()
        self._stop.set()

    def interrupt(self, reason: str, *, drain: bool = True) -> None:
        """The operator ends the run (a signal): stop sending, then the drain unless
        ``drain`` is False. A second interrupt cuts the drain short. An interrupt in the
        drain of a run that had ended otherwise is added to that reason (which may say
        the target failed everything)."""
        r = self.result
        if r.interrupted:
            drain = False
            if not r.drain_cut:
                r.stop_reason += "; drain cut short"
        else:
            draining = self._stop.is_set()
            self.stop(reason, hold=True)
            if draining:
                r.stop_reason += f"; then {reason} in the drain"
            r.interrupted = True
        self._hold_sends()
        if not drain:
            r.drain_cut = True
            self._cut.set()

    def _on_signal(self, sig: signal.Signals) -> None:
        self.interrupt(f"interrupted ({stop_signals.signal_label(sig)})")

    def _hold_sends(self) -> None:
        self._hold.set()
        for s in self._slots:
            s.close()

    # -- scheduling -------------------------------------------------------------------

    async def _run_load(self) -> None:
        """Every (key, phase) driven until the end, then the drain."""
        s = self.scenario
        pairs = self.pairs
        if pairs is None:
            pairs = [(i, key, load) for i, (key, load) in enumerate(plan(s, self.keys))]
        drivers = [asyncio.ensure_future(self._drive(key, load, i)) for i, key, load in pairs]
        progress = asyncio.ensure_future(self._progress()) if self.progress else None
        try:
            await self._wait_end(drivers)
        finally:
            for d in drivers:
                d.cancel()
            await asyncio.gather(*drivers, return_exceptions=True)
            await self._drain(0.0 if self._cut.is_set() else s.drain_s)
            if progress:
                progress.cancel()
                await asyncio.gather(progress, return_exceptions=True)
                self._print_progress(final=True)

    async def _wait_end(self, drivers: list[asyncio.Task[None]]) -> None:
        s = self.scenario
        loop = asyncio.get_running_loop()
        stop_wait = self._stop.future()
        deadline = (
            None if s.duration_s == float("inf") else loop.time() + s.duration_s - self.clock.now()
        )
        pending: set[asyncio.Future[Any]] = {stop_wait, *drivers}
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
                    if s.max_requests and self.result.arrivals >= s.max_requests
                    else "schedule complete"
                )
                return

    async def _drive(self, key: Key, load: LoadSpec, index: int) -> None:
        rng = random.Random(f"{self.scenario.seed}/{index}/{key.label}")
        picker = MixPicker(load.mix)
        slots = None
        if load.max_in_flight:
            slots = Slots(load.max_in_flight)
            self._slots.append(slots)
            if self._hold.is_set():
                slots.close()
        if load.pattern == "closed":
            users = [
                asyncio.ensure_future(self._user(key, load, rng, picker, slots, u))
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
            if self._stop.is_set() or not self._take_arrival():
                return
            self._spawn(key, load, rng, picker, slots, t)

    async def _user(
        self,
        key: Key,
        load: LoadSpec,
        rng: random.Random,
        picker: MixPicker,
        slots: Slots | None,
        user: int,
    ) -> None:
        # Users start spread evenly over min(1 s, 10 ms per user), not all at once.
        ramp = min(1.0, 0.01 * load.concurrency)
        start = load.start_s + ramp * user / load.concurrency
        if await self._stop.wait(start - self.clock.now()):
            return
        end = load.active_until(self.scenario.duration_s)
        state = _User(load)
        now = self.clock.now
        while not self._stop.is_set() and now() < end and self._take_arrival():
            rec = await self._request(key, self._prepare(load, rng, picker), slots, None, state)
            # The pause (think time, or the backoff after a failure) is on the record; the
            # run's end, or the phase's, cuts it short: the drain is for requests in flight.
            pause = rec.pause_s
            if pause:
                await self._stop.wait(min(pause, end - now()))

    def _take_arrival(self) -> bool:
        r = self.result
        cap = self.scenario.max_requests
        if cap and r.arrivals >= cap:
            self.stop("request count reached")
            return False
        r.arrivals += 1
        return True

    def _spawn(
        self,
        key: Key,
        load: LoadSpec,
        rng: random.Random,
        picker: MixPicker,
        slots: Slots | None,
        scheduled: float | None,
    ) -> asyncio.Task[RequestRecord]:
        req = self._prepare(load, rng, picker)
        task = asyncio.ensure_future(self._request(key, req, slots, scheduled, None))
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
            self.api.layout,
        )

    async def _drain(self, grace: float) -> None:
        if self._inflight and grace > 0:
            finished: asyncio.Future[Any] = asyncio.ensure_future(
                asyncio.wait(set(self._inflight), timeout=grace)
            )
            either: set[asyncio.Future[Any]] = {finished, self._cut.future()}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finished.cancel()
            await asyncio.gather(finished, return_exceptions=True)
        pending = set(self._inflight)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # -- one request ------------------------------------------------------------------

    async def _request(
        self,
        key: Key,
        req: PreparedRequest,
        slots: Slots | None,
        scheduled: float | None,
        user: _User | None,
    ) -> RequestRecord:
        """Send one arrival's request, and its retries; returns the last record written."""
        s = self.scenario
        attempt = 1
        last: RequestRecord | None = None
        while True:
            rec = await self._attempt(key, req, slots, scheduled, attempt)
            if rec is None:  # a retry the run's stop kept from being sent
                assert last is not None
                return last
            if rec.transport_error == R.NOT_SENT:
                self._write(rec)
                return rec
            retry = (
                s.honour_retry_after
                and rec.status == 429
                and attempt <= s.max_retries
                and not self._hold.is_set()
            )
            delay = 0.0
            if retry:
                delay = rec.retry_after_s if rec.retry_after_s is not None else 1.0
            if user is not None:
                status = rec.status
                if 200 <= status < 300:
                    # What pause_after answers for any 2xx, without its backoff object.
                    user.failures = 0
                    rec.pause_s = user.load.think_s
                else:
                    user.failures = 0 if status == 429 else user.failures + 1
                    rec.pause_s = (
                        delay
                        if retry
                        else user.load.pause_after(
                            status, rec.retry_after_s, rec.transport_error, user.failures
                        )
                    )
            self._write(rec)
            # A retry belongs to its request: it may run into the drain, but nothing is
            # sent once the run stops sending.
            if not retry or await self._hold.wait(delay):
                return rec
            last = rec
            attempt += 1
            scheduled = self.clock.now()  # a retry is scheduled by the promise it follows

    async def _attempt(
        self,
        key: Key,
        req: PreparedRequest,
        slots: Slots | None,
        scheduled: float | None,
        attempt: int,
    ) -> RequestRecord | None:
        """One attempt, once a client-side slot is free; its record, not yet written
        (unless it was cancelled). The first attempt of an arrival always has a record,
        ``not_sent`` if the run stopped while it waited. A retry the stop kept from being
        sent has none (None): it never happened, and its arrival is already on record."""
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
            req.prompt_tokens,
            req.max_tokens,
        )
        queued = 0.0
        if slots is not None:
            q0 = clock.now()
            self._queued += 1
            try:
                held = await slots.acquire()
            except asyncio.CancelledError:  # the drain ended while it waited
                if attempt == 1:
                    self._write(self._not_sent(info, q0))
                raise
            finally:
                self._queued -= 1
            queued = clock.now() - q0
            if held and self._hold.is_set():
                slots.release()
                held = False
            if not held:  # the run stopped sending while it waited
                return self._not_sent(info, q0) if attempt == 1 else None
        elif self._hold.is_set():  # spawned in the loop step the run stopped sending
            return self._not_sent(info, clock.now()) if attempt == 1 else None
        try:
            return await self._exchange(key, req, info, queued)
        finally:
            if slots is not None:
                slots.release()

    def _not_sent(self, info: RequestInfo, q0: float) -> RequestRecord:
        """The record of an arrival the run stopped before it was sent: status 0, queued
        from ``q0`` until now, "sent" (never) now."""
        now = self.clock.now()
        return RequestTrace(info, now, now - q0, limits=self.trace_limits).fail(now, R.NOT_SENT)

    def _write(self, rec: RequestRecord) -> None:
        """Every record goes out here, as its request ends."""
        self.writer.write(rec)
        r = self.result
        r.statuses[rec.status] += 1
        err = rec.transport_error
        if err == R.CANCELLED:
            r.cancelled += 1
        elif err == R.NOT_SENT:
            r.not_sent += 1
        outcome = classify(rec.status, rec.error_code, rec.content_type, err)
        if self.watch.observe(outcome, rec.status, err, rec.end_s):
            # Open-loop arrivals keep their schedule whatever the answers, so a target that
            # fails everything would be hammered for the whole run: end it instead.
            self.stop(self.watch.reason(), hold=True)

    def _url(self, req: PreparedRequest) -> str:
        return self.base_url + req.path

    def _headers(self, key: Key, req: PreparedRequest, info: RequestInfo) -> dict[str, str]:
        """Everything sent besides the body: the one place that knows how a key is
        presented and how a request is labelled."""
        headers = self._key_headers[key.label].copy()
        headers[REQUEST_ID_HEADER] = info.request_id
        if req.body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    async def _exchange(
        self, key: Key, req: PreparedRequest, info: RequestInfo, queued: float
    ) -> RequestRecord:
        clock = self.clock
        url = self._url(req)
        headers = self._headers(key, req, info)
        trace = RequestTrace(info, clock.now(), queued, limits=self.trace_limits)
        self._open += 1
        self.result.sent += 1
        try:
            marks = _Marks(trace.rec, clock)
            async with self.transport.send(req.method, url, headers, req.body, marks) as resp:
                trace.response(clock.now(), resp.status, resp.headers)
                read = resp.read
                while chunk := await read():
                    trace.data(clock.now(), chunk)
                return trace.finish(clock.now())
        except asyncio.CancelledError:
            self._write(trace.fail(clock.now(), R.CANCELLED))
            raise
        except TransportError as exc:
            return trace.fail(clock.now(), error_kind(exc))
        except Exception as exc:
            # A bug below (the trace is meant to raise nothing): one request is recorded
            # as failed, and the closed-loop user in it lives on, rather than the user
            # silently vanishing from the load while the run reports nothing.
            self._engine_error(exc)
            return trace.fail(clock.now(), R.OTHER)
        finally:
            self._open -= 1

    def _engine_error(self, exc: Exception) -> None:
        name = type(exc).__name__
        errors = self.result.engine_errors
        if not errors[name]:
            # The class name only: a message may quote a request's headers (the key).
            print(
                f"loadkit: internal error on a request ({name}); recorded as "
                "transport_error 'other'",
                file=sys.stderr,
                flush=True,
            )
        errors[name] += 1

    # -- progress ---------------------------------------------------------

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
            f"[{self.clock.now():7.1f}s] sent {self.result.sent}  done {self.writer.count}  "
            f"in flight {self._open}  2xx {ok}  429 {limited}  other {other}"
        )
        end = "\n" if final or not sys.stderr.isatty() else "\r"
        print(line, end=end, file=sys.stderr, flush=True)


class _Marks:
    """A request's milestones (``transport.Milestones``) stamped on the run's clock into its
    record: ``conn_s`` when a connection was ready. The transport's retry on a fresh
    connection stamps again: the last one is the one used."""

    __slots__ = ("_rec", "_clock")

    def __init__(self, rec: RequestRecord, clock: RunClock) -> None:
        self._rec = rec
        self._clock = clock

    def connected(self) -> None:
        self._rec.conn_s = self._clock.now()


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
    api: TargetApi | None = None,
    on_start: Callable[[], None] | None = None,
) -> EngineResult:
    """Run the asyncio engine to completion in a fresh event loop. ``api``: the target's
    resolved layout and auth style (None: ``scenario.target.target_api(os.environ)``).
    ``on_start``: called just before the load begins (see :class:`AsyncEngine`)."""
    engine = AsyncEngine(
        scenario,
        keys,
        base_url,
        writer,
        clock,
        run_id,
        progress=progress,
        api=api,
        on_start=on_start,
    )
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
