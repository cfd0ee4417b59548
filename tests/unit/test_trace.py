"""One record per request, built from timed observations, the same shape for every outcome."""

from __future__ import annotations

import json

from loadkit.records import INCOMPLETE_STREAM, MALFORMED_EVENT, RESET, RequestRecord
from loadkit.trace import RequestInfo, RequestTrace, parse_limit_headers


def info(stream=True, endpoint="chat"):
    return RequestInfo(
        "run", "async", "w", "w-1", "free", "free-1", endpoint, stream, "m", scheduled_s=0.5
    )


def ev(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


ROLE = ev({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
TOK = ev({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]})
LAST = ev({"choices": [{"index": 0, "delta": {"content": "y"}, "finish_reason": "length"}]})
USAGE = ev({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
DONE = b"data: [DONE]\n\n"
HDRS = {
    "Content-Type": "text/event-stream",
    "X-RateLimit-Limit-Requests": "60",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-reset-requests": "1s",
}


def test_stream_times_come_from_content_chunks_only():
    t = RequestTrace(info(), send_s=1.0)
    t.response(1.1, 200, HDRS)
    t.data(1.2, ROLE)  # role-only: not a token
    t.data(1.3, TOK)
    t.data(1.4, TOK[:10])  # a chunk split mid-event arrives complete at 1.5
    t.data(1.5, TOK[10:] + LAST)
    t.data(1.6, USAGE + DONE)
    r = t.finish(1.7)
    assert (r.headers_s, r.first_token_s, r.last_token_s, r.end_s) == (1.1, 1.3, 1.5, 1.7)
    assert r.chunk_s == [1.3, 1.5, 1.5]
    assert r.content_chunks == 3 and r.finish_reason == "length"
    assert (r.prompt_tokens, r.completion_tokens) == (7, 3)
    assert (r.rl_limit_requests, r.rl_remaining_requests, r.rl_reset_requests_s) == (60, 59, 1.0)
    assert r.transport_error is None and r.error_code is None and r.scheduled_s == 0.5


def test_stream_without_done_is_incomplete():
    t = RequestTrace(info(), 0.0)
    t.response(0.1, 200, HDRS)
    t.data(0.2, TOK)
    assert t.finish(0.3).transport_error == INCOMPLETE_STREAM


def test_reset_mid_stream_keeps_status_and_tokens():
    t = RequestTrace(info(), 0.0)
    t.response(0.1, 200, HDRS)
    t.data(0.2, TOK)
    r = t.fail(0.3, RESET)
    assert (r.status, r.transport_error, r.chunk_s) == (200, RESET, [0.2])


def test_error_event_mid_stream():
    t = RequestTrace(info(), 0.0)
    t.response(0.1, 200, HDRS)
    t.data(0.2, TOK + ev({"error": {"message": "m", "type": "t", "code": "internal_error"}}))
    r = t.finish(0.3)
    assert r.error_code == "internal_error" and r.transport_error is None


def test_malformed_event():
    t = RequestTrace(info(), 0.0)
    t.response(0.1, 200, HDRS)
    t.data(0.2, b"data: {oops\n\n" + TOK + DONE)
    r = t.finish(0.3)
    assert r.transport_error == MALFORMED_EVENT and r.chunk_s == [0.2]


def test_429_body_and_retry_after():
    t = RequestTrace(info(), 0.0)
    t.response(
        0.1, 429, {"content-type": "application/json", "retry-after": "2", "retry-after-ms": "1500"}
    )
    t.data(0.11, b'{"error": {"message": "x", "type": "requests", "code": "rate_limit_exceeded"}}')
    r = t.finish(0.12)
    assert (r.status, r.error_code, r.retry_after_s) == (429, "rate_limit_exceeded", 1.5)
    assert r.first_token_s is None and r.chunk_s == []


def test_non_stream_success():
    t = RequestTrace(info(stream=False), 0.0)
    t.response(0.5, 200, {"content-type": "application/json"})
    t.data(
        0.6,
        json.dumps(
            {
                "choices": [{"index": 0, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 5},
            }
        ).encode(),
    )
    r = t.finish(0.6)
    assert (r.completion_tokens, r.finish_reason, r.first_token_s) == (5, "stop", None)


def test_streaming_and_non_streaming_records_have_the_same_shape():
    a = RequestTrace(info(), 0.0)
    a.response(0.1, 200, HDRS)
    a.data(0.2, TOK + DONE)
    b = RequestTrace(info(stream=False), 0.0)
    b.response(0.1, 200, {})
    b.data(0.2, b"{}")
    ra, rb = json.loads(a.finish(0.3).to_json()), json.loads(b.finish(0.3).to_json())
    assert ra.keys() == rb.keys()
    assert RequestRecord.from_dict(ra).stream and not RequestRecord.from_dict(rb).stream


def test_limit_headers_tolerate_garbage():
    h = parse_limit_headers(
        {
            "retry-after": "Wed, 21 Oct 2015 07:28:00 GMT",
            "x-ratelimit-remaining-requests": "many",
            "x-ratelimit-reset-requests": "soon",
        }
    )
    assert h.retry_after_s is None and h.remaining_requests is None and h.reset_requests_s is None
