"""No access key in anything the server writes: every malformed variant of a request
carrying a known key (control characters after it, bare CR/LF, folded and overlong
lines, the key as a method, a header name, in the URL) is sent to a server process with
its access log on, and every byte it wrote (stdout, stderr, truth log) is searched for
the key. The keys file is the one place a key belongs."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

from loadkit.server.logsafe import REDACTED, RedactingFilter
from loadkit.server.process import start_server_process

KEY = "lk-known-Secret-0123456789abcdef"
K = KEY.encode()
PATH = b"/api/v1/ai/chat/completions"
BODY = b'{"model": "loadkit-instant", "messages": [{"role": "user", "content": "hi"}]}'


def variants() -> list[bytes]:
    def req(*headers: bytes, line: bytes = b"POST " + PATH + b" HTTP/1.1") -> bytes:
        hs = b"".join(h + b"\r\n" for h in headers)
        return line + b"\r\nHost: x\r\n" + hs + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY

    auth = b"Authorization: Bearer " + K
    out = [req(auth)]  # a valid request: its key must not be logged either
    out += [req(auth + bytes([c])) for c in [*range(0, 9), *range(10, 32), 127]]
    out += [
        req(auth + b"\rX-Next: 1"),  # bare CR
        req(auth + b"\nX-Next: 1"),  # bare LF
        req(b"Authorization: Bearer", b" " + K),  # obs-fold continuation line
        req(auth + b"A" * 9000),  # overlong line
        req(b"Authorization: Bearer " + b"A" * 9000 + K),  # key past the quoted prefix
        req(auth + b"\xff\xfe"),  # not UTF-8
        req(b"Authorization:Bearer " + K + b"\x00"),
        req(auth, auth + b"\x01"),  # a good one, then a bad one
        req(K + b": x"),  # the key as a header name
        req(K + b"\x01: x"),
        req(b"X-Api-Key: " + K + b"\x02"),
        req(*[b"X-H%d: %s" % (i, K) for i in range(200)]),  # too many headers
        req(auth, line=K + b" " + PATH + b" HTTP/1.1"),  # the key as a method
        req(auth, line=b"POST " + PATH + b"?key=" + K + b"\x01 HTTP/1.1"),  # in the URL
        req(auth, line=b"POST /" + K + b" HTTP/1.1"),  # a path that is the key
        req(auth + b"\x01", line=b"POST " + PATH + b" HTTP/9.9"),
        req(b"Content-Length: " + K),
        req(b"Transfer-Encoding: " + K + b"\x01"),
    ]
    # a chunked body whose trailer carries the key
    out.append(
        b"POST " + PATH + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\nAuthorization: Bearer " + K + b"\x01\r\n\r\n"
    )
    return out


def send(port: int, data: bytes) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
    except OSError:
        pass  # the server may reset a connection it refused
    finally:
        s.close()


def test_no_key_in_any_output(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    cfg = {
        "keys": [{"label": "known", "tier": "pro", "key": KEY}],
        "server": {"access_log": True},
        "limits": {"header_timeout_s": 1.0, "body_timeout_s": 1.0},
    }
    srv = start_server_process(config_dict=cfg, truth_path=truth)
    try:
        for data in variants():
            send(srv.port, data)
        # a half-sent head and a half-sent body, each with the key, left to time out
        send(srv.port, b"POST " + PATH + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + K)
        send(srv.port, b"POST " + PATH + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + K
             + b"\r\nContent-Length: 100\r\n\r\n{")  # fmt: skip
    finally:
        assert srv.stop() == 0
    written = {"stdout": srv.stdout, "stderr": srv.stderr, "truth": truth.read_bytes()}
    assert b"aiohttp.access" in srv.stderr  # the access log was on: it was searched too
    assert truth.read_text().count("\n") >= len(variants())
    for name, data in written.items():
        assert K not in data, f"the key is in the server's {name}"
        assert b"Secret-0123456789" not in data, f"part of the key is in the server's {name}"


def test_the_log_filter_redacts_keys_and_authorization_values() -> None:
    f = RedactingFilter([KEY])
    logger = logging.getLogger("test.redact")
    try:
        raise ValueError(f"bad header b'Authorization: Bearer {KEY}\\x01'")
    except ValueError:
        args = (KEY, "Bearer sk-other")
        rec = logger.makeRecord("x", logging.ERROR, "f", 1, "saw %s and %s", args, sys.exc_info())
    f.filter(rec)
    text = logging.Formatter().format(rec)
    assert KEY not in text and "sk-other" not in text and REDACTED in text
    assert "saw" in text and "ValueError" in text  # the rest of the record stays
