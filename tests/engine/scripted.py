"""Test doubles for the asyncio engine: an in-memory transport that plays a script per
request, an event loop on virtual time, and an in-memory record sink.

With them a test of a 2-second schedule, a 5-second drain or a 10-second hang runs in
milliseconds, without sockets, and every time in a record is exact: nothing else runs on
the clock. They live in tests/ because only tests use them (the package ships no
test-only code); the seam they plug into is ``loadkit.engine.transport``.
"""

from __future__ import annotations

import asyncio
import json
import selectors
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from loadkit.engine.async_engine import REQUEST_ID_HEADER, AsyncEngine, EngineResult, RunClock
from loadkit.engine.transport import Milestones, Response, TransportError
from loadkit.records import RequestRecord
from loadkit.scenario import Key, Scenario

# ---------------------------------------------------------------------------------------
# Virtual time

# Every virtual time lies in [2**20, 2**21) s, where the difference of two floats is exact
# (Sterbenz), so "sleep until t" wakes at exactly t: no rounding for the engine to absorb.
_START = 2.0**20


class Deadlock(RuntimeError):
    """Nothing was ready and no timer was set: on a real loop the test would hang."""


class _JumpingSelector(selectors.SelectSelector):
    """Polls without blocking; where a real selector would sleep, moves the clock on."""

    def __init__(self) -> None:
        super().__init__()
        self.now = _START

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready:
            return ready
        if timeout is None:
            raise Deadlock("every task is waiting and no timer is set")
        self.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer whenever nothing is ready."""

    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)
        # asyncio runs a timer up to the clock's resolution (1 ns) early. On virtual time
        # nothing moves the clock on to the timer's time then, and a task waiting for that
        # time (the engine spins its last moment before a send) would spin forever: make
        # the resolution one unit in the last place, so a timer runs at its time exactly.
        self._clock_resolution = _START * 2.0**-52

    def time(self) -> float:
        return self._jumping.now


class LoopClock:
    """A run clock on a loop's time: ``now()`` is seconds since the clock was made."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._origin = loop.time()

    def now(self) -> float:
        return self._loop.time() - self._origin


class MemorySink:
    """Keeps records as the engine writes them (full precision, nothing serialised)."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    @property
    def count(self) -> int:
        return len(self.records)

    def write(self, rec: RequestRecord) -> None:
        self.records.append(rec)


# ---------------------------------------------------------------------------------------
# The script: what the "server" does with one request, step by step


@dataclass(frozen=True)
class Wait:
    """Nothing arrives for ``s`` seconds."""

    s: float


@dataclass(frozen=True)
class Head:
    """The status line and headers arrive."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fail:
    """The transport fails with ``error`` (refused, reset, timed out, …) at this point."""

    error: type[TransportError]


class Hang:
    """Nothing more ever arrives: only a cancel ends the request."""


HANG = Hang()


class Connected:
    """A connection is ready for the request (the transport's ``Milestones.connected``)."""


CONNECTED = Connected()

# bytes: these body bytes arrive (in one read).
Step = Wait | Head | Fail | Hang | Connected | bytes
Steps = Sequence[Step]


class ScriptError(AssertionError):
    """A script that no server could play (bytes before the headers, two heads, …)."""


@dataclass(frozen=True)
class Sent:
    """One request as the transport received it."""

    n: int  # 0 for the first request sent, 1 for the next, …
    t: float  # on the run clock
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None

    @property
    def request_id(self) -> str:
        return self.headers[REQUEST_ID_HEADER]

    def json(self) -> Any:
        assert self.body is not None
        return json.loads(self.body)


class ScriptedTransport:
    """Plays ``script`` for every request (or ``script(sent)``, to vary by request), on
    the running loop's clock, and remembers what was sent when."""

    def __init__(self, script: Steps | Callable[[Sent], Steps], clock: RunClock) -> None:
        self.script = script
        self.clock = clock
        self.sent: list[Sent] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.opened = False
        self.closed = False

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.closed = True

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        milestones: Milestones | None = None,
    ) -> _ScriptedExchange:
        sent = Sent(len(self.sent), self.clock.now(), method, url, dict(headers), body)
        self.sent.append(sent)
        steps = self.script(sent) if callable(self.script) else self.script
        return _ScriptedExchange(self, iter(steps), milestones)


class _ScriptedExchange:
    def __init__(
        self, transport: ScriptedTransport, steps: Iterator[Step], milestones: Milestones | None
    ) -> None:
        self._t = transport
        self._steps = steps
        self._milestones = milestones

    async def __aenter__(self) -> Response:
        t = self._t
        t.in_flight += 1
        t.max_in_flight = max(t.max_in_flight, t.in_flight)
        try:
            for step in self._steps:
                if isinstance(step, Head):
                    return Response(step.status, step.headers, self._read)
                if isinstance(step, bytes):
                    raise ScriptError("body bytes before the headers")
                if isinstance(step, Connected):
                    if self._milestones is not None:
                        self._milestones.connected()
                    continue
                await _play(step)
            raise ScriptError("the script ended before its headers")
        except BaseException:
            t.in_flight -= 1
            raise

    async def _read(self) -> bytes:
        for step in self._steps:
            if isinstance(step, bytes):
                return step
            if isinstance(step, Head):
                raise ScriptError("a second status line")
            if isinstance(step, Connected):
                raise ScriptError("a connection ready after the headers")
            await _play(step)
        return b""

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._t.in_flight -= 1


