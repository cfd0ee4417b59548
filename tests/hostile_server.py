"""A small hostile HTTP server for tests: each case is a way a target can answer badly (or
oddly but validly), served on 127.0.0.1 port 0 from a background thread, with the record
the measurement core must make of it.

The first path segment names the case and the rest is ignored, so a case's base URL works
with any layout an engine appends: ``HostileServer.url("no-done")`` +
``/ai/chat/completions``. Every response closes its connection. Raw sockets (asyncio
streams), not an HTTP framework: the point is to send what frameworks refuse to (CR-only
lines, cut bodies, silence, lying headers).

    with HostileServer() as srv:
        base = srv.url("gzip-stream")

``CASES`` lists each case with the expected record outcome (status, transport error, error
code, content chunks) for a client that asks for what ``case.stream`` says, reads the body
raw (no automatic decompression) and maps a cut body to ``incomplete_stream``, a
connection closed before the headers to ``reset`` and a timeout to ``timeout`` (as the
asyncio engine does). Engine tests can parametrize over ``CASES``.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Self

__all__ = ["CASES", "Expected", "HostileCase", "HostileServer", "ThreadedServer", "case_by_name"]


@dataclass(frozen=True)
class Expected:
    """What the record of the case must say."""

    status: int
    transport_error: str | None = None
    error_code: str | None = None
    content_chunks: int = 0
    limit_kind: str | None = None
    content_type: str | None = None  # checked when given


@dataclass(frozen=True)
class HostileCase:
    name: str
    stream: bool  # the client asks for a stream (and the case answers as one)
    expected: Expected
    what: str
    # Seconds a client should allow: cases that stall need a short timeout to end.
    timeout_s: float = 10.0


Writer = asyncio.StreamWriter


# ----------------------------------------------------------------------------------------
# Bytes of an OpenAI-style stream


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _chunk(text: str, finish: str | None = None) -> bytes:
    return _event(
        {
            "id": "chatcmpl-hostile",
            "object": "chat.completion.chunk",
            "model": "hostile",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
        }
    )


ROLE = _event(
    {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
)
USAGE = _event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
DONE = b"data: [DONE]\n\n"
THREE = [ROLE, _chunk("one"), _chunk(" two"), _chunk(" three", "length"), USAGE, DONE]
STREAM = b"".join(THREE)
NESTED = b"[" * 100_000 + b"]" * 100_000
SSE = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
JSON = {"Content-Type": "application/json"}


def _error(code: str, message: str, type_: str = "rate_limit_error") -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}
    ).encode()


# ----------------------------------------------------------------------------------------
# Writing responses


async def _head(w: Writer, status: int, headers: dict[str, str], length: int | None) -> None:
    reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}
    lines = [f"HTTP/1.1 {status} {reason.get(status, 'Status')}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    w.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await w.drain()


async def _chunked(w: Writer, pieces: list[bytes], delay: float = 0.0, end: bool = True) -> None:
    for p in pieces:
        if p:
            w.write(b"%x\r\n%s\r\n" % (len(p), p))
            await w.drain()
            if delay:
                await asyncio.sleep(delay)
    if end:
        w.write(b"0\r\n\r\n")
        await w.drain()


async def _body(w: Writer, status: int, headers: dict[str, str], body: bytes) -> None:
    await _head(w, status, headers, len(body))
    w.write(body)
    await w.drain()


def _stream(
    data: bytes, headers: dict[str, str] | None = None, piece: int = 0, delay: float = 0.0
) -> Callable[[Writer], Awaitable[None]]:
    """A chunked 200 stream of ``data``, in pieces of ``piece`` bytes (0: one per event)."""

    async def serve(w: Writer) -> None:
        await _head(w, 200, {**SSE, **(headers or {})}, None)
        step = piece or len(data)
        await _chunked(w, [data[i : i + step] for i in range(0, len(data), step)], delay)

    return serve


def _events(events: list[bytes], eol: bytes = b"\n") -> Callable[[Writer], Awaitable[None]]:
    async def serve(w: Writer) -> None:
        await _head(w, 200, SSE, None)
        await _chunked(w, [e.replace(b"\n", eol) for e in events])

    return serve


def _fixed(
    status: int, headers: dict[str, str], body: bytes
) -> Callable[[Writer], Awaitable[None]]:
    async def serve(w: Writer) -> None:
        await _body(w, status, headers, body)

    return serve


async def _cut_stream(w: Writer) -> None:
    await _head(w, 200, SSE, None)
    await _chunked(w, [ROLE, _chunk("one"), _chunk(" two")], end=False)
    w.close()  # no terminating chunk: the body is cut


async def _cut_body(w: Writer) -> None:
    body = json.dumps(
        {"choices": [{"index": 0, "finish_reason": "stop"}], "pad": "x" * 2000}
    ).encode()
    await _head(w, 200, JSON, len(body))
    w.write(body[:300])
    await w.drain()
    w.close()


async def _close_before_headers(w: Writer) -> None:
    w.close()


async def _long_line(w: Writer) -> None:
    await _head(w, 200, SSE, None)
    huge = b"data: " + b"x" * (2 * 1024 * 1024) + b"\n\n"
    parts = [ROLE, _chunk("one")]
    parts += [huge[i : i + 64 * 1024] for i in range(0, len(huge), 64 * 1024)]
    parts += [_chunk(" two"), _chunk(" three", "length"), USAGE, DONE]
    await _chunked(w, parts)


@functools.cache
def _bomb() -> bytes:
    z = zlib.compressobj(1, wbits=16 + zlib.MAX_WBITS)  # level 1: built in 0.2 s
    mib = b" " * (1 << 20)
    return b"".join([*(z.compress(mib) for _ in range(80)), z.flush()])


async def _zip_bomb(w: Writer) -> None:
    await _body(w, 200, {**JSON, "Content-Encoding": "gzip"}, _bomb())


def _gzip_stream(w_bits: int, coding: str) -> Callable[[Writer], Awaitable[None]]:
    """A compressed stream flushed after each event, as a compressing proxy sends it."""

    async def serve(w: Writer) -> None:
        await _head(w, 200, {**SSE, "Content-Encoding": coding}, None)
        z = zlib.compressobj(wbits=w_bits)
        parts = [z.compress(e) + z.flush(zlib.Z_SYNC_FLUSH) for e in THREE]
        parts.append(z.flush())
        await _chunked(w, parts, delay=0.002)

    return serve


# ----------------------------------------------------------------------------------------
# The cases

_Handler = Callable[[Writer], Awaitable[None]]
_OK3 = Expected(200, None, None, 3)


def _cases() -> list[tuple[HostileCase, _Handler | None]]:
    ok = _OK3
    sse_ok = Expected(200, None, None, 3, content_type="text/event-stream")
    return [
        (HostileCase("ok-lf", True, sse_ok, "a plain stream, LF endings"), _stream(STREAM)),
        (HostileCase("ok-crlf", True, ok, "CRLF line endings"), _events(THREE, b"\r\n")),
        (HostileCase("ok-cr", True, ok, "CR-only line endings"), _events(THREE, b"\r")),
        (
            HostileCase("keepalives", True, ok, "comments and blank keep-alives between events"),
            _events(
                [b": ping\n\n", ROLE, b":\n\n\n\n", *THREE[1:3], b": keep-alive\n\n", *THREE[3:]]
            ),
        ),
        (
            HostileCase("split-every-byte", True, ok, "one byte per write, 0.5 ms apart"),
            _stream(STREAM, piece=1, delay=0.0005),
        ),
        (
            HostileCase("split-odd", True, ok, "7-byte writes: CRLF and UTF-8 split"),
            _stream(STREAM.replace(b"\n", b"\r\n").replace(b" two", " tw\u00f6".encode()), piece=7),
        ),
        (
            HostileCase("no-done", True, Expected(200, "incomplete_stream", None, 3), "no [DONE]"),
            _events(THREE[:-1]),
        ),
        (
            HostileCase(
                "bad-json-event",
                True,
                Expected(200, "malformed_event", None, 3),
                "a data line that is not JSON",
            ),
            _events([*THREE[:2], b"data: {oops\n\n", *THREE[2:]]),
        ),
        (
            HostileCase(
                "nested-event",
                True,
                Expected(200, "malformed_event", None, 3),
                "a data line nested 100,000 deep",
            ),
            _events([*THREE[:2], b"data: " + NESTED + b"\n\n", *THREE[2:]]),
        ),
        (
            HostileCase("invalid-utf8", True, ok, "invalid UTF-8 in content and comments"),
            _events(
                [
                    b": \xff\xfe\n\n",
                    ROLE,
                    _chunk("one").replace(b"one", b"o\xffne"),
                    *THREE[2:],
                ]
            ),
        ),
        (
            HostileCase(
                "line-too-long",
                True,
                Expected(200, "line_too_long", None, 3),
                "a 2 MiB data line between good events (the line bound is 1 MiB)",
            ),
            _long_line,
        ),
        (
            HostileCase(
                "error-event",
                True,
                Expected(200, None, "internal_error", 1),
                "an error event after the first chunk",
            ),
            _events(
                [
                    ROLE,
                    _chunk("one"),
                    _event(
                        {
                            "error": {
                                "message": "boom",
                                "type": "server_error",
                                "code": "internal_error",
                            }
                        }
                    ),
                ]
            ),
        ),
        (
            HostileCase("gzip-stream", True, ok, "gzip although identity was asked"),
            _gzip_stream(16 + zlib.MAX_WBITS, "gzip"),
        ),
        (
            HostileCase("deflate-stream", True, ok, "deflate (zlib-wrapped)"),
            _gzip_stream(zlib.MAX_WBITS, "deflate"),
        ),
        (
            HostileCase("deflate-raw-stream", True, ok, "deflate sent raw"),
            _gzip_stream(-zlib.MAX_WBITS, "deflate"),
        ),
        (
            HostileCase(
                "br-stream",
                True,
                Expected(200, "unsupported_encoding", None, 0),
                "Content-Encoding: br",
            ),
            _stream(b"\x1b\x03\x00\xf8\xa5\x8c\x9c\xbd", {"Content-Encoding": "br"}),
        ),
        (
            HostileCase(
                "cut-stream",
                True,
                Expected(200, "incomplete_stream", None, 2),
                "the connection closes mid-stream (no last chunk)",
            ),
            _cut_stream,
        ),
        (
            HostileCase(
                "cut-body",
                False,
                Expected(200, "incomplete_stream"),
                "Content-Length 2 KB, 300 bytes sent, then closed",
            ),
            _cut_body,
        ),
        (
            HostileCase(
                "nested-body",
                False,
                Expected(200, "malformed_event"),
                "a 200 JSON body nested 100,000 deep",
            ),
            _fixed(200, JSON, NESTED),
        ),
        (
            HostileCase(
                "nested-error-body",
                False,
                Expected(500, None, None, content_type="application/json"),
                "a 500 whose error is nested 100,000 deep",
            ),
            _fixed(500, JSON, b'{"error": ' + NESTED + b"}"),
        ),
        (
            HostileCase(
                "html-404",
                True,
                Expected(404, None, None, content_type="text/html"),
                "an HTML 404 page (a wrong URL)",
            ),
            _fixed(
                404,
                {"Content-Type": "text/html; charset=utf-8"},
                b"<!DOCTYPE html><html><body><h1>Not Found</h1></body></html>",
            ),
        ),
        (
            HostileCase(
                "gzip-429",
                True,
                Expected(429, None, "concurrency_limit_exceeded", 0, "concurrency"),
                "a gzip-compressed 429 body",
            ),
            _fixed(
                429,
                {**JSON, "Content-Encoding": "gzip", "Retry-After": "1"},
                gzip.compress(_error("concurrency_limit_exceeded", "too many in flight")),
            ),
        ),
        (
            HostileCase(
                "zip-bomb",
                False,
                Expected(200, "body_too_large"),
                "a 360 KB gzip body that inflates to 80 MiB (the body bound is 64 MiB)",
            ),
            _zip_bomb,
        ),
        (
            HostileCase(
                "close-before-headers",
                True,
                Expected(0, "reset"),
                "the request is read, the connection closed without an answer",
            ),
            _close_before_headers,
        ),
        (
            HostileCase(
                "silent",
                True,
                Expected(0, "timeout"),
                "accepts, reads the request, never answers",
                timeout_s=0.5,
            ),
            None,
        ),
    ]


_TABLE = _cases()
CASES: list[HostileCase] = [c for c, _ in _TABLE]
_HANDLERS: dict[str, _Handler | None] = {c.name: h for c, h in _TABLE}


def case_by_name(name: str) -> HostileCase:
    return next(c for c in CASES if c.name == name)


# ----------------------------------------------------------------------------------------
# The server


class ThreadedServer(ABC):
    """A raw-socket asyncio server on 127.0.0.1, port 0, in a background thread with its
    own event loop (so a test's synchronous code, or a subprocess, can talk to it). A
    subclass says what to do with each connection; the server closes it afterwards, and
    cancels the connections still open when it stops."""

    thread_name = "test-server"
    stream_limit = 1 << 16  # asyncio's default line/buffer limit for each reader

    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @abstractmethod
    async def _connection(self, r: asyncio.StreamReader, w: Writer) -> None:
        """Serve one connection (a client going away mid-way is not an error)."""

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"{self.thread_name} did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def on_connect(r: asyncio.StreamReader, w: Writer) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await self._connection(r, w)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the client went away: that is its business
            finally:
                tasks.discard(task)
                w.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0, limit=self.stream_limit)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for t in list(tasks):
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


class HostileServer(ThreadedServer):
    """The hostile cases on 127.0.0.1, port 0, in a thread with its own event loop."""

    thread_name = "hostile-server"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []  # case names, in the order they were asked

    def url(self, case: str) -> str:
        """The base URL serving ``case`` (any path below it)."""
        return f"http://127.0.0.1:{self.port}/{case}"

    async def _connection(self, r: asyncio.StreamReader, w: Writer) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        path = request_line.split(" ")[1] if " " in request_line else "/"
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip() or 0)
        if length:
            await r.readexactly(length)
        name = path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        self.requests.append(name)
        if name not in _HANDLERS:
            await _body(w, 404, {"Content-Type": "text/plain"}, f"no case {name!r}".encode())
            return
        handler = _HANDLERS[name]
        if handler is None:  # silent: hold the connection until the server stops
            assert self._stop is not None
            await self._stop.wait()
            return
        await handler(w)
