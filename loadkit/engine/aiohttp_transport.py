"""The asyncio engine's transport over aiohttp: explicit connection and timeout settings,
bodies read as they arrive and never decompressed, aiohttp's failures translated into the
seam's typed errors (``transport.py``), and aiohttp's trace hooks reporting when a request's
connection was ready and when its headers left (``Milestones``)."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace, TracebackType
from typing import Any

import aiohttp

from loadkit.engine.transport import (
    Incomplete,
    Milestones,
    Refused,
    Reset,
    Response,
    TimedOut,
    TransportError,
)


@dataclass(frozen=True)
class ClientConfig:
    """HTTP client settings, all explicit: a load tool that inherits a library's
    connection cap or total timeout measures itself, not the target."""

    connect_timeout_s: float = 10.0
    request_timeout_s: float = 600.0
    read_timeout_s: float = 120.0
    read_bufsize: int = 1 << 20  # aiohttp's 64 KiB default throttles long bodies


# What aiohttp raises for a failed exchange; anything else is a bug and propagates as is.
_FAILURES = (TimeoutError, aiohttp.ClientError, ConnectionError)


def translate(exc: BaseException) -> TransportError:
    """The seam's error for one of aiohttp's (order matters: aiohttp's classes overlap)."""
    if isinstance(exc, TimeoutError):  # aiohttp.ServerTimeoutError is one too
        return TimedOut(type(exc).__name__)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Refused(type(exc).__name__)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Incomplete(type(exc).__name__)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | ConnectionError):
        return Reset(type(exc).__name__)
    # Only the class name: aiohttp's messages may quote a request's headers.
    return TransportError(type(exc).__name__)


async def _connected(session: Any, ctx: SimpleNamespace, params: Any) -> None:
    m = ctx.trace_request_ctx
    if m is not None:
        m.connected()


async def _sent(session: Any, ctx: SimpleNamespace, params: Any) -> None:
    m = ctx.trace_request_ctx
    if m is not None:
        m.sent()


def milestone_trace() -> aiohttp.TraceConfig:
    """aiohttp's hooks for a request's milestones; the request's ``trace_request_ctx`` is
    its :class:`Milestones` (or None). A new connection is ready at ``connection_create_end``
    (DNS, TCP, TLS done), a pooled one at ``connection_reuseconn``; ``request_headers_sent``
    comes as the headers are handed to the socket (with the body, when it is small)."""
    tc = aiohttp.TraceConfig()
    tc.on_connection_create_end.append(_connected)
    tc.on_connection_reuseconn.append(_connected)
    tc.on_request_headers_sent.append(_sent)
    return tc


class AiohttpTransport:
    """One ``aiohttp.ClientSession`` for the run, with no connection cap and only the
    timeouts the scenario sets."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        c = self.config
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=30
            ),
            timeout=aiohttp.ClientTimeout(
                total=c.request_timeout_s, connect=c.connect_timeout_s, sock_read=c.read_timeout_s
            ),
            read_bufsize=c.read_bufsize,
            # Bytes are timed as they arrive on the wire, so nothing may be compressed.
            auto_decompress=False,
            headers={"Accept-Encoding": "identity"},
            skip_auto_headers=("User-Agent",),
            trace_configs=[milestone_trace()],
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        milestones: Milestones | None = None,
    ) -> _Exchange:
        if self._session is None:
            raise RuntimeError("AiohttpTransport.send before open()")
        return _Exchange(
            self._session.request(
                method, url, data=body, headers=headers, trace_request_ctx=milestones
            )
        )


class _Exchange:
    """One request: entering waits for the headers, leaving releases the connection (what
    aiohttp's own ``async with session.request(...)`` does, a layer fewer)."""

    __slots__ = ("_request", "_response")

    def __init__(self, request: Awaitable[aiohttp.ClientResponse]) -> None:
        self._request = request

    async def __aenter__(self) -> Response:
        try:
            resp = self._response = await self._request
        except _FAILURES as exc:
            raise translate(exc) from exc
        # The body's own read method, handed over as is: the seam costs nothing per chunk.
        return Response(resp.status, resp.headers, resp.content.readany)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        resp = self._response
        resp.release()
        try:
            await resp.wait_for_close()
        except _FAILURES as failure:
            exc = exc or failure
        if isinstance(exc, _FAILURES):
            raise translate(exc) from exc
