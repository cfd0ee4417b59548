"""One record per request, built from timed observations, the same shape for every outcome."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from loadkit.records import INCOMPLETE_STREAM, MALFORMED_EVENT, RESET, RequestRecord
from loadkit.trace import RequestInfo, RequestTrace, TraceLimits, parse_limit_headers


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


# --- schema 2 fields --------------------------------------------------------------------


def test_error_type_content_type_and_token_headers_are_recorded():
    t = RequestTrace(info(stream=False), 0.0)
    t.response(
        0.1,
        429,
        {
            "Content-Type": "application/json; charset=utf-8",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "1m30.5s",
        },
    )
    t.data(0.11, b'{"error": {"message": "m", "type": "tokens", "code": "rate_limit_exceeded"}}')
    r = t.finish(0.12)
    assert (r.error_code, r.error_type, r.content_type) == (
        "rate_limit_exceeded",
        "tokens",
        "application/json",
    )
    assert (r.rl_limit_tokens, r.rl_remaining_tokens, r.rl_reset_tokens_s) == (30000, 0, 90.5)
    assert (r.limit_kind, r.limit_signal) == ("tokens", "type=tokens")
    assert json.loads(r.to_json())["schema"] == "loadkit.record/2"


def test_error_code_keeps_its_meaning_when_only_a_type_is_sent():
    t = RequestTrace(info(stream=False), 0.0)
    t.response(0.1, 429, {})
    t.data(0.11, b'{"type":"error","error":{"type":"rate_limit_error","message":"slow"}}')
    r = t.finish(0.12)
    assert (r.error_code, r.error_type) == ("rate_limit_error", "rate_limit_error")


def test_an_html_error_page_is_told_by_its_content_type():
    t = RequestTrace(info(stream=False), 0.0)
    t.response(0.1, 404, {"Content-Type": "text/html; charset=iso-8859-1"})
    t.data(0.11, b"<html><title>404 Not Found</title></html>")
    r = t.finish(0.12)
    assert (r.status, r.content_type, r.error_code, r.transport_error) == (
        404,
        "text/html",
        None,
        None,
    )


def test_error_event_mid_stream_keeps_its_type():
    t = RequestTrace(info(), 0.0)
    t.response(0.1, 200, HDRS)
    t.data(0.2, TOK + ev({"error": {"message": "m", "type": "server_error", "code": "boom"}}))
    r = t.finish(0.3)
    assert (r.error_code, r.error_type) == ("boom", "server_error")


# --- compressed bodies ------------------------------------------------------------------

STREAM = ROLE + TOK + TOK + LAST + USAGE + DONE


def plain_record(parts: list[bytes], headers=HDRS, stream=True):
    t = RequestTrace(info(stream=stream), 0.0)
    t.response(0.1, 200, headers)
    for p in parts:
        t.data(0.2, p)
    return t.finish(0.3)


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some servers send
    ],
)
def test_a_compressed_stream_is_measured_like_a_plain_one(coding, compress):
    data = compress(STREAM)
    headers = {**HDRS, "Content-Encoding": coding}
    want = plain_record([STREAM])
    assert want.transport_error is None and want.content_chunks == 3
    for parts in ([data], [data[i : i + 1] for i in range(len(data))]):
        got = plain_record(parts, headers)
        assert (got.chunk_s, got.content_chunks, got.finish_reason, got.transport_error) == (
            want.chunk_s,
            want.content_chunks,
            want.finish_reason,
            None,
        )
        assert (got.prompt_tokens, got.completion_tokens) == (7, 3)


def test_compressed_chunks_are_timed_when_they_arrive():
    z = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)  # one gzip stream, flushed per event
    t = RequestTrace(info(), 0.0)
    t.response(0.1, 200, {**HDRS, "content-encoding": "gzip"})
    for i, e in enumerate([ROLE, TOK, TOK, LAST, USAGE + DONE]):
        t.data(0.2 + i / 10, z.compress(e) + z.flush(zlib.Z_SYNC_FLUSH))
    t.data(0.8, z.flush())
    r = t.finish(0.9)
    assert r.chunk_s == pytest.approx([0.3, 0.4, 0.5]) and r.transport_error is None


def test_a_compressed_body():
    body = json.dumps(
        {"choices": [{"index": 0, "finish_reason": "stop"}], "usage": {"completion_tokens": 5}}
    ).encode()
    r = plain_record([gzip.compress(body)], {"content-encoding": "gzip"}, stream=False)
    assert (r.completion_tokens, r.finish_reason, r.transport_error) == (5, "stop", None)


def test_a_body_the_client_already_decoded_is_not_decoded_again():
    t = RequestTrace(info(stream=False), 0.0)
    t.response(0.1, 429, {"content-encoding": "gzip"}, decoded=True)
    t.data(0.11, b'{"error": {"code": "concurrency_limit_exceeded", "message": "m"}}')
    r = t.finish(0.12)
    assert (r.error_code, r.limit_kind, r.transport_error) == (
        "concurrency_limit_exceeded",
        "concurrency",
        None,
    )


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip, br"])
def test_an_unknown_encoding_is_named_not_an_incomplete_stream(coding):
    r = plain_record([b"\x8b\x02\x80garbage"], {**HDRS, "Content-Encoding": coding})
    assert (r.status, r.transport_error, r.content_chunks) == (200, "unsupported_encoding", 0)


def test_an_unknown_encoding_on_a_429_still_says_which_limit():
    t = RequestTrace(info(), 0.0)
    t.response(0.1, 429, {"content-encoding": "br", "x-ratelimit-remaining-requests": "0"})
    t.data(0.11, b"\x8b\x02\x80")
    r = t.finish(0.12)
    assert (r.transport_error, r.limit_kind) == ("unsupported_encoding", "requests")


def test_corrupt_compressed_data_is_an_encoding_error():
    good = gzip.compress(STREAM)
    bad = good[:30] + bytes(b ^ 0xFF for b in good[30:60]) + good[60:]
    r = plain_record([bad], {**HDRS, "content-encoding": "gzip"})
    assert r.transport_error == "encoding_error"
    r = plain_record([b"not gzip at all"], {"content-encoding": "gzip"}, stream=False)
    assert r.transport_error == "encoding_error"


def test_a_cut_compressed_stream_is_incomplete():
    data = gzip.compress(STREAM)
    r = plain_record([data[: len(data) // 2]], {**HDRS, "content-encoding": "gzip"})
    assert r.transport_error == "incomplete_stream"


def test_a_zip_bomb_stops_at_the_body_bound():
    bomb = gzip.compress(b" " * (32 * 1024 * 1024))
    t = RequestTrace(info(stream=False), 0.0, limits=TraceLimits(max_body=1024 * 1024))
    t.response(0.1, 200, {"content-encoding": "gzip"})
    t.data(0.2, bomb)
    r = t.finish(0.3)
    assert (r.transport_error, r.completion_tokens) == ("body_too_large", None)


# --- bounds -----------------------------------------------------------------------------


def test_a_body_over_the_bound_is_not_kept():
    t = RequestTrace(info(stream=False), 0.0, limits=TraceLimits(max_body=100))
    t.response(0.1, 200, {"content-type": "application/json"})
    t.data(0.2, b'{"usage": {"completion_tokens": 5}, "pad": "' + b"x" * 60)
    t.data(0.3, b"x" * 60 + b'"}')
    r = t.finish(0.4)
    assert (r.transport_error, r.completion_tokens, r.status) == ("body_too_large", None, 200)


def test_a_stream_line_over_the_bound_is_recorded_and_the_rest_measured():
    huge = b"data: " + b"x" * 5000 + b"\n\n"
    t = RequestTrace(info(), 0.0, limits=TraceLimits(max_line=1024))
    t.response(0.1, 200, HDRS)
    t.data(0.2, TOK)
    for i in range(0, len(huge), 700):
        t.data(0.3, huge[i : i + 700])
    t.data(0.4, LAST + USAGE + DONE)
    r = t.finish(0.5)
    assert (r.transport_error, r.chunk_s, r.finish_reason) == (
        "line_too_long",
        [0.2, 0.4],
        "length",
    )


def test_the_default_line_bound_is_one_mebibyte():
    line = b"data: " + b"y" * (1024 * 1024) + b"\n\n"
    r = plain_record([TOK, line, DONE])
    assert (r.transport_error, r.content_chunks) == ("line_too_long", 1)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_body"):
        TraceLimits(max_body=0)
    with pytest.raises(ValueError, match="max_line"):
        TraceLimits(max_line=-1)


# --- hostile payloads -------------------------------------------------------------------

NESTED = b"[" * 100_000 + b"]" * 100_000


def test_deeply_nested_json_in_an_event_is_a_malformed_event():
    r = plain_record([TOK, b"data: " + NESTED + b"\n\n", LAST, DONE])
    assert (r.transport_error, r.content_chunks) == ("malformed_event", 2)


def test_deeply_nested_json_in_a_body_is_malformed_not_an_exception():
    for status in (200, 429, 500):
        t = RequestTrace(info(stream=False), 0.0)
        t.response(0.1, status, {"content-type": "application/json"})
        t.data(0.2, b'{"error": ' + NESTED + b"}")
        r = t.finish(0.3)
        assert r.status == status and r.error_code in (None, "unknown_error")
    t = RequestTrace(info(stream=False), 0.0)
    t.response(0.1, 500, {})
    t.data(0.2, NESTED)
    r = t.fail(0.3, RESET)  # the Locust engine re-parses the body inside its except
    assert (r.status, r.transport_error) == (500, RESET)


def test_a_cr_only_stream_is_recorded_like_lf():
    cr = STREAM.replace(b"\n", b"\r")
    assert plain_record([cr]) == plain_record([STREAM])
    assert plain_record([cr[i : i + 1] for i in range(len(cr))]) == plain_record([STREAM])


def test_invalid_utf8_in_content_is_replaced():
    r = plain_record([b'data: {"choices":[{"index":0,"delta":{"content":"\xff"}}]}\n\n', DONE])
    assert (r.content_chunks, r.transport_error) == (1, None)


def test_hostile_values_fit_the_record_types():
    e = ev(
        {
            "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": {"a": [1]}}],
            "usage": {"prompt_tokens": 10**30, "completion_tokens": True},
        }
    )
    r = plain_record([e, ev({"error": {"code": ["x"] * 1000, "type": "t" * 10_000}}), DONE])
    assert r.finish_reason is None and r.prompt_tokens is None and r.completion_tokens is None
    # A code that is not a scalar is no code: the type stands in, as for a missing code.
    assert r.error_code == r.error_type == "t" * 100


def test_after_the_body_bound_nothing_more_is_inflated():
    bomb = gzip.compress(b" " * (8 * 1024 * 1024))
    t = RequestTrace(info(stream=False), 0.0, limits=TraceLimits(max_body=1024 * 1024))
    t.response(0.1, 200, {"content-encoding": "gzip"})
    t.data(0.2, bomb[:4096])
    assert t.rec.transport_error == "body_too_large" and t._coding is None
    t.data(0.3, bomb[4096:])  # the rest arrives: dropped without decompressing
    assert t.finish(0.4).transport_error == "body_too_large"
