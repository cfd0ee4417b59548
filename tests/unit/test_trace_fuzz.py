"""Whatever a server sends, RequestTrace returns one record and raises nothing, and the
record is valid: every field has its schema type, and it round-trips as strict JSON."""

from __future__ import annotations

import gzip
import json
import math
import zlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadkit.limit_signals import LIMIT_KINDS
from loadkit.records import TRANSPORT_ERRORS, RequestRecord
from loadkit.trace import RequestInfo, RequestTrace, TraceLimits

INT_FIELDS = {
    "attempt",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "content_chunks",
    "rl_limit_requests",
    "rl_remaining_requests",
    "rl_limit_tokens",
    "rl_remaining_tokens",
}
HEADER_NAMES = [
    "content-type",
    "content-encoding",
    "date",
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "rate_limit_type",
    "anthropic-ratelimit-tokens-remaining",
    "x-ai-ratelimit-remaining-minute-openai",
    "x-envoy-ratelimited",
    "X-Something",
]
HEADER_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "0",
            "-1",
            "1e999",
            "nan",
            "6m0s",
            "9" * 400 + "s",
            "gzip",
            "deflate",
            "br",
            "identity",
            "text/event-stream",
            "application/json",
            "Tue, 01 Dec 2026 10:00:30 GMT",
            "requests",
            "max_parallel_requests",
        ]
    ),
)
HEADERS = st.dictionaries(st.sampled_from(HEADER_NAMES), HEADER_VALUES, max_size=8)
STATUS = st.sampled_from([200, 200, 200, 400, 404, 429, 429, 500, 503])
ENDING = st.sampled_from(["finish", "reset", "timeout", "cancelled", "finish+fail"])

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["[DONE]", "rate_limit_exceeded", "stop", "tokens"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "choices",
                    "delta",
                    "content",
                    "text",
                    "index",
                    "finish_reason",
                    "usage",
                    "prompt_tokens",
                    "completion_tokens",
                    "error",
                    "code",
                    "type",
                    "message",
                    "error_type",
                    "role",
                    "tool_calls",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)

LEAF = JSON_VALUES | st.integers() | st.sampled_from([0, 2**63, -(2**63) - 1, 10**30, True])
# OpenAI's shapes with hostile leaves: what random JSON almost never builds.
SHAPED = st.one_of(
    st.fixed_dictionaries(
        {
            "choices": st.lists(
                st.fixed_dictionaries(
                    {
                        "index": LEAF,
                        "delta": st.fixed_dictionaries({"content": LEAF, "role": LEAF}) | LEAF,
                        "text": LEAF,
                        "finish_reason": LEAF,
                    }
                ),
                max_size=3,
            )
            | LEAF,
            "usage": st.fixed_dictionaries({"prompt_tokens": LEAF, "completion_tokens": LEAF})
            | LEAF,
        }
    ),
    st.fixed_dictionaries(
        {
            "error": st.fixed_dictionaries({"code": LEAF, "type": LEAF, "message": LEAF}) | LEAF,
            "error_type": LEAF,
        }
    ),
)


def info(stream: bool) -> RequestInfo:
    return RequestInfo("run", "async", "w", "w-1", "free", "free-1", "chat", stream, "m")


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(min(c, len(data)) for c in cuts)
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def run(
    stream: bool,
    status: int,
    headers: dict[str, str],
    parts: list[bytes],
    ending: str,
    limits: TraceLimits,
) -> RequestRecord:
    t = RequestTrace(info(stream), 0.0, limits=limits)
    t.response(0.1, status, headers)
    for i, p in enumerate(parts):
        t.data(0.2 + i * 1e-3, p)
    if ending == "finish":
        return t.finish(1.0)
    if ending == "finish+fail":
        t.finish(1.0)
        return t.fail(1.1, "reset")
    return t.fail(1.0, ending)


