"""Builds one request record from the events an engine observes (sent, headers, bytes,
end, failure). Both engines drive this same code, so records have one shape whatever the
HTTP client. Pure: every time is passed in by the caller."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from loadkit.chunks import MalformedChunk, parse_body, parse_event_data
from loadkit.durations import parse_duration
from loadkit.records import INCOMPLETE_STREAM, MALFORMED_EVENT, RequestRecord
from loadkit.sse import SSEDecoder


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the engine knows about a request before it is sent."""

    run_id: str
    engine: str
    worker: str
    request_id: str
    tier: str
    key: str  # label
    endpoint: str
    stream: bool
    model: str | None
    attempt: int = 1
    scheduled_s: float | None = None


@dataclass(frozen=True, slots=True)
class LimitHeaders:
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    retry_after_s: float | None = None


def parse_limit_headers(headers: Mapping[str, str]) -> LimitHeaders:
    """Read ``x-ratelimit-*`` and ``retry-after(-ms)``; header names case-insensitive.
    A value that does not parse is treated as absent rather than failing the request."""
    get = _getter(headers)
    ms = _float(get("retry-after-ms"))
    # An HTTP-date retry-after is left unparsed (absent).
    retry = ms / 1000.0 if ms is not None else _float(get("retry-after"))
    reset = get("x-ratelimit-reset-requests")
    reset_s: float | None
    try:
        reset_s = parse_duration(reset) if reset else None
    except ValueError:
        reset_s = None
    return LimitHeaders(
        limit_requests=_int(get("x-ratelimit-limit-requests")),
        remaining_requests=_int(get("x-ratelimit-remaining-requests")),
        reset_requests_s=reset_s,
        retry_after_s=retry,
    )


class RequestTrace:
    """Collects one request's observations; ``record()`` returns the finished record.

    Call order: ``sent`` → ``response`` → ``data`` (any number) → ``finish``; or ``fail``
    at any point after ``sent``. A streamed 200 body is decoded as SSE; any other body is
    read as one JSON document.
    """

    __slots__ = ("info", "rec", "_decoder", "_body", "_sse", "_done", "_finished")

    def __init__(self, info: RequestInfo, send_s: float, queued_s: float = 0.0) -> None:
        self.info = info
        self.rec = RequestRecord(
            run_id=info.run_id,
            engine=info.engine,
            worker=info.worker,
            request_id=info.request_id,
            attempt=info.attempt,
            tier=info.tier,
            key=info.key,
            endpoint=info.endpoint,
            stream=info.stream,
            model=info.model,
            scheduled_s=info.scheduled_s,
            send_s=send_s,
            headers_s=None,
            first_token_s=None,
            last_token_s=None,
            end_s=send_s,
            queued_s=queued_s,
        )
        self._decoder: SSEDecoder | None = None
        self._body: list[bytes] = []
        self._sse = False
        self._done = False
        self._finished = False

    def response(self, t: float, status: int, headers: Mapping[str, str]) -> None:
        rec = self.rec
        rec.headers_s = t
        rec.status = status
        lh = parse_limit_headers(headers)
        rec.rl_limit_requests = lh.limit_requests
        rec.rl_remaining_requests = lh.remaining_requests
        rec.rl_reset_requests_s = lh.reset_requests_s
        rec.retry_after_s = lh.retry_after_s
        ctype = _getter(headers)("content-type") or ""
        self._sse = status == 200 and (self.info.stream or "text/event-stream" in ctype)
        if self._sse:
            self._decoder = SSEDecoder()

    def data(self, t: float, chunk: bytes) -> None:
        """Bytes of the body as they arrive at time ``t``."""
        if not self._sse:
            self._body.append(chunk)
            return
        assert self._decoder is not None
        rec = self.rec
        for ev in self._decoder.feed(chunk):
            if self._done:
                continue
            try:
                c = parse_event_data(ev.data)
            except MalformedChunk:
                if rec.transport_error is None:
                    rec.transport_error = MALFORMED_EVENT
                continue
            if c.done:
                self._done = True
                continue
            if c.error_code is not None:
                rec.error_code = c.error_code
                continue
            if c.content:
                if rec.first_token_s is None:
                    rec.first_token_s = t
                rec.last_token_s = t
                rec.content_chunks += c.content_choices
                if c.content_choice0:
                    rec.chunk_s.append(t)
            if c.finish_reason is not None:
                rec.finish_reason = c.finish_reason
            if c.completion_tokens is not None:
                rec.completion_tokens = c.completion_tokens
            if c.prompt_tokens is not None:
                rec.prompt_tokens = c.prompt_tokens

    def finish(self, t: float) -> RequestRecord:
        """The body ended normally (the server closed it or the length was reached)."""
        rec = self.rec
        rec.end_s = t
        if self._finished:
            return rec
        self._finished = True
        if self._sse:
            if not self._done and rec.error_code is None and rec.transport_error is None:
                rec.transport_error = INCOMPLETE_STREAM
        elif self._body or rec.status:
            body = parse_body(b"".join(self._body))
            self._body = []
            if body.error_code is not None:
                rec.error_code = body.error_code
            rec.prompt_tokens = body.prompt_tokens
            rec.completion_tokens = body.completion_tokens
            rec.finish_reason = body.finish_reason
            if body.malformed and rec.status == 200 and self.info.endpoint != "models":
                rec.transport_error = MALFORMED_EVENT
        return rec

    def fail(self, t: float, kind: str) -> RequestRecord:
        """A transport failure (timeout, reset, refused, …) at time ``t``. A stream cut
        after its 200 keeps its status and what it delivered; the kind says why it ended."""
        rec = self.rec
        rec.end_s = t
        self._finished = True
        if rec.transport_error is None or rec.transport_error == MALFORMED_EVENT:
            rec.transport_error = kind
        if not self._sse and self._body and rec.status:
            body = parse_body(b"".join(self._body))
            rec.error_code = rec.error_code or body.error_code
        return rec


def _getter(headers: Mapping[str, str]):
    # aiohttp's CIMultiDictProxy and requests' CaseInsensitiveDict are case-insensitive;
    # a plain dict may not be.
    if hasattr(headers, "getall") or type(headers).__name__ == "CaseInsensitiveDict":
        return headers.get
    lowered = {k.lower(): v for k, v in headers.items()}
    return lowered.get


def _int(v: str | None) -> int | None:
    if v is None:
        return None
    try:
        return int(v.strip())
    except ValueError:
        return None


def _float(v: str | None) -> float | None:
    if v is None:
        return None
    try:
        return float(v.strip())
    except ValueError:
        return None
