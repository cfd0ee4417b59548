"""A server that has fallen behind its streams' schedule keeps answering: a late stream
sends one step per pass of the event loop, so new requests are read and answered while
the streams catch up (aiohttp's write does not yield until a socket pushes back). A
client that reads late gets its stream whole: the server drains, then goes on."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from urllib.parse import urlsplit

import pytest

from loadkit.server.testing import running_server
from tests.server.conftest import unchunk

ITL_MS = 2
BLOCK_S = 1.0  # the loop is held this long: every stream falls BLOCK_S / ITL behind


def test_a_late_stream_lets_other_requests_in() -> None:
    async def main() -> tuple[int, int]:
        cfg = {"models": [{"id": "fast", "itl_ms": ITL_MS, "context_length": 100_000}]}
        async with running_server(cfg) as srv:
            u = urlsplit(srv.base_url)
            host, port = u.hostname or "127.0.0.1", u.port or 80
            body = json.dumps(
                {"model": "fast", "prompt": "x", "max_tokens": 5000, "stream": True}
            ).encode()
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"POST {u.path}/ai/completions HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {srv.key('enterprise-1')}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await reader.readuntil(b"data: ")  # the stream is under way

            async def drain() -> None:  # the client keeps reading: no push-back
                while await reader.read(65536):
                    pass

            reading = asyncio.create_task(drain())
            counters = srv.state.counters
            # Hold the event loop, as an overloaded or descheduled server would be held.
            time.sleep(BLOCK_S)
            before = counters.tokens_written
            r2, w2 = await asyncio.open_connection(host, port)
            w2.write(f"GET {u.path}/ai/models HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await r2.readuntil(b"\r\n\r\n")
            written = counters.tokens_written - before
            w2.close()
            writer.close()
            reading.cancel()
            return int(head.split()[1]), written

    status, written = asyncio.run(main())
    overdue = BLOCK_S * 1000 / ITL_MS  # 500 tokens
    assert status == 200
    # Answered after a handful of loop passes (a late stream writes at most MAX_BATCH
    # steps per pass), not after the stream wrote all it owed.
    assert written < overdue / 2, f"{written} of {overdue:.0f} overdue tokens went first"


@pytest.mark.slow
def test_a_client_that_reads_late_gets_the_whole_stream_intact() -> None:
    """The socket pushes back (the client reads nothing for a while through a small
    receive buffer): the server waits for it to drain and loses no byte or order."""
    n, choices = 1500, 16  # 24,000 chunks, ~3.5 MB
    cfg = {"models": [{"id": "fast", "itl_ms": 0.05, "context_length": 100_000}]}

    async def main() -> tuple[bytes, bytes]:
        async with running_server(cfg) as srv:
            u = urlsplit(srv.base_url)
            host, port = u.hostname or "127.0.0.1", u.port or 80
            key = srv.key("enterprise-1")
            body = {"model": "fast", "prompt": "x", "max_tokens": n, "n": choices}
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock)
            raw = json.dumps({**body, "stream": True}).encode()
            writer.write(
                f"POST {u.path}/ai/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(raw)}\r\n\r\n".encode()
                + raw
            )
            await asyncio.sleep(1.0)  # not reading: the server's writes back up
            streamed = await reader.read()
            writer.close()
            r2, w2 = await asyncio.open_connection(host, port)
            raw = json.dumps(body).encode()
            w2.write(
                f"POST {u.path}/ai/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(raw)}\r\n\r\n".encode()
                + raw
            )
            plain = await r2.read()
            w2.close()
            return streamed, plain

    streamed, plain = asyncio.run(main())
    head, _, chunked = streamed.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
    body = unchunk(chunked)
    events = [e[len(b"data: ") :] for e in body.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]" and len(events) == n * choices + 1
    texts = [""] * choices
    for e in events[:-1]:
        c = json.loads(e)["choices"][0]
        texts[c["index"]] += c["text"]
    want = [c["text"] for c in json.loads(plain.partition(b"\r\n\r\n")[2])["choices"]]
    assert texts == want
