"""The asyncio engine's per-request shortcuts give exactly what the general code gives: the
record a trace starts from, the SSE data a buffer of whole events yields, the body a prompt
makes, the limit headers a response without any carries, the JSON line of a record."""

from __future__ import annotations

import json
import math
import random

import pytest

from loadkit.api import OPENAI, SEED
from loadkit.limit_headers import LimitHeaders, parse_limit_headers
from loadkit.payloads import counted_prompt_tokens, prepare, prompt_text
from loadkit.records import RECORD_FIELDS, RequestRecord
from loadkit.sse import SSEDecoder
from loadkit.trace import RequestInfo, RequestTrace


def test_a_trace_starts_with_each_request_value_in_its_own_field() -> None:
    info = RequestInfo("run-a", "async", "w-3", "w-3-17", "pro", "pro-2", "completions", True,
                       "m-x", 4, 12.5, 33, 44)  # fmt: skip
    rec = RequestTrace(info, 13.25, 0.75).rec
    assert rec == RequestRecord(
        run_id="run-a",
        engine="async",
        worker="w-3",
        request_id="w-3-17",
        attempt=4,
        tier="pro",
        key="pro-2",
        endpoint="completions",
        stream=True,
        model="m-x",
        scheduled_s=12.5,
        send_s=13.25,
        headers_s=None,
        first_token_s=None,
        last_token_s=None,
        end_s=13.25,
        queued_s=0.75,
        sent_prompt_tokens=33,
        sent_max_tokens=44,
    )
    assert rec.chunk_s == [] and rec.chunk_s is not RequestTrace(info, 1.0).rec.chunk_s


def _events(decoder: SSEDecoder, chunk: bytes) -> list[bytes]:
    return [e.data.encode() for e in decoder.feed(chunk)]


@pytest.mark.parametrize(
    "stream",
    [
        b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n',
        b"data: \n\n",  # empty data
        b"data:  two spaces\n\n",
        b"data: x\n\n: keep-alive\n\ndata: y\n\n",  # a comment between events
        b"data: line1\ndata: line2\n\ndata: z\n\n",  # a two-line event
        b"event: error\ndata: {}\n\ndata: after\n\n",
        b"data: a\n\ndata: b\n\ndata: c\r\n\r\n",
        b"data:nospace\n\ndata: q\n\n",
        b"data: one\n\ndata: two",  # the last event still open
        b"id: 7\ndata: x\n\n",
    ],
)
def test_feed_data_yields_the_data_feed_yields(stream: bytes) -> None:
    for cut in range(len(stream) + 1):
        a, b = SSEDecoder(), SSEDecoder()
        got = a.feed_data(stream[:cut]) + a.feed_data(stream[cut:])
        assert got == _events(b, stream[:cut]) + _events(b, stream[cut:]), cut
        assert a.pending == b.pending


def test_a_buffer_of_whole_events_then_an_event_field_is_not_carried_over() -> None:
    d = SSEDecoder()
    assert d.feed_data(b"data: 1\n\ndata: 2\n\n") == [b"1", b"2"]
    assert d.feed(b"event: ping\ndata: 3\n\n") == [("3", "ping", None)]
    assert d.feed(b"data: 4\n\n") == [("4", None, None)]


@pytest.mark.parametrize("kind", ["chat", "chat_stream", "completions", "completions_stream"])
@pytest.mark.parametrize("words", [0, 1, 7, 8192, 9000])
def test_a_request_body_carries_the_prompt_text_the_same_draws_give(kind: str, words: int) -> None:
    for layout in (SEED, OPENAI):
        rng, same = random.Random(words), random.Random(words)
        for _ in range(3):
            req = prepare(kind, "m%s\u00e9", words, 16, rng, layout)
            assert req.body is not None
            body = json.loads(req.body)
            text = prompt_text(words, same)
            if kind.startswith("chat"):
                assert body["messages"] == [{"role": "user", "content": text}]
                assert req.path == layout.chat
            else:
                assert body["prompt"] == text
                assert req.path == layout.completions
            assert body["model"] == "m%s\u00e9" and body["max_tokens"] == 16
            assert body["stream"] is kind.endswith("_stream")
            assert req.prompt_tokens == counted_prompt_tokens(req.endpoint, words)
        assert rng.random() == same.random()  # the same draws, no more


def test_limit_headers_are_read_only_when_present() -> None:
    assert parse_limit_headers({"Content-Type": "application/json"}) == LimitHeaders()
    assert parse_limit_headers({"Retry-After": "3"}) == LimitHeaders(retry_after_s=3.0)
    assert parse_limit_headers({"x-ratelimit-remaining-tokens": "5"}) == LimitHeaders(
        remaining_tokens=5
    )


def test_a_record_line_has_every_field_in_order_times_to_the_microsecond() -> None:
    rec = RequestRecord("r", "async", "w", "w-1", 1, "t", "t-1", "chat", True, "m", 0.1234567,
                        1.0000004, 1.5, 1.6, 1.7, 2.0000006, [1.6, 1.65432149])  # fmt: skip
    rec.conn_s = 1.2
    d = json.loads(rec.to_jsonl())
    assert tuple(d) == RECORD_FIELDS
    assert (d["scheduled_s"], d["send_s"], d["end_s"]) == (0.123457, 1.0, 2.000001)
    assert d["chunk_s"] == [1.6, 1.654321] and d["conn_s"] == 1.2 and d["pause_s"] is None
    assert rec.send_s == 1.0000004  # the record itself keeps what was measured
    rec.end_s = math.inf  # not JSON's: written as json.dumps writes it, never raised
    assert json.loads(rec.to_jsonl())["end_s"] == math.inf