def assert_valid(rec: RequestRecord) -> None:
    assert isinstance(rec, RequestRecord)

    def no_constants(name: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {name}")

    d = json.loads(rec.to_json(), parse_constant=no_constants)
    assert RequestRecord.from_dict(d).to_json() == rec.to_json()
    for name, v in d.items():
        if v is None:
            continue
        if name in INT_FIELDS:
            assert type(v) is int and -(2**63) <= v < 2**63, (name, v)
        elif name == "chunk_s":
            assert all(type(x) is float for x in v)
        elif name == "stream":
            assert type(v) is bool
        elif name.endswith("_s"):
            assert type(v) in (int, float) and math.isfinite(v), (name, v)
        else:
            assert type(v) is str and len(v) <= 2000, (name, v)
    assert rec.transport_error is None or rec.transport_error in TRANSPORT_ERRORS
    assert rec.limit_kind is None or rec.limit_kind in LIMIT_KINDS
    assert rec.limit_kind is None or rec.status == 429


SMALL = TraceLimits(max_line=64, max_body=512)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Structured JSON examples cost ~30 ms each (json.dumps, compression): fewer of them.
FUZZ_JSON = settings(FUZZ, max_examples=150)


@FUZZ
@given(
    st.booleans(),
    STATUS,
    HEADERS,
    st.binary(max_size=600),
    st.lists(st.integers(0, 600), max_size=8),
    ENDING,
    st.sampled_from([SMALL, TraceLimits()]),
)
def test_arbitrary_bytes(stream, status, headers, body, cuts, ending, limits):
    assert_valid(run(stream, status, headers, cut(body, cuts), ending, limits))


@FUZZ_JSON
@given(
    st.lists(JSON_VALUES | SHAPED, max_size=6),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.sampled_from(["identity", "gzip", "deflate", "deflate-raw"]),
    st.booleans(),
    st.lists(st.integers(0, 2000), max_size=8),
    ENDING,
    st.sampled_from([200, 429]),
)
def test_hostile_json_in_sse_events(values, eol, coding, done, cuts, ending, status):
    events = b"".join(
        b"data: " + json.dumps(v).encode() + b"\n\n" if not isinstance(v, str) else b"data: \n\n"
        for v in values
    )
    if done:
        events += b"data: [DONE]\n\n"
    events = events.replace(b"\n", eol)
    headers = {"content-type": "text/event-stream"}
    if coding == "gzip":
        events, headers["content-encoding"] = gzip.compress(events), "gzip"
    elif coding.startswith("deflate"):
        z = zlib.compress(events)
        events, headers["content-encoding"] = (z if coding == "deflate" else z[2:-4]), "deflate"
    assert_valid(run(True, status, headers, cut(events, cuts), ending, TraceLimits()))


@FUZZ_JSON
@given(JSON_VALUES | SHAPED, STATUS, st.booleans(), ENDING)
def test_hostile_json_bodies(value, status, stream, ending):
    body = json.dumps(value).encode()
    headers = {"content-type": "application/json"}
    assert_valid(run(stream, status, headers, [body], ending, TraceLimits()))
    wrapped = json.dumps({"error": value, "message": value, "detail": value}).encode()
    assert_valid(run(stream, status, headers, [wrapped], ending, TraceLimits()))


@settings(max_examples=20, deadline=None)
@given(st.integers(900, 100_000), st.sampled_from(["[", '{"a":', '[{"error":']), STATUS)
def test_nesting_at_any_depth(depth, opener, status):
    closer = {"[": "]", '{"a":': "}", '[{"error":': "}]"}[opener]
    for text in (opener * depth, opener * depth + "1" + closer * depth):  # cut, and whole
        nested = text.encode()
        for stream, body in ((True, b"data: " + nested + b"\n\ndata: [DONE]\n\n"), (False, nested)):
            for ending in ("finish", "reset"):
                assert_valid(run(stream, status, {}, [body], ending, TraceLimits()))
