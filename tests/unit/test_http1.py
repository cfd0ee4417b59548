"""The pure HTTP/1.1 client core (``loadkit/http1.py``): responses parsed from bytes split at
every point a socket could split them, body pieces handed on as they came, framing errors
refused rather than read as a shorter body, and request heads that cannot smuggle a header."""

from __future__ import annotations

import random

import pytest

from loadkit.http1 import (
    MAX_HEAD,
    BadBody,
    BadHead,
    ResponseParser,
    Truncated,
    request_head,
)

CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'f\r\ndata: {"a":1}\n\n\r\n'
    b"10;ext=1\r\ndata: [DONE]\n\n\r\n\r\n"
    b"0\r\nX-Trailer: yes\r\n\r\n"
)
CHUNKED_BODY = b'data: {"a":1}\n\ndata: [DONE]\n\n\r\n'
LENGTH = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 11\r\nRetry-After: 2\r\n\r\nhello world"
)


def parse(pieces: list[bytes], head_request: bool = False) -> ResponseParser:
    p = ResponseParser(head_request)
    for piece in pieces:
        p.feed(piece)
    return p


def splits(data: bytes, rng: random.Random, n: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(n, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize("raw, body", [(CHUNKED, CHUNKED_BODY), (LENGTH, b"hello world")])
def test_every_split_point_gives_the_same_response(raw: bytes, body: bytes):
    whole = parse([raw])
    assert whole.done and whole.keep_alive and b"".join(whole.body) == body
    for cut in range(1, len(raw)):
        p = parse([raw[:cut], raw[cut:]])
        assert (p.status, dict(p.headers), b"".join(p.body)) == (
            whole.status,
            dict(whole.headers),
            body,
        ), cut
        assert p.done and p.keep_alive
    rng = random.Random(7)
    for _ in range(200):
        p = parse(splits(raw, rng, rng.randint(2, 40)))
        assert b"".join(p.body) == body and p.done


def test_one_piece_per_chunk_as_it_arrives_and_headers_case_insensitive():
    p = ResponseParser()
    p.feed(CHUNKED[: CHUNKED.index(b"f\r\n")])
    assert p.status == 200 and p.headers["transfer-encoding"] == "chunked" and p.body == []
    p.feed(b'f\r\ndata: {"a":1}\n\n\r\n')
    assert p.body == [b'data: {"a":1}\n\n'] and not p.done
    p.body.clear()
    p.feed(b"3\r\nabc\r\n0\r\n\r\n")
    assert p.body == [b"abc"] and p.done
    assert parse([LENGTH]).headers.getall("RETRY-AFTER") == ["2"]


def test_a_body_cut_short_is_truncated_and_keeps_what_came():
    p = parse([LENGTH[:-4]])
    assert b"".join(p.body) == b"hello w" and not p.done
    with pytest.raises(Truncated):
        p.eof()
    p = parse([CHUNKED[:-9]])
    with pytest.raises(Truncated):
        p.eof()
    with pytest.raises(Truncated):  # nothing at all: not an empty answer
        ResponseParser().eof()


def test_a_body_without_length_runs_to_the_connections_end():
    p = parse([b"HTTP/1.1 200 OK\r\n\r\npart one, ", b"part two"])
    assert not p.done and not p.keep_alive
    p.eof()
    assert p.done and b"".join(p.body) == b"part one, part two"
    # a transfer coding other than chunked last: the same
    p = parse([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz"])
    p.eof()
    assert b"".join(p.body) == b"xyz"


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 5000,
    ],
)
def test_unreadable_chunk_framing_is_refused(raw: bytes):
    with pytest.raises(BadBody):
        parse([raw])


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nName : space before the colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n",
    ],
)
def test_unreadable_heads_are_refused(raw: bytes):
    with pytest.raises(BadHead):
        parse([raw])


