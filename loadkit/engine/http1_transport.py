"""The asyncio engine's own HTTP/1.1 client (the default transport): an asyncio protocol
per connection, feeding each read to the pure parser in ``loadkit/http1.py``, with a pool
of kept-alive connections per origin, resolved addresses cached, and one timer per request
for its read and total timeouts.

Why not aiohttp's client here: for a request and its record, aiohttp's request path (its
request and response objects, URL handling, timer contexts, stream reader) costs more than
everything else the engine does (issue 16: ~508 k instructions per non-stream request for
a bare aiohttp loop, against ~240 k of the engine's own). This client does what the seam
asks (``transport.py``) and no more: no redirects, retries, cookies, proxies or
decompression. ``[target] http_client = "aiohttp"`` selects the aiohttp transport instead.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

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
from loadkit.http1 import BadHead, ProtocolError, ResponseParser, request_head

DNS_TTL_S = 300.0  # aiohttp's ttl_dns_cache as the aiohttp transport sets it
KEEPALIVE_S = 30.0  # an idle connection older than this is closed, not reused
_URL_CACHE = 4096  # distinct URLs remembered (a run uses a handful)

_Address = tuple[int, tuple[Any, ...]]  # address family, socket address
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


class _Origin(NamedTuple):
    """Where a URL's requests go, and what its request line and Host header say."""

    pool: tuple[str, str, int]  # scheme, host, port: connections are shared per origin
    host: str  # to connect to (brackets of an IPv6 literal removed)
    port: int
    tls: bool
    host_header: str
    target: str  # path and query


def _origin(url: str) -> _Origin:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: scheme {scheme!r}")
    host = parts.hostname
    if not host:
        raise ValueError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        # aiohttp would turn them into a Basic Authorization header; this client sends
        # the key only as [target] auth_header says.
        raise ValueError("credentials in the URL are not sent: use [target] headers")
    tls = scheme == "https"
    default = 443 if tls else 80
    port = parts.port or default
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    # Percent-encoded as aiohttp would (spaces, non-ASCII), escapes already there kept.
    target = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        target = f"{target}?{quote(parts.query, safe=_QUERY_SAFE)}"
    return _Origin((scheme, host, port), host, port, tls, host_header, target)


