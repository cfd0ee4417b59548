"""Fixtures for server tests: servers on 127.0.0.1 port 0 in a background thread, and a
small raw HTTP helper for what the ``openai`` client hides (headers, SSE bytes)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from loadkit.server.testing import ServerThread
from loadkit.server.truth import read_truth


class Raw:
    """One keep-alive HTTP/1.1 connection to a server."""

    def __init__(self, base_url: str) -> None:
        u = urlsplit(base_url)
        self.prefix = u.path
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        h = dict(headers or {})
        if key is not None:
            h["Authorization"] = f"Bearer {key}"
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        self.conn.request(method, self.prefix + path, body=body, headers=h)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """``serve(config_dict_or_None, truth=True, api=None)`` starts a server for this test."""
    started: list[ServerThread] = []

    def start(
        config: dict[str, Any] | None = None, truth: bool = True, api: str | None = None
    ) -> ServerThread:
        truth_path = tmp_path / f"truth-{len(started)}.jsonl" if truth else None
        srv = ServerThread(config, truth_path=truth_path, api=api).start()
        started.append(srv)
        return srv

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ServerThread]:
    """A default-config server shared by a module's read-mostly tests."""
    with ServerThread() as srv:
        yield srv


def truth_of(srv: ServerThread) -> list[dict[str, Any]]:
    assert srv.truth_path is not None
    srv.wait_idle()
    return read_truth(srv.truth_path)


def sse_events(data: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking the framing on the way."""
    text = data.decode()
    assert text.endswith("\n\n"), text[-80:]
    out = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        out.append(block[len("data: ") :])
    return out


def loop_factories() -> list[Any]:
    """``pytest.param`` per event loop the server runs on: asyncio's own, and uvloop's
    (skipped when it is not installed)."""
    import asyncio

    out: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        out.append(pytest.param(None, id="uvloop", marks=pytest.mark.skip("no uvloop")))
    else:
        out.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return out


def unchunk(framed: bytes) -> bytes:
    """A body sent with HTTP/1.1 chunked framing, the framing removed."""
    body = b""
    while framed:
        size, _, rest = framed.partition(b"\r\n")
        length = int(size, 16)
        body, framed = body + rest[:length], rest[length + 2 :]
        if length == 0:
            break
    return body
