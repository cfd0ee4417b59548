"""loadkit's own HTTP/1.1 client against raw servers on loopback (port 0): connections kept
alive and reused only when a response ended cleanly, bytes split anywhere, a server that
closes or goes silent, a request cancelled mid-body, and close() leaving no socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from loadkit.engine.http1_transport import Http1Transport
from loadkit.engine.transport import ClientConfig, Reset, TimedOut

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@asynccontextmanager
async def raw_server(handler: Serve, host: str = "127.0.0.1") -> AsyncIterator[tuple[str, list]]:
    """Serves ``handler`` per connection; yields the base URL and the list of connections
    accepted so far (their peer addresses)."""
    peers: list[object] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer.get_extra_info("peername"))
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went, or the test ended
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, host, 0)
    port = server.sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    async with server:
        yield f"http://{shown}:{port}", peers


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Keep-alive: answers every request on the connection with ``OK``."""
    while True:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()


@asynccontextmanager
async def client(**config: float) -> AsyncIterator[Http1Transport]:
    t = Http1Transport(ClientConfig(**config))
    await t.open()
    try:
        yield t
    finally:
        await t.close()


async def fetch(t: Http1Transport, url: str) -> tuple[int, bytes]:
    async with t.send("GET", url, {}, None) as resp:
        body = b""
        while chunk := await resp.read():
            body += chunk
        return resp.status, body


def test_sequential_requests_share_one_connection_and_concurrent_ones_open_their_own():
    async def main() -> tuple[int, int]:
        async with raw_server(answer_each) as (base, peers), client() as t:
            for _ in range(20):
                assert await fetch(t, base + "/") == (200, b"ok")
            sequential = len(peers)
            await asyncio.gather(*(fetch(t, base + "/") for _ in range(5)))
            return sequential, len(peers)

    sequential, total = asyncio.run(main())
    assert sequential == 1
    assert total == 5  # the pooled one and four new ones


def test_a_connection_the_server_closes_is_not_reused():
    async def close_after_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)  # keep-alive by its headers, then closed anyway once idle
        await writer.drain()

    async def say_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.5)  # closing is the client's to do: it must not wait for us

    async def main() -> tuple[int, int]:
        async with raw_server(close_after_one) as (base, peers), client() as t:
            for _ in range(3):
                assert await fetch(t, base + "/") == (200, b"ok")
                await asyncio.sleep(0.05)  # the server's close reaches the client
            first = len(peers)
        async with raw_server(say_close) as (base, peers), client() as t:
            for _ in range(3):
                assert await fetch(t, base + "/") == (200, b"ok")
            return first, len(peers)

    assert asyncio.run(main()) == (3, 3)


def test_a_stream_written_byte_by_byte_reads_whole_and_the_connection_is_reused():
    body = b"".join(f'data: {{"i": {i}}}\n\n'.encode() for i in range(5)) + b"data: [DONE]\n\n"
    wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(body), 7):
        piece = body[i : i + 7]
        wire += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    wire += b"0\r\n\r\n"

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            for i in range(len(wire)):
                writer.write(wire[i : i + 1])
                await writer.drain()
                if i % 50 == 0:
                    await asyncio.sleep(0.001)

    async def main() -> tuple[list[tuple[int, bytes]], int]:
        async with raw_server(trickle) as (base, peers), client() as t:
            got = [await fetch(t, base + "/"), await fetch(t, base + "/")]
            return got, len(peers)

    got, connections = asyncio.run(main())
    assert got == [(200, body), (200, body)] and connections == 1


def test_a_request_cancelled_mid_body_closes_its_connection():
    async def slow_then_fast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(b"56789")  # the rest of the cancelled answer, then a second answer
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.3)

    async def main() -> tuple[tuple[int, bytes], int]:
        async with raw_server(slow_then_fast) as (base, peers), client() as t:
            task = asyncio.create_task(fetch(t, base + "/"))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # a new connection, never the one with a half-read answer on it
            return await asyncio.wait_for(fetch(t, base + "/"), 2), len(peers)

    got, connections = asyncio.run(main())
    assert connections == 2 and got[0] == 200 and got[1][:5] == b"01234"


def test_the_whole_request_times_out_even_while_bytes_keep_coming():
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(100):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.02)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        async with raw_server(drip) as (base, _), client(request_timeout_s=0.3) as t:
            t0 = loop.time()
            with pytest.raises(TimedOut):
                await fetch(t, base + "/")
            return loop.time() - t0

    assert 0.25 < asyncio.run(main()) < 1.5


