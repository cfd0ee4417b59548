"""Loopback servers for the Locust engine's tests, each on 127.0.0.1 port 0 in a thread with
its own event loop (pytest's process never imports gevent or Locust).

``ScriptedServer`` answers each request by the behaviour its key names: a key
``sk.<behaviour>.<n>`` (in whatever header carries it) gets that behaviour, so one run
can give each key its own kind of target: a stream on a fixed profile, a stream that lasts,
one that trickles a byte at a time, a giant SSE line, a 429 with Retry-After, a 404 for
everything. Every request is logged (arrival time, method, path, headers).

``KeyRouter`` sits in front of ``tests.hostile_server.HostileServer`` and sends each request
to the hostile case its key names (``sk.<case>.<n>``), so one run drives every case, each
from its own key.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from abc import abstractmethod
from dataclasses import dataclass

from tests.hostile_server import ThreadedServer

Writer = asyncio.StreamWriter
KEY = re.compile(r"sk\.([a-z0-9-]+)\.\d+")


def key_for(behaviour: str, n: int = 1) -> str:
    return f"sk.{behaviour}.{n}"


@dataclass
class Seen:
    """One request as the server received it (``t``: time.perf_counter() at arrival)."""

    t: float
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    behaviour: str | None


@dataclass(frozen=True)
class Head:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes  # the request head as received
    body: bytes

    def behaviour(self) -> str | None:
        for value in self.headers.values():
            m = KEY.search(value)
            if m:
                return m.group(1)
        return None


class LoopbackServer(ThreadedServer):
    """A keep-alive HTTP/1.1 server on 127.0.0.1, port 0, in a background thread: every
    request is logged, then answered by ``handle``."""

    stream_limit = 1 << 20

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _connection(self, r: asyncio.StreamReader, w: Writer) -> None:
        while True:  # keep-alive: one request after another
            head = await _read_head(r)
            if head is None:
                return
            self.seen.append(
                Seen(time.perf_counter(), head.method, head.path, head.headers, head.behaviour())
            )
            if not await self.handle(head, r, w):
                return

    @abstractmethod
    async def handle(self, head: Head, r: asyncio.StreamReader, w: Writer) -> bool:
        """Answer one request; True to read another on the same connection."""


async def _read_head(r: asyncio.StreamReader) -> Head | None:
    try:
        raw = await r.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *lines = raw.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    headers: dict[str, str] = {}
    for line in lines:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await r.readexactly(length) if length else b""
    return Head(parts[0], parts[1] if len(parts) > 1 else "/", headers, raw, body)


# ----------------------------------------------------------------------------------------
# ScriptedServer


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chunk(text: str, finish: str | None = None) -> bytes:
    return event(
        {
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
        }
    )


ROLE = event({"object": "chat.completion.chunk", "choices": [{"delta": {"role": "assistant"}}]})
DONE = b"data: [DONE]\n\n"
COMPLETION = json.dumps(
    {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
).encode()


async def _head(w: Writer, status: int, headers: dict[str, str], length: int | None) -> None:
    lines = [f"HTTP/1.1 {status} Status"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    w.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await w.drain()


async def _piece(w: Writer, data: bytes) -> None:
    w.write(b"%x\r\n%s\r\n" % (len(data), data))
    await w.drain()


async def _end(w: Writer) -> None:
    w.write(b"0\r\n\r\n")
    await w.drain()


SSE = {"Content-Type": "text/event-stream"}
JSON = {"Content-Type": "application/json"}


@dataclass
class Profile:
    """A stream's timing: first token after ``ttft_s``, then one every ``itl_s``."""

    ttft_s: float = 0.05
    itl_s: float = 0.02
    tokens: int = 5


class ScriptedServer(LoopbackServer):
    """``profile``: the plain stream's timing; a "slow" stream lasts ``slow_s``; the
    "giant" stream holds one SSE line of ``giant_mb`` MiB; a 429 says ``retry_after``."""

    def __init__(
        self,
        profile: Profile | None = None,
        slow_s: float = 5.0,
        giant_mb: int = 24,
        retry_after: str = "0.2",
    ) -> None:
        super().__init__()
        self.profile = profile or Profile()
        self.slow_s = slow_s
        self.retry_after = retry_after
        self._giant = b"data: " + b"x" * (giant_mb * 1024 * 1024) + b"\n\n"

    async def handle(self, head: Head, r: asyncio.StreamReader, w: Writer) -> bool:
        b = head.behaviour()
        stream = b'"stream":true' in head.body
        if b == "404":
            await _body(w, 404, {"Content-Type": "text/plain"}, b"Not Found")
            return True
        if b == "429":
            err = json.dumps({"error": {"code": "rate_limit_exceeded", "type": "rate"}}).encode()
            await _body(w, 429, {**JSON, "Retry-After": self.retry_after}, err)
            return True
        if b == "trickle":
            await _head(w, 200, SSE, None)
            while True:
                await _piece(w, b":")
                await asyncio.sleep(0.1)
        if b == "slow":
            await self._stream(w, Profile(0.05, self.slow_s / 5, 5))
            return True
        if b == "giant":
            await _head(w, 200, SSE, None)
            await _piece(w, ROLE + chunk("a"))
            view = memoryview(self._giant)
            for i in range(0, len(view), 1 << 20):
                await _piece(w, bytes(view[i : i + (1 << 20)]))
            await _piece(w, chunk("b", "stop") + DONE)
            await _end(w)
            return True
        if not stream:
            await _body(w, 200, JSON, COMPLETION)
            return True
        await self._stream(w, self.profile)
        return True

    async def _stream(self, w: Writer, p: Profile) -> None:
        await _head(w, 200, SSE, None)
        await _piece(w, ROLE)
        await asyncio.sleep(p.ttft_s)
        for i in range(p.tokens):
            if i:
                await asyncio.sleep(p.itl_s)
            last = i == p.tokens - 1
            await _piece(w, chunk(f"t{i}", "stop" if last else None) + (DONE if last else b""))
        await _end(w)


async def _body(w: Writer, status: int, headers: dict[str, str], body: bytes) -> None:
    await _head(w, status, headers, len(body))
    w.write(body)
    await w.drain()


# ----------------------------------------------------------------------------------------
# KeyRouter


class KeyRouter(LoopbackServer):
    """Forwards each request to ``upstream(case)`` for the case its key names; bytes pass
    through untouched both ways, and a close on either side closes the other."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port

    async def handle(self, head: Head, r: asyncio.StreamReader, w: Writer) -> bool:
        case = head.behaviour() or "none"
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port, limit=1 << 20)
        method, path, rest = head.raw.split(b" ", 2)
        uw.write(b"%s /%s%s %s" % (method, case.encode(), path, rest) + head.body)
        await uw.drain()

        async def pump(src: asyncio.StreamReader, dst: Writer) -> None:
            try:
                while data := await src.read(1 << 16):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        up = asyncio.ensure_future(pump(ur, w))  # the answer, until the upstream closes
        down = asyncio.ensure_future(pump(r, uw))  # the client closing early
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for t in (up, down):
            t.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        uw.close()
        return False
