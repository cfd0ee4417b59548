"""Builds one request record from the events an engine observes (sent, headers, bytes,
end, failure). Both engines drive this same code, so records have one shape whatever the
HTTP client. Pure: every time is passed in by the caller.

Whatever the server sends, the trace returns a record and raises nothing: bad JSON, JSON
nested past the parser's limit, invalid UTF-8, an SSE line or a body over its bound, a
compressed or unknown Content-Encoding all become fields of the record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from loadkit import records as R
from loadkit.chunks import Body, MalformedChunk, parse_body, parse_event_data
from loadkit.content_coding import (
    BodyDecoder,
    DecodeError,
    UnsupportedEncoding,
    body_decoder,
)
from loadkit.limit_headers import (
    LimitHeaders,
    header_getter,
    limit_headers_from,
    parse_limit_headers,
    short_content_type,
)
from loadkit.limit_signals import Refusal, attribute
from loadkit.records import RequestRecord
from loadkit.sse import MAX_LINE, SSEDecoder

__all__ = [
    "MAX_BODY",
    "LimitHeaders",
    "RequestInfo",
    "RequestTrace",
    "TraceLimits",
    "parse_limit_headers",
]

# A non-streamed body is held until it ends, then parsed for its error and usage. 64 MiB
# keeps any real one (a 32k-token completion with top-20 logprobs is ~40 MB of JSON) while
# a hostile or runaway body cannot grow a worker without bound.
MAX_BODY = 64 * 1024 * 1024
_PLAIN_TEXT = 1000  # of a non-JSON 429 body, read for the limit it names


class RequestInfo(NamedTuple):
    """What the engine knows about a request before it is sent (a named tuple: one is made
    per request, at a fifth of a frozen dataclass's cost)."""

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
    sent_prompt_tokens: int | None = None  # the client's count of the prompt it sent
    sent_max_tokens: int | None = None  # max_tokens x choices asked


@dataclass(frozen=True, slots=True)
class TraceLimits:
    """Bounds on what one response may make the trace hold."""

    max_line: int = MAX_LINE  # bytes in one SSE line
    max_body: int = MAX_BODY  # bytes of a non-streamed body, after decompression

    def __post_init__(self) -> None:
        for name in ("max_line", "max_body"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")


DEFAULT_LIMITS = TraceLimits()


class RequestTrace:
    """Collects one request's observations; ``finish`` or ``fail`` returns the record.

    Call order: ``response`` → ``data`` (any number) → ``finish``; or ``fail`` at any point.
    A streamed 200 body is decoded as SSE; any other body is read as one JSON document.
    """

    __slots__ = (
        "info",
        "rec",
        "limits",
        "_decoder",
        "_body",
        "_body_len",
        "_sse",
        "_done",
        "_finished",
        "_coding",
        "_refusal_headers",
        "_judged",
    )

    def __init__(
        self,
        info: RequestInfo,
        send_s: float,
        queued_s: float = 0.0,
        *,
        limits: TraceLimits = DEFAULT_LIMITS,
    ) -> None:
        self.info = info
        self.limits = limits
        # Positional (the record's field order), a third cheaper than by keyword: once per
        # request. tests/unit/test_record_path.py checks each value lands in its field.
        self.rec = RequestRecord(
            info.run_id,
            info.engine,
            info.worker,
            info.request_id,
            info.attempt,
            info.tier,
            info.key,
            info.endpoint,
            info.stream,
            info.model,
            info.scheduled_s,
            send_s,
            None,  # headers_s
            None,  # first_token_s
            None,  # last_token_s
            send_s,  # end_s
            [],  # chunk_s
            0,  # status
            None,  # error_code
            None,  # error_type
            None,  # transport_error
            None,  # prompt_tokens
            None,  # completion_tokens
            info.sent_prompt_tokens,
            info.sent_max_tokens,
            0,  # content_chunks
            None,  # finish_reason
            None,  # content_type
            None,  # rl_limit_requests
            None,  # rl_remaining_requests
            None,  # rl_reset_requests_s
            None,  # rl_limit_tokens
            None,  # rl_remaining_tokens
            None,  # rl_reset_tokens_s
            None,  # retry_after_s
            None,  # limit_kind
            None,  # limit_signal
            queued_s,
        )
        self._decoder: SSEDecoder | None = None
        self._body: list[bytes] | None = []  # None: over max_body, no longer kept
        self._body_len = 0
        self._sse = False
        self._done = False
        self._finished = False
        self._coding: BodyDecoder | None = None
        self._refusal_headers: dict[str, str] | None = None  # a 429's, for attribution
        self._judged = False

    def response(
        self, t: float, status: int, headers: Mapping[str, str], *, decoded: bool = False
    ) -> None:
        """Status line and headers received at ``t``. ``decoded``: the HTTP client has
        already removed the Content-Encoding (then the body is not decompressed again)."""
        rec = self.rec
        rec.headers_s = t
        rec.status = status
        get: Callable[[str], str | None]
        if status == 429:  # kept whole, for telling which limit refused
            lowered = {k.lower(): v for k, v in headers.items()}
            self._refusal_headers = lowered
            get = lowered.get
        else:
            get = header_getter(headers)
        lh = limit_headers_from(get)
        rec.rl_limit_requests = lh.limit_requests
        rec.rl_remaining_requests = lh.remaining_requests
        rec.rl_reset_requests_s = lh.reset_requests_s
        rec.rl_limit_tokens = lh.limit_tokens
        rec.rl_remaining_tokens = lh.remaining_tokens
        rec.rl_reset_tokens_s = lh.reset_tokens_s
        rec.retry_after_s = lh.retry_after_s
        ctype = get("content-type")
        rec.content_type = short_content_type(ctype)
        self._sse = status == 200 and (
            self.info.stream or (ctype is not None and "text/event-stream" in ctype)
        )
        if self._sse:
            self._decoder = SSEDecoder(self.limits.max_line)
        encoding = None if decoded else get("content-encoding")
        if encoding:
            try:
                self._coding = body_decoder(encoding)
            except UnsupportedEncoding:
                # Nothing of the body can be read: keep the status and headers only.
                rec.transport_error = R.UNSUPPORTED_ENCODING
                self._sse = False
                self._body = None

    def data(self, t: float, chunk: bytes) -> None:
        """Bytes of the body as they arrive at time ``t``."""
        if self._coding is not None:
            self._coded(t, chunk)
            return
        rec = self.rec
        if not self._sse:
            body = self._body
            if body is not None:
                self._body_len += len(chunk)
                if self._body_len <= self.limits.max_body:
                    body.append(chunk)
                else:  # what was kept goes too: it will not be parsed
                    self._body = None
                    if rec.transport_error is None:
                        rec.transport_error = R.BODY_TOO_LARGE
            return
        decoder = self._decoder
        if decoder is None:
            return
        for data in decoder.feed_data(chunk):
            if self._done:
                continue
            try:
                c = parse_event_data(data)
            except MalformedChunk:
                if rec.transport_error is None:
                    rec.transport_error = R.MALFORMED_EVENT
                continue
            if c.done:
                self._done = True
                continue
            if c.error_code is not None:
                rec.error_code = c.error_code
                rec.error_type = c.error_type
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

    def _coded(self, t: float, chunk: bytes) -> None:
        """A compressed body: decompressed piece by piece, each piece handled by ``data``
        as if it had arrived so (the decoder is set aside meanwhile)."""
        coding = self._coding
        assert coding is not None
        self._coding = None
        try:
            for piece in coding.feed(chunk):
                self.data(t, piece)
                if not self._sse and self._body is None:
                    return  # nothing more is kept: stop inflating for good (a zip bomb ends)
        except DecodeError:
            self._coding_failed()
            return
        self._coding = coding

    def _flush_coding(self, t: float) -> None:
        coding = self._coding
        if coding is None:
            return
        self._coding = None
        try:
            for piece in coding.flush():
                self.data(t, piece)
        except DecodeError:
            self._coding_failed()

    def _coding_failed(self) -> None:
        """Compressed data that does not decompress: nothing after it can be read."""
        self._coding = None
        self._sse = False
        self._body = None
        rec = self.rec
        if rec.transport_error in (None, R.MALFORMED_EVENT):
            rec.transport_error = R.ENCODING_ERROR

    def finish(self, t: float) -> RequestRecord:
        """The body ended normally (the server closed it or the length was reached)."""
        rec = self.rec
        rec.end_s = t
        if self._finished:
            return rec
        self._finished = True
        self._flush_coding(t)
        self._long_lines()
        body: Body | None = None
        raw: bytes | None = None
        if self._sse:
            if not self._done and rec.error_code is None and rec.transport_error is None:
                rec.transport_error = R.INCOMPLETE_STREAM
        elif rec.status:
            raw = self._take_body()
            if raw is not None:
                body = parse_body(raw)
                if body.error_code is not None:
                    rec.error_code = body.error_code
                    rec.error_type = body.error_type
                rec.prompt_tokens = body.prompt_tokens
                rec.completion_tokens = body.completion_tokens
                rec.finish_reason = body.finish_reason
                if (
                    body.malformed
                    and rec.status == 200
                    and self.info.endpoint != "models"
                    and rec.transport_error is None
                ):
                    rec.transport_error = R.MALFORMED_EVENT
        self._judge(body, raw)
        return rec

    def fail(self, t: float, kind: str) -> RequestRecord:
        """A transport failure (timeout, reset, refused, …) at time ``t``. A stream cut
        after its 200 keeps its status and what it delivered; ``kind`` says why it ended,
        unless the body had already failed for a reason of its own (a line or body over its
        bound, an encoding)."""
        rec = self.rec
        rec.end_s = t
        self._finished = True
        self._long_lines()
        if rec.transport_error is None or rec.transport_error == R.MALFORMED_EVENT:
            rec.transport_error = kind
        body: Body | None = None
        raw: bytes | None = None
        if not self._sse and rec.status:
            raw = self._take_body()
            if raw:
                body = parse_body(raw)
                if rec.error_code is None and body.error_code is not None:
                    rec.error_code = body.error_code
                    rec.error_type = body.error_type
        self._judge(body, raw)
        return rec

    def _long_lines(self) -> None:
        # Read once at the end, not on every read: the dropped event is all it changed.
        d = self._decoder
        if d is not None and d.long_lines and self.rec.transport_error in (None, R.MALFORMED_EVENT):
            self.rec.transport_error = R.LINE_TOO_LONG

    def _take_body(self) -> bytes | None:
        """The whole body, once; None when it went over the bound or did not decode."""
        body = self._body
        if body is None:
            return None
        self._body = []
        self._body_len = 0
        return body[0] if len(body) == 1 else b"".join(body)

    def _judge(self, body: Body | None, raw: bytes | None) -> None:
        """Which limit refused a 429, once, from its headers and body."""
        headers = self._refusal_headers
        if headers is None or self._judged:
            return
        self._judged = True
        code = type_ = message = None
        if body is not None:
            code, type_, message = body.error_code, body.error_type, body.error_message
            if body.malformed and raw:
                # A plain-text refusal (Envoy's "local_rate_limited"): its first words.
                message = raw[:_PLAIN_TEXT].decode("utf-8", "replace").strip()
        verdict = attribute(Refusal(code, type_, message, headers))
        self.rec.limit_kind = verdict.kind
        self.rec.limit_signal = verdict.signal
