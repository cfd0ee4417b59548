"""Both transports (loadkit's own HTTP/1.1 client, the default, and aiohttp's) against a
small aiohttp server on loopback (port 0): bodies read as they arrive and never
decompressed, no headers of the client's own choosing, and each way a connection fails
raised as the seam's typed error."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from loadkit.engine.transport import ClientConfig, Incomplete, Refused, Reset, TimedOut, Transport
from tests.engine.conftest import CLIENTS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def transport(client: str = "loadkit", **config: float) -> AsyncIterator[Transport]:
    t = CLIENTS[client](ClientConfig(**config))
    await t.open()
    try:
        yield t
    finally:
        await t.close()


async def read_all(t: Transport, url: str) -> tuple[int, dict[str, str], list[bytes]]:
    async with t.send("POST", url, {"Authorization": "Bearer k"}, b"{}") as resp:
        chunks = []
        while chunk := await resp.read():
            chunks.append(chunk)
        return resp.status, dict(resp.headers), chunks


def test_body_arrives_in_pieces_as_sent_and_only_our_headers_go_out(client: str):
    seen: dict[str, str] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.update(request.headers)
        resp = web.StreamResponse(status=201, headers={"x-ratelimit-limit-requests": "7"})
        await resp.prepare(request)
        await resp.write(b"one")
        await asyncio.sleep(0.05)
        await resp.write(b"two")
        await resp.write_eof()
        return resp

    async def main() -> tuple[int, dict[str, str], list[bytes]]:
        async with serve(handler) as base, transport(client) as t:
            return await read_all(t, base + "/ai/chat/completions")

    status, headers, chunks = asyncio.run(main())
    assert status == 201 and headers["x-ratelimit-limit-requests"] == "7"
    assert chunks == [b"one", b"two"]  # two reads: the seam hands over bytes as they come
    assert seen["Accept-Encoding"] == "identity" and seen["Authorization"] == "Bearer k"
    assert "User-Agent" not in seen


def test_a_compressed_body_is_handed_over_as_received(client: str):
    packed = gzip.compress(b'{"choices": []}')

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=packed, headers={"Content-Encoding": "gzip"})

    async def main() -> list[bytes]:
        async with serve(handler) as base, transport(client) as t:
            return (await read_all(t, base + "/"))[2]

    assert b"".join(asyncio.run(main())) == packed


def test_nothing_listening_is_refused(client: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the connect: nothing listens

    async def main() -> None:
        async with transport(client) as t:
            await read_all(t, f"http://127.0.0.1:{port}/")

    with pytest.raises(Refused):
        asyncio.run(main())


def test_silence_longer_than_the_read_timeout_times_out(client: str):
    async def main() -> None:
        release = asyncio.Event()

        async def handler(request: web.Request) -> web.StreamResponse:
            await release.wait()
            return web.Response(text="late")

        async with serve(handler) as base, transport(client, read_timeout_s=0.2) as t:
            try:
                await read_all(t, base + "/")
            finally:
                release.set()

    with pytest.raises(TimedOut):
        asyncio.run(main())


def test_a_body_cut_short_is_incomplete_and_keeps_what_arrived(client: str):
    got: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100"})
        await resp.prepare(request)
        await resp.write(b"0123456789")
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return resp

    async def main() -> None:
        async with (
            serve(handler) as base,
            transport(client) as t,
            t.send("GET", base + "/", {}, None) as resp,
        ):
            while chunk := await resp.read():
                got.append(chunk)

    with pytest.raises(Incomplete):
        asyncio.run(main())
    assert got == [b"0123456789"]


def test_a_connection_closed_before_any_answer_is_reset(client: str):
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the request's head, then no answer
        writer.close()

    async def main() -> None:
        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, transport(client) as t:
            await read_all(t, f"http://127.0.0.1:{port}/")

    with pytest.raises(Reset):
        asyncio.run(main())
