"""The asyncio engine's transport seam: how one HTTP request is sent and its answer read.

A transport delivers events in order — the status and headers when they arrive, then the
body bytes as they arrive — and the engine stamps each on its own clock. A failure below
HTTP is raised as one of the typed errors here; the engine alone turns them into a record's
``transport_error``. Implementations: ``http1_transport`` (loadkit's own HTTP/1.1 client,
the default), ``aiohttp_transport`` (``[target] http_client = "aiohttp"``) and, for tests,
an in-memory scripted one (``tests/engine/scripted.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass(frozen=True)
class ClientConfig:
    """A transport's settings, all explicit: a load tool that inherits a library's
    connection cap or total timeout measures itself, not the target."""

    connect_timeout_s: float = 10.0
    request_timeout_s: float = 600.0
    read_timeout_s: float = 120.0
    read_bufsize: int = 1 << 20  # unread body bytes before reading pauses (aiohttp: 64 KiB)


class TransportError(Exception):
    """The request failed below HTTP, for a reason none of the subclasses names."""


class TimedOut(TransportError):
    """A connect, read or whole-request timeout expired."""


class Refused(TransportError):
    """No connection could be made (refused, unreachable, name not resolved): the request
    never reached the target."""


class Reset(TransportError):
    """The connection broke (reset, closed by the peer) before the response was complete."""


class Incomplete(TransportError):
    """The body ended before its declared length, or its framing was broken."""


class Response(NamedTuple):
    """An answer whose status line and headers have arrived.

    ``read()`` returns the next bytes of the body as soon as any arrive, and ``b""`` once it
    has ended; it raises a :class:`TransportError` if the body cannot be completed. It is
    a plain awaitable rather than an async iterator so an adapter can hand over its
    client's own read method, adding nothing per chunk (and a named tuple, the cheapest
    immutable value to make once per request).
    """

    status: int
    headers: Mapping[str, str]
    read: Callable[[], Awaitable[bytes]]


class Milestones(Protocol):
    """Told by a transport, as it happens, of a point of a request that only the HTTP
    client sees (again if the client retries on a new connection: the last one counts). A
    transport that cannot see it never calls it."""

    def connected(self) -> None:
        """A connection is ready for the request: newly made, or reused from the pool."""


class Transport(Protocol):
    """Sends requests for one run: ``open()`` once, any number of concurrent ``send``,
    then ``close()``. No retries, no redirects, no caps: the engine decides all of that."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        milestones: Milestones | None = None,
    ) -> AbstractAsyncContextManager[Response]:
        """Entering sends the request and waits for the status and headers (raising a
        :class:`TransportError` if none come), calling ``milestones`` on the way; leaving
        releases the connection, and translates a failure raised while the body was
        read."""
        ...