def test_a_head_that_never_ends_is_refused_before_it_grows_without_bound():
    p = ResponseParser()
    with pytest.raises(BadHead):
        for _ in range(MAX_HEAD // 1000 + 2):
            p.feed(b"X-Filler: " + b"a" * 1000 + b"\r\n")


def test_interim_answers_are_skipped_and_bodiless_statuses_end_at_the_head():
    p = parse([b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    assert p.status == 200 and p.body == [b"ok"] and p.done
    for status in (204, 304):
        p = parse([f"HTTP/1.1 {status} X\r\nContent-Length: 10\r\n\r\n".encode()])
        assert p.done and p.body == [] and p.keep_alive
    p = parse([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"], head_request=True)
    assert p.done and p.body == []


def test_bare_lf_heads_and_folded_headers_are_read():
    p = parse([b"HTTP/1.1 200 OK\nX-A: 1\n  more\nContent-Length: 1\n\nz"])
    assert p.headers["x-a"] == "1 more" and p.body == [b"z"] and p.done


@pytest.mark.parametrize(
    "raw, keep",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab", False),  # a byte too many
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\na", True),
    ],
)
def test_whether_the_connection_may_carry_another_request(raw: bytes, keep: bool):
    p = parse([raw])
    assert p.done and p.keep_alive is keep


def test_request_head_defaults_the_callers_headers_win_and_a_body_has_its_length():
    head = request_head("POST", "/v1/chat?x=1", "[::1]:8080", {"Authorization": "Bearer k"}, 12)
    assert head == (
        b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: [::1]:8080\r\nAccept: */*\r\n"
        b"Accept-Encoding: identity\r\nAuthorization: Bearer k\r\nContent-Length: 12\r\n\r\n"
    )
    head = request_head("GET", "/", "h", {"accept-encoding": "gzip", "HOST": "virtual"}, None)
    assert head == (
        b"GET / HTTP/1.1\r\nAccept: */*\r\naccept-encoding: gzip\r\nHOST: virtual\r\n\r\n"
    )


@pytest.mark.parametrize(
    "headers",
    [{"X-A": "v\r\nX-Injected: 1"}, {"X-A": "v\nX-Injected: 1"}, {"X-A\r\nX-B": "v"}],
)
def test_a_line_break_in_a_header_is_refused(headers: dict[str, str]):
    with pytest.raises(ValueError, match="line break"):
        request_head("GET", "/", "h", headers, None)


def test_the_heads_end_does_not_depend_on_how_the_reads_split_it():
    # a bare-LF head whose body holds a CRLF blank line; and a head ending LF CR LF
    for raw, body in [
        (b"HTTP/1.1 200 OK\nContent-Length: 9\n\nab\r\n\r\ncde", b"ab\r\n\r\ncde"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\nok", b"ok"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\n\r\n\r\n", b"\r\n\r\n"),
    ]:
        for cut in range(1, len(raw)):
            p = parse([raw[:cut], raw[cut:]])
            assert (p.status, b"".join(p.body), p.done) == (200, body, True), (raw, cut)


def test_many_folded_lines_are_read_in_order_and_too_many_lines_refused():
    lines = b"".join(b"X-%d: a\r\n b\r\n" % i for i in range(400))
    p = parse([b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 0\r\n\r\n"])
    assert len(p.headers) == 401 and p.headers["x-399"] == "a b"
    with pytest.raises(BadHead, match="header lines"):
        parse([b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * 1200 + b"\r\n"])


@pytest.mark.parametrize(
    "status_line", [b"HTTP/1.1 099 Early", b"HTTP/1.1 \xc2\xb200 OK", b"HTTP/1.1 \xd9\xa200 OK"]
)
def test_a_status_that_is_not_three_ascii_digits_from_100_is_refused(status_line: bytes):
    with pytest.raises(BadHead):
        parse([status_line + b"\r\nContent-Length: 5\r\n\r\nhello"])


def test_transfer_codings_are_read_across_fields_and_two_framings_end_the_connection():
    p = parse(
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\nab"]
    )
    assert not p.done and not p.keep_alive  # gzip is last: to the connection's end
    p.eof()
    assert b"".join(p.body) == b"ab"
    p = parse([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
               b"2\r\nok\r\n0\r\n\r\n"])  # fmt: skip
    assert p.done and b"".join(p.body) == b"ok" and not p.keep_alive


def test_chunk_sizes_with_many_leading_zeros_are_read():
    p = parse(
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"0" * 20
            + b"2\r\nok\r\n0\r\n\r\n"
        ]
    )
    assert p.done and p.body == [b"ok"]
