"""Below the API: a request aiohttp's parser refuses still gets the API's JSON error (405
with ``Allow`` for a method no route uses) and a truth line; a half-sent head or body
is answered 408 and closed within its timeout; a client that hangs up mid-upload leaves
a truth line that says so, not a 500; a compressed body is refused (415)."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest

from loadkit.server.testing import ServerThread
from tests.server.conftest import truth_of

FAST = {"limits": {"header_timeout_s": 0.3, "body_timeout_s": 0.3}}
PATH = "/api/v1/ai/chat/completions"
CHAT = b'{"model": "loadkit-instant", "messages": [{"role": "user", "content": "hi"}]}'


def exchange(srv: ServerThread, data: bytes, wait_s: float = 10.0) -> tuple[bytes, float]:
    """Send ``data``, read until the server closes (or ``wait_s``); the bytes and the
    seconds until the close."""
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.settimeout(wait_s)
    t0 = time.monotonic()
    s.sendall(data)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except TimeoutError:
        pass
    finally:
        s.close()
    return out, time.monotonic() - t0


def parse(resp: bytes) -> tuple[int, dict[str, str], dict]:  # type: ignore[type-arg]
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def request(path: str, *headers: bytes, body: bytes = b"") -> bytes:
    hs = b"".join(h + b"\r\n" for h in headers)
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode() + hs + b"\r\n" + body


MALFORMED = [
    b"Authorization: Bearer lk-x\x01",  # control character in a value
    b"Authorization: Bearer lk-x\rX: y",  # bare CR
    b"Authori zation: Bearer lk-x",  # space in a name
    b"X-Long: " + b"a" * 9000,  # longer than a header line may be
]


@pytest.mark.parametrize("header", MALFORMED)
def test_malformed_requests_get_json_errors_and_a_truth_line(serve, header: bytes) -> None:  # type: ignore[no-untyped-def]
    srv = serve()
    resp, _ = exchange(srv, request("/api/v1/ai/chat/completions", header, b"Content-Length: 2",
                                    body=b"{}"))  # fmt: skip
    status, headers, body = parse(resp)
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert body["error"]["code"] == "invalid_parameters"
    assert body["error"]["message"].startswith("malformed request")
    (line,) = truth_of(srv)
    assert (line["status"], line["error_code"], line["endpoint"]) == (
        400,
        "invalid_parameters",
        "other",
    )


def test_unknown_methods_get_405_with_allow(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve()
    # a method the HTTP parser does not know
    resp, _ = exchange(srv, b"FOO /api/v1/ai/models HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = parse(resp)
    assert status == 405 and headers["allow"] == "DELETE, GET, PATCH, POST"
    assert body["error"]["code"] == "method_not_allowed"
    # a method it knows that no route of this path takes
    resp, _ = exchange(
        srv, b"PUT /api/v1/ai/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = parse(resp)
    assert status == 405 and headers["allow"] == "GET"
    assert [t["status"] for t in truth_of(srv)] == [405, 405]


def test_a_half_sent_head_is_answered_408_and_closed(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve(FAST)
    resp, took = exchange(srv, b"POST /api/v1/ai/chat/completions HTTP/1.1\r\nHost: x\r\nAuthor")
    status, headers, body = parse(resp)
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert "limits.header_timeout_s" in body["error"]["message"]
    assert 0.25 <= took < 5.0  # closed by the server, at the timeout (generous upper bound)
    (line,) = truth_of(srv)
    assert line["status"] == 408


def test_a_half_sent_body_is_answered_408_and_closed(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve(FAST)
    auth = f"Authorization: Bearer {srv.key('free-1')}".encode()
    head = request("/api/v1/ai/chat/completions", auth, b"Content-Length: 100", body=b'{"mo')
    resp, took = exchange(srv, head)
    status, _, body = parse(resp)
    assert status == 408 and "limits.body_timeout_s" in body["error"]["message"]
    assert 0.25 <= took < 5.0
    (line,) = truth_of(srv)
    assert (line["status"], line["decision"], line["key"]) == (408, "admitted", "free-1")


def test_an_idle_keep_alive_connection_is_not_timed_out(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve(FAST)
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.settimeout(10)
    get = b"GET /api/v1/ai/models HTTP/1.1\r\nHost: x\r\n\r\n"
    s.sendall(get)
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    time.sleep(0.6)  # twice the head timeout, with no request begun: nothing may happen
    s.sendall(get)
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    s.close()


def test_a_client_gone_mid_upload_leaves_a_line_that_says_so(serve, caplog) -> None:  # type: ignore[no-untyped-def]
    srv = serve()
    auth = f"Authorization: Bearer {srv.key('free-1')}".encode()
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(request(PATH, auth, b"Content-Length: 1000", body=b'{"m'))
    deadline = time.monotonic() + 10
    while not srv.state.limiter.in_flight_by_key().get("free-1"):  # admitted, reading the body
        assert time.monotonic() < deadline
        time.sleep(0.005)  # another thread's state: nothing to await
    s.close()
    (line,) = truth_of(srv)
    assert line["status"] is None and line["disconnect"] == "client"
    assert line["error_code"] is None and line["decision"] == "admitted"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert srv.stats()["status"].get("500", 0) == 0


def test_a_compressed_body_is_refused(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve()
    auth = f"Authorization: Bearer {srv.key('free-1')}".encode()
    gzip = request(PATH, auth, b"Content-Encoding: gzip", b"Content-Length: 4",
                   b"Connection: close", body=b"\x1f\x8b\x08\x00")  # fmt: skip
    resp, _ = exchange(srv, gzip)
    status, _, body = parse(resp)
    assert status == 415 and "Content-Encoding" in body["error"]["message"]


def test_a_broken_chunked_body_is_a_4xx(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve()
    auth = f"Authorization: Bearer {srv.key('free-1')}".encode()
    chunked = request(PATH, auth, b"Transfer-Encoding: chunked",
                      body=b"zz\r\n" + CHAT + b"\r\n0\r\n\r\n")  # fmt: skip
    resp, _ = exchange(srv, chunked)
    status, _, body = parse(resp)
    assert 400 <= status < 500 and body["error"]["code"] == "invalid_parameters"
    assert srv.stats()["status"].get("500", 0) == 0
