"""The SSE decoder: every split of a valid stream decodes to the same events."""

from __future__ import annotations

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