class Http1Transport:
    """Sends each request on a kept-alive connection of its origin, or a new one; no cap
    on connections, only the timeouts of :class:`ClientConfig`."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._live: set[_Connection] = set()
        self._addresses: dict[tuple[str, int], tuple[float, list[_Address]]] = {}
        self._tls: ssl.SSLContext | None = None

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        """Ends every connection at once: a request still under way fails (``Reset``),
        never reads as a body that ended, and no socket waits on a peer's TLS goodbye."""
        for conn in list(self._live):
            ex = conn.exchange
            if ex is not None:
                ex._fail(Reset("TransportClosed"))
            conn.abort()
        self._live.clear()
        self._idle.clear()
        # Let the transports' connection_lost callbacks run before the loop goes away.
        await asyncio.sleep(0)

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        milestones: Milestones | None = None,
    ) -> _Exchange:
        if self._loop is None:
            raise RuntimeError("Http1Transport.send before open()")
        origin = self._origins.get(url)
        if origin is None:
            origin = _origin(url)
            if len(self._origins) >= _URL_CACHE:
                self._origins.clear()
            self._origins[url] = origin
        head = request_head(
            method, origin.target, origin.host_header, headers, None if body is None else len(body)
        )
        return _Exchange(self, origin, head, body, method == "HEAD", milestones)

    # -- connections ------------------------------------------------------------------

    def _pooled(self, origin: _Origin, now: float) -> _Connection | None:
        idle = self._idle.get(origin.pool)
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < KEEPALIVE_S:
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection, now: float) -> None:
        conn.idle_since = now
        idle = self._idle.get(conn.pool)
        if idle is None:
            idle = self._idle[conn.pool] = []
        # The pool is a stack: the oldest idle connections are at its bottom, closed here
        # once idle too long (after a burst they would otherwise stay open unused).
        while idle and now - idle[0].idle_since >= KEEPALIVE_S:
            idle.pop(0).close()
        idle.append(conn)

    async def _connect(self, origin: _Origin, timeout: float) -> _Connection:
        loop = self._loop
        assert loop is not None
        tls = None
        if origin.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolve(origin.host, origin.port)
                failure: OSError | None = None
                for family, address in addresses:
                    try:
                        _, conn = await loop.create_connection(
                            lambda: _Connection(self, origin.pool),
                            address[0],
                            address[1],
                            family=family,
                            ssl=tls,
                            server_hostname=origin.host if tls else None,
                        )
                        return conn
                    except OSError as exc:  # ssl.SSLError and socket.gaierror are too
                        failure = exc
                assert failure is not None
                raise failure
        except TimeoutError as exc:
            raise TimedOut("ConnectTimeout") from exc
        except OSError as exc:
            # Only the class name: a message may name the host, never a key, but keep to
            # what the aiohttp transport says.
            raise Refused(type(exc).__name__) from exc

    async def _resolve(self, host: str, port: int) -> list[_Address]:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        cached = self._addresses.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found: list[_Address] = [(family, address) for family, _, _, _, address in infos]
            if not found:
                raise socket.gaierror(f"no address for {host}") from None
        else:
            found = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (host, port))]
        self._addresses[(host, port)] = (now + DNS_TTL_S, found)
        return found


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: hands each read to the exchange using it."""

    __slots__ = ("owner", "pool", "transport", "exchange", "lost", "idle_since")

    def __init__(self, owner: Http1Transport, pool: tuple[str, str, int]) -> None:
        self.owner = owner
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.lost = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.owner._live.add(self)

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # bytes nobody asked for: this connection cannot be reused
            self.close()
            return
        ex.received(data)

    def eof_received(self) -> bool:
        ex = self.exchange
        if ex is not None:
            ex.ended(None)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.owner._live.discard(self)
        ex = self.exchange
        if ex is not None:
            ex.ended(exc)

    def close(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()


class _Exchange:
    """One request on one connection: the seam's context manager (entering sends and waits
    for the head), the body's ``read``, and the timer for its timeouts."""

    __slots__ = (
        "owner",
        "origin",
        "head",
        "body",
        "milestones",
        "parser",
        "conn",
        "failure",
        "waiter",
        "timer",
        "last_read",
        "deadline",
        "paused",
        "unread",
    )

    def __init__(
        self,
        owner: Http1Transport,
        origin: _Origin,
        head: bytes,
        body: bytes | None,
        head_request: bool,
        milestones: Milestones | None,
    ) -> None:
        self.owner = owner
        self.origin = origin
        self.head = head
        self.body = body
        self.milestones = milestones
        self.parser = ResponseParser(head_request)
        self.conn: _Connection | None = None
        self.failure: TransportError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_read = 0.0
        self.deadline = 0.0
        self.paused = False
        self.unread = 0  # body bytes received and not yet read

    async def __aenter__(self) -> Response:
        owner = self.owner
        loop = owner._loop
        assert loop is not None
        config = owner.config
        now = loop.time()
        self.deadline = now + config.request_timeout_s
        try:
            conn = owner._pooled(self.origin, now)
            if conn is None:
                conn = await owner._connect(
                    self.origin, min(config.connect_timeout_s, config.request_timeout_s)
                )
            self.conn = conn
            conn.exchange = self
            if self.milestones is not None:
                self.milestones.connected()
            transport = conn.transport
            assert transport is not None
            body = self.body
            if body is None:
                transport.write(self.head)
            elif len(body) < 65536:
                transport.write(self.head + body)
            else:
                transport.writelines((self.head, body))
            self.last_read = now = loop.time()
            self.timer = loop.call_at(
                min(self.deadline, now + config.read_timeout_s), self._check_time
            )
            parser = self.parser
            while parser.status is None:
                if self.failure is not None:
                    raise self.failure
                if conn.lost:
                    raise Reset("ServerDisconnectedError")
                await self._wait()
        except BaseException:
            self._discard()
            raise
        return Response(parser.status, parser.headers, self.read)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        parser = self.parser
        conn = self.conn
        if (
            exc_type is None
            and parser.done
            and parser.keep_alive
            and self.failure is None
            and conn is not None
            and not conn.lost
        ):
            self._stop_timer()
            conn.exchange = None
            loop = self.owner._loop
            assert loop is not None
            self.owner._release(conn, loop.time())
        else:
            self._discard()

    async def read(self) -> bytes:
        """The body's next bytes (everything that arrived since the last read), ``b""`` at
        its end."""
        parser = self.parser
        while True:
            pieces = parser.body
            if pieces:
                data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces.clear()
                self.unread = 0
                if self.paused:
                    self.paused = False
                    conn = self.conn
                    if conn is not None and conn.transport is not None and not conn.lost:
                        conn.transport.resume_reading()
                return data
            if self.failure is not None:
                raise self.failure
            if parser.done:
                self._stop_timer()
                return b""
            await self._wait()

    # -- events from the connection ---------------------------------------------------

    def received(self, data: bytes) -> None:
        if self.failure is not None:
            return
        loop = self.owner._loop
        assert loop is not None
        self.last_read = loop.time()
        parser = self.parser
        try:
            parser.feed(data)
        except BadHead as exc:
            self._fail(TransportError(type(exc).__name__))
            return
        except ProtocolError as exc:
            self._fail(Incomplete(type(exc).__name__))
            return
        self.unread += len(data)  # the head's bytes too: an upper bound
        if self.unread > self.owner.config.read_bufsize and not self.paused:
            # The reader is far behind: stop reading the socket until it catches up.
            conn = self.conn
            if conn is not None and conn.transport is not None and not conn.lost:
                conn.transport.pause_reading()
                self.paused = True
        self._wake()

    def ended(self, exc: Exception | None) -> None:
        """The connection ended (``exc``: why, if it broke)."""
        if self.failure is not None:
            return
        parser = self.parser
        if parser.done:
            return
        if parser.status is None:
            self._fail(Reset(type(exc).__name__ if exc else "ServerDisconnectedError"))
            return
        if exc is None:
            try:
                parser.eof()
            except ProtocolError as err:
                self._fail(Incomplete(type(err).__name__))
                return
            self._wake()
            return
        self._fail(Incomplete(type(exc).__name__))

    # -- timing and ending ------------------------------------------------------------

    def _check_time(self) -> None:
        self.timer = None
        if self.failure is not None or self.parser.done:
            return
        loop = self.owner._loop
        assert loop is not None
        now = loop.time()
        read_by = self.last_read + self.owner.config.read_timeout_s
        if now >= self.deadline:
            self._fail(TimedOut("RequestTimeout"))
        elif now >= read_by and not self.paused and not self.parser.body:
            self._fail(TimedOut("ReadTimeout"))
        else:
            if self.paused or self.parser.body:  # the reader holds it up, not the peer
                read_by = now + self.owner.config.read_timeout_s
            self.timer = loop.call_at(min(self.deadline, read_by), self._check_time)

    async def _wait(self) -> None:
        loop = self.owner._loop
        assert loop is not None
        waiter = self.waiter = loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, failure: TransportError) -> None:
        self.failure = failure
        self._discard()
        self._wake()

    def _stop_timer(self) -> None:
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None

    def _discard(self) -> None:
        """The connection cannot carry another request: close it."""
        self._stop_timer()
        conn = self.conn
        if conn is not None:
            conn.exchange = None
            conn.close()