def test_a_connect_that_hangs_times_out():
    # A listening socket whose accept queue is full leaves further connects unanswered;
    # instead, an address that drops SYNs would need the network. Use a backlog of 0 and
    # fill it, which on Linux makes the next connect wait.
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(0)
            port = s.getsockname()[1]
            fillers = []
            try:
                for _ in range(4):
                    f = socket.socket()
                    f.setblocking(False)
                    try:
                        f.connect(("127.0.0.1", port))
                    except BlockingIOError:
                        pass
                    fillers.append(f)
                async with client(connect_timeout_s=0.3) as t:
                    await fetch(t, f"http://127.0.0.1:{port}/")
            finally:
                for f in fillers:
                    f.close()

    with pytest.raises(TimedOut):
        asyncio.run(main())


def test_a_pooled_connection_lost_while_idle_gives_a_fresh_one_not_a_reset():
    async def main() -> tuple[tuple[int, bytes], int]:
        async with raw_server(answer_each) as (base, peers), client() as t:
            assert await fetch(t, base + "/") == (200, b"ok")
            (conn,) = t._live
            assert conn.transport is not None
            conn.transport.abort()  # as a reset from the peer would
            await asyncio.sleep(0)
            return await fetch(t, base + "/"), len(peers)

    assert asyncio.run(main()) == ((200, b"ok"), 2)


def test_no_answer_on_a_kept_alive_connection_is_a_reset():
    async def one_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the second request: closed unanswered

    async def main() -> None:
        async with raw_server(one_then_hang_up) as (base, _), client() as t:
            assert await fetch(t, base + "/") == (200, b"ok")
            await fetch(t, base + "/")

    with pytest.raises(Reset):
        asyncio.run(main())


def test_names_resolve_ipv6_works_and_close_leaves_no_connection():
    async def main() -> tuple[int, int]:
        async with raw_server(answer_each) as (base, peers), client() as t:
            port = base.rsplit(":", 1)[1]
            assert await fetch(t, f"http://localhost:{port}/") == (200, b"ok")
            live = len(t._live)
        return live, len(t._live)

    assert asyncio.run(main()) == (1, 0)
    if socket.has_ipv6:
        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
        except OSError:
            return

        async def v6() -> tuple[int, bytes]:
            async with raw_server(answer_each, "::1") as (base, _), client() as t:
                return await fetch(t, base + "/")

        assert asyncio.run(v6()) == (200, b"ok")


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent():
    async def main() -> int:
        async with raw_server(answer_each) as (base, peers), client() as t:
            with pytest.raises(ValueError, match="line break"):
                t.send("GET", base + "/", {"X-A": "1\r\nX-B: 2"}, None)
            return len(peers)

    assert asyncio.run(main()) == 0


def test_closing_the_client_mid_body_fails_the_request_never_shortens_it():
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n\r\npart")  # no length: the body runs to the end
        await writer.drain()
        await asyncio.sleep(1)

    async def main() -> bytes:
        async with raw_server(until_close) as (base, _):
            t = Http1Transport(ClientConfig())
            await t.open()
            async with t.send("GET", base + "/", {}, None) as resp:
                first = await resp.read()
                await t.close()
                with pytest.raises(Reset):
                    await resp.read()
            return first

    assert asyncio.run(main()) == b"part"


def test_a_flood_nobody_reads_is_held_to_the_read_buffer():
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n")
        block = b"x" * 65536
        for _ in range(50_000_000 // 65536):
            writer.write(block)
            await writer.drain()

    async def main() -> tuple[int, int]:
        async with raw_server(flood) as (base, _), client() as t:
            ex = t.send("GET", base + "/", {}, None)
            async with ex as resp:
                await asyncio.sleep(0.5)  # not reading: the client must stop reading too
                held = ex.unread
                got = len(await resp.read())
            return held, got

    held, got = asyncio.run(main())
    bufsize = ClientConfig().read_bufsize
    assert bufsize < held < bufsize + 1024 * 1024 and held - 100 < got <= held  # held: + head


def test_urls_are_percent_encoded_and_credentials_in_them_refused():
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n", 1)[0])
            writer.write(OK)
            await writer.drain()

    async def main() -> None:
        async with raw_server(record) as (base, _), client() as t:
            await fetch(t, base + "/v1/models/my model é?q=a b&x=%2F")
            with pytest.raises(ValueError, match="credentials"):
                t.send("GET", base.replace("http://", "http://user:pw@") + "/", {}, None)

    asyncio.run(main())
    assert seen == [b"GET /v1/models/my%20model%20%C3%A9?q=a%20b&x=%2F HTTP/1.1"]
