"""A server that has fallen behind its streams' schedule keeps answering: a late stream
sends one step per pass of the event loop, so new requests are read and answered while
the streams catch up (aiohttp's write does not yield until a socket pushes back)."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

from loadkit.server.testing import running_server

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
    # Answered after a handful of loop passes, not after the stream wrote all it owed.
    assert written < overdue / 5, f"{written} of {overdue:.0f} overdue tokens went first"
