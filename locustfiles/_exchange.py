"""One HTTP request through a Locust ``FastHttpSession``, observed on time and turned into a
loadkit request record by the same :class:`loadkit.trace.RequestTrace` as the asyncio
engine; Locust's own request event gets the whole-stream response time and failures named
by status and API error code ("429 rate_limit_exceeded")."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass

import gevent
from gevent import GreenletExit
from geventhttpclient._parser import HTTPParseError
from geventhttpclient.response import HTTPConnectionClosed
from locust.exception import CatchResponseError

from loadkit import records as R
from loadkit.payloads import PreparedRequest
from loadkit.records import RequestRecord
from loadkit.trace import RequestInfo, RequestTrace

REQUEST_ID_HEADER = "x-loadkit-request-id"
# Every status is a response to read, not an exception: geventhttpclient otherwise releases
# the socket of a non-2xx before its body is read, and loadkit wants every body.
ALL_STATUSES = frozenset(range(100, 600))


class _TotalTimeout(Exception):
    """The whole request (long streams included) took longer than request_timeout_s."""


@dataclass(frozen=True)
class Outcome:
    record: RequestRecord
    nbytes: int


def request_name(req: PreparedRequest, tier: str) -> str:
    """The row name in Locust's stats: one row per request kind and tier."""
    return f"{req.kind} [{tier}]"


def failure_text(rec: RequestRecord) -> str | None:
    """Why Locust should count this request as failed (None = success)."""
    if rec.transport_error is not None:
        if rec.status:
            return f"{rec.status} {rec.error_code or rec.transport_error}"
        return f"transport {rec.transport_error}"
    if rec.status >= 400 or rec.error_code is not None:
        return f"{rec.status} {rec.error_code or 'error'}"
    return None


def transport_kind(exc: BaseException, after_headers: bool) -> str:
    """Map a geventhttpclient / socket exception to a loadkit transport error kind."""
    seen = 0
    while seen < 5:  # geventhttpclient wraps the cause in RetriesExceeded(original=...)
        inner = getattr(exc, "original", None) or exc.__dict__.get("last_error")
        if not isinstance(inner, BaseException) or inner is exc:
            break
        exc = inner
        seen += 1
    if isinstance(exc, _TotalTimeout | gevent.Timeout | TimeoutError | socket.timeout):
        return R.TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return R.REFUSED
    if isinstance(exc, HTTPConnectionClosed | HTTPParseError):
        return R.INCOMPLETE_STREAM if after_headers else R.RESET
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return R.RESET
    if isinstance(exc, OSError):
        return R.RESET if after_headers else R.REFUSED
    return R.OTHER


def _discard(resp: object) -> None:
    """Close the connection of a response whose body was not read to its end, so the pool
    never hands out a socket with a half-read body on it."""
    raw = getattr(resp, "_response", None)
    sock = getattr(raw, "_sock", None)
    pool = getattr(raw, "_pool", None)
    if raw is None or sock is None:
        return
    try:
        if pool is not None:
            pool.release_socket(sock)
        else:
            sock.close()
    finally:
        raw._sock = None
        if pool is not None:
            raw._pool = None


def exchange(
    session,  # locust.contrib.fasthttp.FastHttpSession
    now: Callable[[], float],
    info: RequestInfo,
    req: PreparedRequest,
    headers: dict[str, str],
    request_timeout_s: float,
    fire_request: Callable[..., None],
    queued_s: float = 0.0,
) -> Outcome:
    """Send ``req``, read its body as it arrives and return its record. Never raises except
    GreenletExit (the user is being stopped); the "cancelled" record is then attached to the
    exception as ``loadkit_record`` for the caller to write before re-raising."""
    name = request_name(req, info.tier)
    trace = RequestTrace(info, now(), queued_s)
    nbytes = 0
    timer = gevent.Timeout(request_timeout_s, _TotalTimeout)
    timer.start()
    resp = None
    try:
        resp = session.request(
            req.method,
            req.path,
            name=name,
            data=req.body,
            headers=headers,
            stream=True,
            catch_response=True,
        )
        t_headers = now()
        with resp:
            rec: RequestRecord
            try:
                status = resp.status_code
                if not status:
                    rec = trace.fail(t_headers, transport_kind(resp.error, False))
                else:
                    trace.response(t_headers, status, resp.headers)
                    raw = resp._response
                    if status == 200 and req.stream:
                        readline = raw.readline
                        while True:
                            line = readline(b"\n")
                            if not line:
                                break
                            nbytes += len(line)
                            trace.data(now(), line)
                        rest = raw.read()  # a last line without "\n"
                        if rest:
                            nbytes += len(rest)
                            trace.data(now(), rest)
                    else:
                        body = raw.read()
                        if body:
                            nbytes += len(body)
                            trace.data(now(), body)
                    rec = trace.finish(now())
            except GreenletExit as exc:
                _discard(resp)
                rec = trace.fail(now(), R.CANCELLED)
                _report(resp, rec, nbytes)
                exc.loadkit_record = rec  # type: ignore[attr-defined]
                raise
            except BaseException as exc:  # noqa: BLE001  (every failure is a record)
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                _discard(resp)
                rec = trace.fail(now(), transport_kind(exc, trace.rec.headers_s is not None))
            _report(resp, rec, nbytes)
        return Outcome(rec, nbytes)
    except GreenletExit as exc:
        if getattr(exc, "loadkit_record", None) is None:
            # Stopped before the response headers: Locust never saw this request.
            rec = trace.fail(now(), R.CANCELLED)
            exc.loadkit_record = rec  # type: ignore[attr-defined]
            fire_request(
                request_type=req.method,
                name=name,
                response_time=(rec.end_s - rec.send_s) * 1000.0,
                response_length=0,
                exception=CatchResponseError("transport cancelled"),
                context={},
            )
        raise
    except Exception as exc:  # noqa: BLE001
        # Raised inside geventhttpclient's send, outside the ``with`` block (the total
        # timeout, or anything Locust does not turn into a failed response).
        if resp is not None:
            _discard(resp)
        rec = trace.fail(now(), transport_kind(exc, False))
        fire_request(
            request_type=req.method,
            name=name,
            response_time=(rec.end_s - rec.send_s) * 1000.0,
            response_length=nbytes,
            exception=CatchResponseError(failure_text(rec) or "transport other"),
            context={},
        )
        return Outcome(rec, nbytes)
    finally:
        timer.close()


def _report(resp, rec: RequestRecord, nbytes: int) -> None:
    """Set what Locust reports when the ``with`` block exits: the whole exchange's time
    (not just the headers), the bytes read, and success or a failure named by status and
    code."""
    resp.request_meta["response_time"] = (rec.end_s - rec.send_s) * 1000.0
    resp.request_meta["response_length"] = nbytes
    why = failure_text(rec)
    if why is None:
        resp.success()
    else:
        resp.failure(why)