async def _play(step: Wait | Fail | Hang) -> None:
    if isinstance(step, Wait):
        await asyncio.sleep(step.s)
    elif isinstance(step, Fail):
        raise step.error("scripted")
    else:
        await asyncio.get_running_loop().create_future()  # never resolved


# ---------------------------------------------------------------------------------------
# Replies an OpenAI-compatible server would send


def completion_body(text: str = "Hello!", completion_tokens: int = 2) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": completion_tokens},
    }


def json_reply(
    status: int = 200,
    body: object = None,
    headers: Mapping[str, str] | None = None,
    after_s: float = 0.0,
) -> list[Step]:
    """A whole JSON body arriving with its headers ``after_s`` after the send."""
    payload = json.dumps(completion_body() if body is None else body).encode()
    hdrs = {"content-type": "application/json", **(headers or {})}
    return [Wait(after_s), Head(status, hdrs), payload]


def rate_limited(headers: Mapping[str, str], after_s: float = 0.0) -> list[Step]:
    body = {"error": {"code": "rate_limit_exceeded", "message": "slow down"}}
    return json_reply(429, body, headers, after_s)


def sse_event(obj: object) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def token_event(text: str) -> bytes:
    return sse_event(
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    )


def final_events(tokens: int, done: bool = True) -> bytes:
    usage = sse_event(
        {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": tokens},
        }
    )
    return usage + (b"data: [DONE]\n\n" if done else b"")


def sse_reply(
    tokens: Sequence[str] = ("Hel", "lo", "!"),
    headers_s: float = 0.05,
    itl_s: float = 0.01,
    done: bool = True,
) -> list[Step]:
    """A stream: headers (and a role-only event) ``headers_s`` after the send, then one
    token every ``itl_s``; usage and ``[DONE]`` arrive with the last token."""
    role = sse_event(
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "a"}}]}
    )
    steps: list[Step] = [Wait(headers_s), Head(200, {"content-type": "text/event-stream"}), role]
    for i, text in enumerate(tokens):
        last = i == len(tokens) - 1
        steps += [
            Wait(itl_s),
            token_event(text) + (final_events(len(tokens), done) if last else b""),
        ]
    return steps


def split_every_byte(steps: Steps) -> list[Step]:
    """The same reply with every body byte in a read of its own."""
    out: list[Step] = []
    for step in steps:
        if isinstance(step, bytes):
            out += [step[i : i + 1] for i in range(len(step))]
        else:
            out.append(step)
    return out


# ---------------------------------------------------------------------------------------
# Running the engine on virtual time

TEST_KEYS = [Key("free-1", "free", "sk-test-secret-1"), Key("free-2", "free", "sk-test-secret-2")]
BASE_URL = "http://target.test/v1"


@dataclass
class Run:
    result: EngineResult
    records: list[RequestRecord]
    transport: ScriptedTransport
    engine: AsyncEngine
    ended_at: float  # run clock when engine.run() returned


def run_scripted(
    scenario: Scenario,
    script: Steps | Callable[[Sent], Steps],
    keys: list[Key] | None = None,
    at: Sequence[tuple[float, Callable[[AsyncEngine], object]]] = (),
    **engine: Any,
) -> Run:
    """Run the engine on a virtual-time loop against a scripted transport; ``at`` calls
    ``f(engine)`` at run-clock times (to stop it, say); ``engine`` adds AsyncEngine
    arguments (api, watch, …)."""
    loop = VirtualTimeLoop()
    clock = LoopClock(loop)
    sink = MemorySink()
    transport = ScriptedTransport(script, clock)
    eng = AsyncEngine(
        scenario,
        keys if keys is not None else TEST_KEYS[:1],
        scenario.target.base_url,
        sink,
        clock,
        "run-test",
        progress=False,
        transport=transport,
        wake_early_s=0.0,  # virtual timers are exact: no need to wake early and spin
        **engine,
    )

    async def main() -> EngineResult:
        for t, f in at:
            loop.call_later(t, f, eng)
        return await eng.run()

    with asyncio.Runner(loop_factory=lambda: loop) as runner:
        result = runner.run(main())
        ended = clock.now()
    return Run(result, sink.records, transport, eng, ended)


def make_scenario(
    *loads: dict[str, Any], target: dict[str, Any] | None = None, **run: Any
) -> Scenario:
    """A scenario against a (scripted) remote target: tier ``free``, the given loads;
    ``target`` adds ``[target]`` fields (api, paths, auth_header, …)."""
    from loadkit.scenario import scenario_from_dict

    run.setdefault("duration_s", 2.0)
    run.setdefault("drain_s", 5.0)
    return scenario_from_dict(
        {
            "name": "scripted",
            "target": {"base_url": BASE_URL, "model": "m", **(target or {})},
            "run": run,
            "tiers": {"free": {"requests": 100, "window_s": 1.0, "concurrency": 10}},
            "load": [{"tier": "free", "mix": {"chat": 1}, **ld} for ld in loads],
        }
    )
