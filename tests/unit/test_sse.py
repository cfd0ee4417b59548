"""The SSE decoder: every split of a valid stream decodes to the same events."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadkit.sse import SSEDecoder, SSEEvent

STREAM = (
    b": keep-alive comment\n"
    b'data: {"a": 1}\n\n'
    b"event: update\nid: 7\ndata: line one\ndata: line two\n\n"
    b"data:no-space\n\n"
    b"data: caf\xc3\xa9 \xe2\x9c\x93\n\n"
    b"retry: 100\nunknown: x\ndata: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent('{"a": 1}'),
    SSEEvent("line one\nline two", "update", "7"),
    SSEEvent("no-space", None, "7"),  # the last event id persists, as the spec says
    SSEEvent("café ✓", None, "7"),
    SSEEvent("[DONE]", None, "7"),
]


def decode(parts: list[bytes]) -> list[SSEEvent]:
    d = SSEDecoder()
    out: list[SSEEvent] = []
    for p in parts:
        out += d.feed(p)
    return out


def test_whole_stream():
    assert decode([STREAM]) == EXPECTED


def test_byte_by_byte():
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_crlf_and_cr_line_endings():
    assert decode([STREAM.replace(b"\n", b"\r\n")]) == EXPECTED
    assert decode([STREAM.replace(b"\n", b"\r")]) == EXPECTED


def test_crlf_split_between_feeds_is_one_line_ending():
    d = SSEDecoder()
    assert d.feed(b"data: x\r") == []
    assert d.feed(b"\n\r") == [SSEEvent("x")]  # a lone CR already ends the blank line
    assert d.feed(b"\n") == []  # ...and this LF belongs to it: no extra line


def test_blank_lines_without_data_dispatch_nothing():
    assert decode([b"\n\n: c\n\nevent: e\n\n"]) == []


def test_truncated_event_is_pending_not_emitted():
    d = SSEDecoder()
    assert d.feed(b'data: {"partial"') == []
    assert d.pending


@settings(max_examples=300)
@given(
    st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
def test_every_split_decodes_the_same(cuts: list[int], eol: bytes):
    stream = STREAM.replace(b"\n", eol)
    cuts = sorted(min(c, len(stream)) for c in cuts)
    parts = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert decode(parts) == EXPECTED


def test_cr_only_stream_decodes_exactly_like_lf():
    lf = b"".join(
        b'data: {"i": %d}\n\n' % i + (b": keep-alive\n\n" if i % 3 == 0 else b"") for i in range(20)
    )
    cr = lf.replace(b"\n", b"\r")
    assert decode([cr]) == decode([lf]) == [SSEEvent(f'{{"i": {i}}}') for i in range(20)]
    assert decode([cr[i : i + 1] for i in range(len(cr))]) == decode([lf])


def test_comments_and_keep_alives_are_counted_not_dispatched():
    d = SSEDecoder()
    assert d.feed(b": ping\n\n:\n\n: x\ndata: a\n\n") == [SSEEvent("a")]
    assert d.comments == 3


def test_invalid_utf8_is_replaced_not_raised():
    assert decode([b"data: \xff\xfe ok \xc3\n\n"]) == [SSEEvent("\ufffd\ufffd ok \ufffd")]
    # A multi-byte character split between reads still decodes whole.
    assert decode([b"data: caf\xc3", b"\xa9\n\n"]) == [SSEEvent("café")]


LONG = b"data: " + b"x" * 100 + b"\n\n"


def test_a_line_over_the_bound_is_dropped_with_its_event_and_counted():
    d = SSEDecoder(max_line=64)
    events = d.feed(b"data: a\n\n" + LONG + b"data: b\n\n")
    assert events == [SSEEvent("a"), SSEEvent("b")]
    assert d.long_lines == 1 and not d.pending


def test_the_whole_event_of_an_over_long_line_is_dropped():
    d = SSEDecoder(max_line=64)
    stream = b"id: 1\ndata: head\n" + b"data: " + b"y" * 100 + b"\ndata: tail\n\ndata: next\n\n"
    assert d.feed(stream) == [SSEEvent("next", None, "1")]
    assert d.long_lines == 1


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=400), max_size=20))
def test_an_over_long_line_split_anywhere_gives_the_same_events(cuts: list[int]):
    stream = b"data: a\n\n" + LONG + b"data: b\n\n" + LONG.replace(b"\n", b"\r\n") + b"data: c\n\n"
    cuts = sorted(min(c, len(stream)) for c in cuts)
    parts = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    d = SSEDecoder(max_line=64)
    out = [e for p in parts for e in d.feed(p)]
    assert out == [SSEEvent("a"), SSEEvent("b"), SSEEvent("c")]
    assert d.long_lines == 2


def test_a_line_exactly_at_the_bound_is_kept():
    line = b"data: " + b"z" * 58  # 64 bytes
    assert decode_with(64, [line + b"\n\n"]) == [SSEEvent("z" * 58)]
    assert decode_with(64, [line[:30], line[30:], b"\n", b"\n"]) == [SSEEvent("z" * 58)]
    assert decode_with(63, [line + b"\n\n"]) == []


def decode_with(max_line: int, parts: list[bytes]) -> list[SSEEvent]:
    d = SSEDecoder(max_line=max_line)
    return [e for p in parts for e in d.feed(p)]


def test_an_over_long_line_is_never_buffered():
    d = SSEDecoder(max_line=1024)
    d.feed(b"data: ")
    for _ in range(1000):  # 4 MB of one line in 4 KB reads
        d.feed(b"x" * 4096)
        assert d._plen <= 1024 and len(d._parts) <= 2
    assert d.feed(b"\n\ndata: after\n\n") == [SSEEvent("after")]
    assert d.long_lines == 1


def test_a_giant_line_under_the_bound_decodes_whole():
    # 2 MB in 256-byte reads: each byte is copied a bounded number of times (the decoder
    # joins the pieces once), so this is as fast as one read.
    body = b"q" * (2 * 1024 * 1024)
    parts = [b"data: "] + [body[i : i + 256] for i in range(0, len(body), 256)] + [b"\n\n"]
    (ev,) = decode_with(4 * 1024 * 1024, parts)
    assert len(ev.data) == len(body)


def test_max_line_must_be_positive():
    with pytest.raises(ValueError, match="max_line"):
        SSEDecoder(max_line=0)


def decode_data(parts: list[bytes], max_line: int = 1024 * 1024) -> list[bytes]:
    d = SSEDecoder(max_line=max_line)
    return [x for p in parts for x in d.feed_data(p)]


def test_feed_data_gives_each_events_data_as_received_bytes():
    assert decode_data([STREAM]) == [e.data.encode() for e in EXPECTED]
    # not decoded: invalid UTF-8 reaches the JSON parser as sent
    assert decode_data([b"data: \xff ok\n\n"]) == [b"\xff ok"]


@settings(max_examples=300)
@given(
    st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.integers(min_value=0, max_value=3),
)
def test_feed_data_every_split_mixed_with_feed_gives_the_same_events(
    cuts: list[int], eol: bytes, switch: int
):
    # Whole-event reads take the fast path, the others the general one, and a decoder fed
    # both ways keeps one state: every split gives the same data.
    stream = (STREAM + b'data: {"b": 2}\n\ndata: {"c": 3}\n\n').replace(b"\n", eol)
    expected = [e.data.encode() for e in EXPECTED] + [b'{"b": 2}', b'{"c": 3}']
    cuts = sorted(min(c, len(stream)) for c in cuts)
    parts = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    d = SSEDecoder()
    out: list[bytes] = []
    for i, p in enumerate(parts):
        if i % 4 == switch:
            out += [e.data.encode() for e in d.feed(p)]
        else:
            out += d.feed_data(p)
    assert out == expected
    assert not d.pending


def test_feed_data_whole_events_with_comments_blank_lines_and_fields():
    reads = [
        b'data: {"a": 1}\n\ndata: {"b": 2}\n\n',  # whole events, the fast path
        b": ping\n\n\n\nevent: x\ndata: one\ndata: two\n\n",  # comments, fields, 2 lines
        b"data:  lead\n\n",  # one space is the separator, the second is data
        b'data: {"c"',  # a partial event, then its end with a whole one
        b': 3}\n\ndata: {"d": 4}\n\n',
    ]
    d = SSEDecoder()
    assert [d.feed_data(r) for r in reads] == [
        [b'{"a": 1}', b'{"b": 2}'],
        [b"one\ntwo"],
        [b" lead"],
        [],
        [b'{"c": 3}', b'{"d": 4}'],
    ]
    assert d.comments == 1


def test_feed_data_drops_an_over_long_line_with_its_event():
    assert decode_data([b"data: a\n\n" + LONG + b"data: b\n\n"], max_line=64) == [b"a", b"b"]
    assert decode_data([LONG[:50], LONG[50:], b"data: c\n\n"], max_line=64) == [b"c"]
