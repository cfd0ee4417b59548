"""One request from a Locust user: addressed as the target wants (its path layout, its auth
header, extra headers), sent with FastHttpUser's client, read as it arrives, turned into a
loadkit record by the same ``RequestTrace`` as the asyncio engine, with Locust's own
request row on the side (the whole exchange as its time, failures named by status and
code). Retries after a 429 (``honour_retry_after``) are their own records.

Every request gets exactly one record whatever happens to it: answered, failed, timed out
at ``request_timeout_s``, cancelled by a stop while open, or cancelled while it waited for
a client-side slot (then it was never sent: status 0, ``queued_s`` kept). No Locust
import: the user is passed in."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.lock import BoundedSemaphore

from loadkit import records as R
from loadkit.locustfiles._agent import Agent
from loadkit.locustfiles._http import BodyReader, RequestDeadline, error_kind
from loadkit.outcomes import Backoff
from loadkit.payloads import PreparedRequest
from loadkit.records import RequestRecord
from loadkit.scenario import Key, LoadSpec
from loadkit.trace import RequestInfo, RequestTrace

log = logging.getLogger("loadkit")

REQUEST_ID_HEADER = "x-loadkit-request-id"
# A request cancelled while it waited for a client-side slot: never sent.
NOT_SENT = R.NOT_SENT
RETRY_AFTER_DEFAULT_S = 1.0  # a 429 without Retry-After, retried (the asyncio engine's)

# Closed loop: the pause after a request's last attempt, from its record (None: open loop).
PauseRule = Callable[[RequestRecord], float]


class UserBackoff:
    """A user's pause after each request: ``backoff``'s rule, with the count of this
    user's failures in a row (a non-2xx or no answer; a stop's cancellation is neither)."""

    def __init__(self, backoff: Backoff, think_s: float) -> None:
        self.backoff = backoff
        self.think_s = think_s
        self.failures = 0

    def pause(self, rec: RequestRecord) -> float:
        # A 429 ends a streak too (the target answers: the limiter under test spoke), as
        # in the asyncio engine.
        if 200 <= rec.status < 300 or rec.status == 429:
            self.failures = 0
        elif rec.transport_error not in (R.CANCELLED, R.NOT_SENT):
            self.failures += 1
        return self.backoff.pause(
            self.think_s, rec.status, rec.retry_after_s, rec.transport_error, self.failures
        )


class PhaseBackoff(UserBackoff):
    """A closed-loop user of a scenario's load phase: the phase's own rule
    (``LoadSpec.pause_after``: think time, its 429 setting)."""

    def __init__(self, load: LoadSpec) -> None:
        super().__init__(Backoff(limited_s=load.backoff_429_s), load.think_s)
        self.load = load

    def pause(self, rec: RequestRecord) -> float:
        super().pause(rec)  # the count of failures in a row
        return self.load.pause_after(
            rec.status, rec.retry_after_s, rec.transport_error, failures=self.failures
        )


def send(
    user: Any,
    a: Agent,
    ttft: Any,
    key: Key,
    req: PreparedRequest,
    scheduled: float | None,
    sem: BoundedSemaphore | None = None,
    pause: PauseRule | None = None,
) -> RequestRecord:
    """Send one request with ``user``'s client (and its retries after a 429 when the
    scenario honours Retry-After); every attempt's record goes to ``a``, the process's
    agent (its TTFT also into ``ttft``, Locust stats of their own). ``sem``: the phase's
    client-side cap per key (the wait is recorded as ``queued_s``). ``pause``: a closed-loop
    user's rule for the pause after the request, recorded in the last attempt's
    ``pause_s``. Returns the last attempt's record."""
    attempt = 1
    at = scheduled
    while True:
        rec = _attempt(user, a, ttft, key, req, at, sem, attempt)
        delay = _retry_delay(a, rec, attempt)
        if delay is None:
            if pause is not None and rec.transport_error not in (R.CANCELLED, R.NOT_SENT):
                rec.pause_s = pause(rec)
            a.emit(rec)
            return rec
        if pause is not None:
            rec.pause_s = delay
        a.emit(rec)
        # A retry belongs to its request: it may run into the drain, not past a stop.
        if a.stopped.wait(timeout=delay):
            return rec
        attempt += 1
        at = a.now()


def _retry_delay(a: Agent, rec: RequestRecord, attempt: int) -> float | None:
    """How long to wait before retrying ``rec`` (None: no retry), as the asyncio engine
    decides: a 429, Retry-After honoured, attempts left, the run not stopping."""
    p = a.policy
    if not p.honour_retry_after or rec.status != 429 or attempt > p.max_retries:
        return None
    if a.stopping():
        return None
    return rec.retry_after_s if rec.retry_after_s is not None else RETRY_AFTER_DEFAULT_S


def _attempt(
    user: Any,
    a: Agent,
    ttft: Any,
    key: Key,
    req: PreparedRequest,
    scheduled: float | None,
    sem: BoundedSemaphore | None,
    attempt: int,
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
        attempt,
        scheduled,
        req.prompt_tokens,
        req.max_tokens,
    )
    if sem is None:
        return _exchange(user, a, ttft, key, req, info, 0.0)
    q0 = a.now()
    g = gevent.getcurrent()
    a.queued.add(g)  # a stop cancels what waits here at once
    try:
        sem.acquire()
    except gevent.GreenletExit:
        a.emit(_not_sent(a, info, q0))
        raise
    finally:
        a.queued.discard(g)
    try:
        if a.stopping():
            return _not_sent(a, info, q0)
        return _exchange(user, a, ttft, key, req, info, a.now() - q0)
    finally:
        sem.release()


