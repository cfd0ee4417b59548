"""Reading a FastHttpUser's answer as it arrives, and naming how an exchange failed.

Locust's FastHttpUser reads bodies in whole blocks (``iter_content``) or up to a delimiter
(``readline``), so small SSE events would wait for a full block, a CR-only stream never
yields a line, and one long line is rescanned on every read. ``read_available`` instead
returns whatever bytes of the body have arrived, as soon as any have (what the asyncio
engine's ``readany`` does): the trace's SSE decoder finds the lines, in linear time,
with its own bound on a line. Bodies are read raw — never decompressed here — so the
trace decodes gzip/deflate piece by piece with its bounds, as it does for the asyncio
engine. Imports gevent and geventhttpclient, never Locust.
"""

from __future__ import annotations

import socket
from typing import Any

import gevent
from geventhttpclient.response import HTTPConnectionClosed, HTTPParseError

from loadkit import records as R

BLOCK = 64 * 1024  # at most this much per socket read
YIELD_EVERY = BLOCK  # a body arriving faster than it is read lets others run this often
# A pause above 0: sleep(0) runs other ready greenlets but may skip the loop's poll for I/O,
# so the other streams' bytes would still wait.
YIELD_S = 1e-6


class RequestDeadline(BaseException):
    """``request_timeout_s`` expired. A BaseException (as gevent's own Timeout is) so no
    ``except Exception`` on the way — Locust's, geventhttpclient's — takes it for one of
    its own failures."""


class BodyReader:
    """Reads one geventhttpclient response body as it arrives."""

    __slots__ = ("raw", "_since_yield")

    def __init__(self, raw: Any) -> None:
        self.raw = raw  # geventhttpclient's HTTPSocketPoolResponse
        self._since_yield = 0

    def read_available(self) -> bytes:
        """The body bytes that have arrived (waiting for some if none have); ``b""`` at the
        end of the body. Raises when the connection ends before the body does."""
        raw = self.raw
        while True:
            buf = raw._body_buffer
            if buf:
                data = bytes(buf)
                del buf[:]
                self._since_yield += len(data)
                if self._since_yield >= YIELD_EVERY:
                    # Bytes keep coming without a wait: give the other requests of this
                    # process their turn (a 24 MB line would otherwise hold them all).
                    self._since_yield = 0
                    gevent.sleep(YIELD_S)
                return data
            if raw.message_complete:
                return b""
            sock = raw._sock
            if sock is None:
                raise HTTPConnectionClosed("connection closed")
            try:
                got = sock.recv(BLOCK)
                raw.feed(got)  # an empty read tells the parser the connection ended
            except BaseException:
                raw.release()
                raise
            if not got and not raw.message_complete:
                raw.release()
                raise HTTPConnectionClosed("connection closed before the end of the body")

    def release(self) -> None:
        """Give the connection back (or close it, when the body was not read to its end)."""
        self.raw.release()


def error_kind(exc: BaseException | None, answered: bool) -> str:
    """The record's ``transport_error`` for a failed exchange, named as the asyncio engine
    names the same failure. ``answered``: the status line had arrived."""
    exc = _cause(exc)
    if exc is None:
        return R.OTHER
    if isinstance(exc, RequestDeadline | TimeoutError | socket.timeout | gevent.Timeout):
        return R.TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return R.REFUSED
    if isinstance(exc, HTTPConnectionClosed):
        # Closed before any answer: the asyncio engine's "server disconnected" (reset);
        # closed inside a body: a body that did not arrive whole.
        return R.INCOMPLETE_STREAM if answered else R.RESET
    if isinstance(exc, HTTPParseError):
        return R.INCOMPLETE_STREAM if answered else R.OTHER
    if isinstance(exc, ConnectionError | OSError):
        if isinstance(exc, OSError) and not isinstance(exc, ConnectionError):
            text = str(exc).lower()
            if "timed out" in text:
                return R.TIMEOUT
            if "refused" in text:
                return R.REFUSED
            if "unreachable" in text or "name or service" in text or "nodename" in text:
                return R.REFUSED
        return R.RESET
    return R.OTHER


def _cause(exc: BaseException | None) -> BaseException | None:
    """The failure under geventhttpclient's wrappers (``RetriesExceeded(original=...)``)."""
    seen = 0
    while exc is not None and seen < 5:
        inner = getattr(exc, "original", None)
        if not isinstance(inner, BaseException):
            return exc
        exc = inner
        seen += 1
    return exc
