"""The HTTP layer under the app: aiohttp's per-connection request handler, changed where
the app cannot reach. A request aiohttp's parser refuses (bad header bytes, a line too
long, a method it does not know) gets the API's JSON error and a truth line instead of a
plain-text 400, and is never logged with its bytes: aiohttp quotes the offending header,
so a key followed by a control character would land in the log. A request head that
begins and does not finish within ``limits.header_timeout_s`` gets a 408 and the
connection is closed (aiohttp itself only closes connections idle for an hour).

aiohttp has no public hook for these, so this module subclasses ``RequestHandler`` and
reads three of its private attributes (``_messages``, ``_request_in_progress``,
``_request_count``); ``tests/server/test_http_protocol.py`` fails if they change."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong

from loadkit.server.app import METHODS
from loadkit.server.errors import ApiError
from loadkit.server.state import STATE, ServerState
from loadkit.server.truth import TruthRecord
from loadkit.server.wire import error_response

log = logging.getLogger("loadkit.server.http")


def _parse_error(exc: BaseException | None, max_line: int) -> tuple[ApiError, dict[str, str]]:
    """The API error for a request the parser refused, described by kind only."""
    if isinstance(exc, BadHttpMethod):
        err = ApiError(405, "method_not_allowed", "the request method is not one this API uses")
        return err, {"Allow": ", ".join(METHODS)}
    if isinstance(exc, LineTooLong):
        what = f"a request line or header field is longer than {max_line} bytes"
    else:
        kind = type(exc).__name__ if exc is not None else "HttpProcessingError"
        what = f"the request is not valid HTTP/1.1 ({kind})"
    return ApiError(400, "invalid_parameters", f"malformed request: {what}"), {}


class LoadkitRequestHandler(web.RequestHandler):
    def __init__(
        self, manager: web.Server, *, state: ServerState, header_timeout_s: float, **kw: Any
    ) -> None:
        super().__init__(manager, **kw)
        self._state = state
        self._header_timeout_s = header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None

    # --- malformed requests -------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp calls this for a request its parser refused (400) and for an
        exception that escaped the app (500; the middleware catches everything, so only a
        bug gets here). Never log ``exc`` or ``message``: they quote the request's bytes."""
        if request.writer.output_size > 0:
            raise ConnectionError("a response is under way; the connection is broken")
        now = time.perf_counter_ns()
        headers: dict[str, str] = {}
        if status >= 500:
            log.error("unhandled %s while answering a request", type(exc).__name__)
            err = ApiError(status, "internal_error", "internal error")
        elif isinstance(exc, HttpProcessingError) or status == 400:
            err, headers = _parse_error(exc, self.max_line_size)
        else:
            err = ApiError(status, "invalid_parameters", "the request was refused")
        self._truth(now, err)
        resp = error_response(err, headers)
        resp.force_close()
        return resp

    def _truth(self, arrival_ns: int, err: ApiError) -> None:
        """A truth line for a request the app never saw (method and path unknown)."""
        st = self._state
        st.counters.seen += 1
        rec = TruthRecord(
            request_id=None,
            key=None,
            method="",
            path="",
            endpoint="other",
            stream=False,
            arrival_ns=arrival_ns,
            finish_ns=time.perf_counter_ns(),
            status=err.status,
            error_code=err.code,
        )
        st.record(rec)

    # --- request head timeout ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before or self._messages or self._request_in_progress:
            self._stop_head_timer()  # a whole head arrived, or these bytes are a body
        elif data and self._head_timer is None and self.transport is not None:
            self._head_timer = self._loop.call_later(self._header_timeout_s, self._head_late)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        t = self.transport
        if t is None or self._messages or self._request_in_progress:
            return
        err = ApiError(
            408,
            "request_timeout",
            f"the request head did not arrive within {self._header_timeout_s:g} s "
            "(limits.header_timeout_s)",
        )
        self._truth(time.perf_counter_ns(), err)
        body = error_response(err).body
        assert isinstance(body, bytes)
        head = (
            "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        t.write(head.encode() + body)
        self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)


class _Server(web.Server):
    """A ``web.Server`` whose connections get ``LoadkitRequestHandler``."""

    def __init__(self, *args: Any, state: ServerState, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._state = state

    def __call__(self) -> web.RequestHandler:
        return LoadkitRequestHandler(
            self,
            state=self._state,
            header_timeout_s=self._state.config.limits.header_timeout_s,
            loop=self._loop,
            **self._kwargs,
        )


class ServerRunner(web.AppRunner):
    """``web.AppRunner`` serving through ``LoadkitRequestHandler``."""

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        return _Server(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=asyncio.get_running_loop(),
            state=self.app[STATE],
            **base._kwargs,
        )


def make_runner(app: web.Application, access_log: bool = False) -> ServerRunner:
    """The runner every entry point uses: access log only when asked, request bodies
    taken as sent (a compressed body is refused, not inflated), errors logged through
    ``loadkit.server.http`` (never with request bytes)."""
    from aiohttp.log import access_logger

    return ServerRunner(
        app,
        access_log=access_logger if access_log else None,
        logger=log,
        auto_decompress=False,
        shutdown_timeout=2.0,
    )
