"""One request from a Locust user: sent with FastHttpUser's client, read line by line as
it arrives, turned into a loadkit record by the same ``RequestTrace`` as the asyncio
engine, with Locust's own request row on the side (the whole exchange as its time,
failures named by status and code). No Locust import: the user is passed in."""

from __future__ import annotations

from typing import Any

import gevent
from gevent.lock import BoundedSemaphore

from loadkit import records as R
from loadkit.locustfiles._agent import Agent
from loadkit.payloads import PreparedRequest
from loadkit.records import RequestRecord
from loadkit.scenario import Key
from loadkit.trace import RequestInfo, RequestTrace

REQUEST_ID_HEADER = "x-loadkit-request-id"


def send(
    user: Any,
    a: Agent,
    ttft: Any,
    key: Key,
    req: PreparedRequest,
    scheduled: float | None,
    sem: BoundedSemaphore | None = None,
) -> RequestRecord | None:
    """Send one request with ``user``'s client and record it (through ``a``, the process's
    agent; its TTFT also into ``ttft``, Locust stats of their own). ``sem`` is the phase's
    client-side cap per key (the wait for it is recorded as ``queued_s``). None when the
    run stopped before it was sent."""
    if sem is None:
        return _send(user, a, ttft, key, req, scheduled, 0.0)
    q0 = a.now()
    with sem:
        if a.stopping():
            return None
        return _send(user, a, ttft, key, req, scheduled, a.now() - q0)


def _send(
    user: Any,
    a: Agent,
    ttft: Any,
    key: Key,
    req: PreparedRequest,
    scheduled: float | None,
    queued: float,
) -> RequestRecord:
    info = RequestInfo(
        a.run_id,
        "locust",
        a.worker,
        a.next_id(),
        key.tier,
        key.label,
        req.endpoint,
        req.stream,
        req.model,
        1,
        scheduled,
    )
    headers = {
        "Authorization": f"Bearer {key.secret}",
        "Accept-Encoding": "identity",
        REQUEST_ID_HEADER: info.request_id,
    }
    if req.body is not None:
        headers["Content-Type"] = "application/json"
    nbytes = 0
    with a.in_flight():
        trace = RequestTrace(info, a.now(), queued)
        with user.client.request(
            req.method,
            req.path,
            data=req.body,
            headers=headers,
            stream=True,
            catch_response=True,
            name=req.kind,
        ) as resp:
            try:
                status = resp.status_code
                if not status:
                    rec = trace.fail(a.now(), _error_kind(getattr(resp, "error", None)))
                else:
                    trace.response(a.now(), status, _headers(resp.headers))
                    raw = resp._response
                    if req.stream and status == 200:
                        while True:
                            line = raw.readline(b"\n")
                            if not line:
                                break
                            nbytes += len(line)
                            trace.data(a.now(), line)
                    else:
                        body = resp.content or b""
                        nbytes = len(body)
                        trace.data(a.now(), body)
                    rec = trace.finish(a.now())
            except gevent.GreenletExit:
                rec = trace.fail(a.now(), R.CANCELLED)
                _report(resp, rec, nbytes)
                a.emit(rec)
                raise
            except Exception as exc:  # a reset or timeout mid-body: record it, tell Locust
                rec = trace.fail(a.now(), _error_kind(exc))
            _report(resp, rec, nbytes)
        a.emit(rec)
    if rec.first_token_s is not None and rec.transport_error is None:
        ms = round((rec.first_token_s - rec.send_s) * 1000)
        ttft.log_request("TTFT", req.kind, ms, 0)
    return rec


def _report(resp: Any, rec: RequestRecord, nbytes: int) -> None:
    """Locust's row: the whole exchange as the response time; failures by status and code."""
    resp.request_meta["response_time"] = (rec.end_s - rec.send_s) * 1000.0
    resp.request_meta["response_length"] = nbytes
    if rec.status == 200 and rec.transport_error is None and rec.error_code is None:
        resp.success()
    else:
        what = rec.error_code or rec.transport_error or "error"
        resp.failure(f"{rec.status} {what}" if rec.status else what)


def _headers(h: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in h.items()} if h is not None else {}


def _error_kind(exc: BaseException | None) -> str:
    if exc is None:
        return R.OTHER
    name = type(exc).__name__.lower()
    text = str(exc).lower()
    if isinstance(exc, ConnectionRefusedError) or "refused" in text:
        return R.REFUSED
    if "timeout" in name or "timed out" in text or isinstance(exc, TimeoutError):
        return R.TIMEOUT
    if isinstance(exc, ConnectionResetError | BrokenPipeError) or "reset" in text:
        return R.RESET
    if "closed" in text or "parse" in name or "incomplete" in text:
        return R.INCOMPLETE_STREAM
    return R.OTHER