def _not_sent(a: Agent, info: RequestInfo, q0: float) -> RequestRecord:
    """The record of a request the run's stop cancelled before it had a slot."""
    t = a.now()
    return RequestTrace(info, t, t - q0).fail(t, NOT_SENT)


def _exchange(
    user: Any,
    a: Agent,
    ttft: Any,
    key: Key,
    req: PreparedRequest,
    info: RequestInfo,
    queued: float,
) -> RequestRecord:
    policy = a.policy
    headers = policy.api.headers(key.secret)
    headers[REQUEST_ID_HEADER] = info.request_id
    if req.body is not None:
        headers["Content-Type"] = "application/json"
    with a.in_flight():
        ex = _Exchange(user, a, RequestTrace(info, a.now(), queued), req)
        deadline = gevent.Timeout(policy.request_timeout_s, RequestDeadline)
        deadline.start()
        try:
            rec = ex.run(headers)
        except RequestDeadline:  # no answer within the bound (connect, send, headers)
            rec = ex.ended(R.TIMEOUT)
        except Exception as exc:
            # Whatever the HTTP client raised beyond the failures Locust catches: the
            # request may have reached the target, so it is recorded, never lost with
            # the task Locust would abandon.
            log.warning("loadkit: request %s failed in the client: %r", info.request_id, exc)
            rec = ex.ended(error_kind(exc, answered=ex.answered()))
        except BaseException:  # a stop (GreenletExit) or the process ending while open
            a.emit(ex.ended(R.CANCELLED))
            raise
        finally:
            deadline.close()
    if rec.first_token_s is not None and rec.transport_error is None:
        ms = round((rec.first_token_s - rec.send_s) * 1000)
        ttft.log_request("TTFT", req.kind, ms, 0)
    return rec


class _Exchange:
    """One attempt inside Locust's response context, which makes its request row."""

    __slots__ = ("user", "a", "trace", "req", "t0", "rec", "nbytes", "reported")

    def __init__(self, user: Any, a: Agent, trace: RequestTrace, req: PreparedRequest) -> None:
        self.user = user
        self.a = a
        self.trace = trace
        self.req = req
        self.t0 = time.perf_counter()
        self.rec: RequestRecord | None = None
        self.nbytes = 0
        self.reported = False

    def run(self, headers: dict[str, str]) -> RequestRecord:
        a, trace, req = self.a, self.trace, self.req
        with self.user.client.request(
            req.method,
            req.path,
            data=req.body,
            headers=headers,
            stream=True,  # every body is read here, raw, as it arrives
            catch_response=True,
            name=req.kind,
        ) as resp:
            reader: BodyReader | None = None
            try:
                status = resp.status_code
                if not status:
                    kind = error_kind(getattr(resp, "error", None), answered=False)
                    self.rec = trace.fail(a.now(), kind)
                else:
                    trace.response(a.now(), status, _headers(resp.headers))
                    reader = BodyReader(resp._response)
                    while chunk := reader.read_available():
                        self.nbytes += len(chunk)
                        trace.data(a.now(), chunk)
                    self.rec = trace.finish(a.now())
            except (gevent.GreenletExit, RequestDeadline) as stop:
                kind = R.CANCELLED if isinstance(stop, gevent.GreenletExit) else R.TIMEOUT
                self._report(resp, trace.fail(a.now(), kind))
                if kind == R.CANCELLED:
                    raise
            except Exception as exc:  # a reset, a read timeout, a cut body: record it
                self.rec = trace.fail(a.now(), error_kind(exc, answered=True))
            finally:
                if reader is not None:
                    reader.release()
            assert self.rec is not None
            self._report(resp, self.rec)
        return self.rec

    def answered(self) -> bool:
        """Whether the status line had arrived."""
        return bool(self.trace.rec.status)

    def ended(self, kind: str) -> RequestRecord:
        """The record of an attempt ended by ``kind`` (a stop, the request's deadline),
        with Locust's row if the response context has not made it."""
        rec = self.rec
        if rec is None:
            rec = self.rec = self.trace.fail(self.a.now(), kind)
        if not self.reported:
            self.reported = True
            self.user.environment.events.request.fire(
                request_type=self.req.method,
                name=self.req.kind,
                response_time=(time.perf_counter() - self.t0) * 1000.0,
                response_length=self.nbytes,
                exception=Exception(_failure_text(rec)),
                context={},
                response=None,
                url=self.req.path,
            )
        return rec

    def _report(self, resp: Any, rec: RequestRecord) -> None:
        """Locust's row: the whole exchange as its time; failures by status and code."""
        self.rec = rec
        if self.reported:
            return
        self.reported = True
        resp.request_meta["response_time"] = (rec.end_s - rec.send_s) * 1000.0
        resp.request_meta["response_length"] = self.nbytes
        if 200 <= rec.status < 300 and rec.transport_error is None and rec.error_code is None:
            resp.success()
        else:
            resp.failure(_failure_text(rec))


def _failure_text(rec: RequestRecord) -> str:
    what = rec.error_code or rec.transport_error or "error"
    return f"{rec.status} {what}" if rec.status else what


def _headers(h: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in h.items()} if h is not None else {}
