"""The asyncio engine's transport over aiohttp: explicit connection and timeout settings,
bodies read as they arrive and never decompressed, aiohttp's failures translated into the
seam's typed errors (``transport.py``), and when each request's connection was ready
reported to its ``Milestones``."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from contextvars import ContextVar
from types import TracebackType

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace

from loadkit.engine.transport import (
    ClientConfig,
    Incomplete,
    Milestones,
    Refused,
    Reset,
    Response,
    TimedOut,
    TransportError,
)

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


# The request being sent in this task, if it wants its milestones (set by _Exchange).
_MILESTONES: ContextVar[Milestones | None] = ContextVar("loadkit_milestones", default=None)


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, telling the request it connects when its connection is ready
    (new: DNS, TCP and TLS done; or taken from the pool). Not aiohttp's ``TraceConfig``:
    with one installed aiohttp sends ~10 trace signals per request, which cost ~25 % of
    its CPU per request (measured: 360 -> 460 us on this project's loaded 2-core machine),
    for one timestamp."""

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        conn = await super().connect(req, traces, timeout)
        m = _MILESTONES.get()
        if m is not None:
            m.connected()
        return conn


class AiohttpTransport:
    """One ``aiohttp.ClientSession`` for the run, with no connection cap and only the
    timeouts the scenario sets."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        c = self.config
        self._session = aiohttp.ClientSession(
            connector=_Connector(
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
        return _Exchange(self._session.request(method, url, data=body, headers=headers), milestones)


class _Exchange:
    """One request: entering waits for the headers, leaving releases the connection (what
    aiohttp's own ``async with session.request(...)`` does, a layer fewer)."""

    __slots__ = ("_request", "_response", "_milestones")

    def __init__(
        self, request: Awaitable[aiohttp.ClientResponse], milestones: Milestones | None
    ) -> None:
        self._request = request
        self._milestones = milestones

    async def __aenter__(self) -> Response:
        # The connector runs in this task: it finds the request's milestones here.
        token = _MILESTONES.set(self._milestones)
        try:
            resp = self._response = await self._request
        except _FAILURES as exc:
            raise translate(exc) from exc
        finally:
            _MILESTONES.reset(token)
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
