"""The measurement core against a hostile server: for every case of
``tests/hostile_server.py`` a minimal aiohttp client (raw bytes, no automatic
decompression, the asyncio engine's error mapping) feeds RequestTrace, and the record is
the one the case expects. No engine is imported: this pins the core; the engines' own
tests can parametrize over the same ``CASES``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import aiohttp
import pytest

from loadkit import records as R
from loadkit.records import RequestRecord
from loadkit.trace import RequestInfo, RequestTrace
from tests.hostile_server import CASES, HostileCase, HostileServer, case_by_name


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as srv:
        yield srv


async def fetch(base_url: str, case: HostileCase) -> RequestRecord:
    """One request as an engine makes it: the body read as it arrives, every failure a
    record."""
    loop = asyncio.get_running_loop()
    now = loop.time
    info = RequestInfo(
        "run", "async", "t", f"t-{case.name}", "free", "free-1", "chat", case.stream, "m"
    )
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": case.stream}
    )
    timeout = aiohttp.ClientTimeout(total=case.timeout_s)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        trace = RequestTrace(info, now())
        try:
            async with session.post(
                base_url + "/ai/chat/completions",
                data=body,
                headers={"Content-Type": "application/json", "Accept-Encoding": "identity"},
            ) as resp:
                trace.response(now(), resp.status, resp.headers)
                while True:
                    chunk = await resp.content.readany()
                    if not chunk:
                        break
                    trace.data(now(), chunk)
                return trace.finish(now())
        except (TimeoutError, aiohttp.ServerTimeoutError):
            return trace.fail(now(), R.TIMEOUT)
        except aiohttp.ClientConnectorError:
            return trace.fail(now(), R.REFUSED)
        except aiohttp.ClientPayloadError:
            return trace.fail(now(), R.INCOMPLETE_STREAM)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError):
            return trace.fail(now(), R.RESET)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_hostile_case_gives_its_record(hostile: HostileServer, case: HostileCase):
    rec = asyncio.run(fetch(hostile.url(case.name), case))
    e = case.expected
    got = (rec.status, rec.transport_error, rec.error_code, rec.content_chunks, rec.limit_kind)
    assert got == (e.status, e.transport_error, e.error_code, e.content_chunks, e.limit_kind), (
        case.what
    )
    if e.content_type is not None:
        assert rec.content_type == e.content_type
    # Whatever happened, the record is whole and reads back.
    assert RequestRecord.from_dict(json.loads(rec.to_json())).to_json() == rec.to_json()


def test_a_stream_split_at_every_byte_is_timed_as_it_trickles(hostile: HostileServer):
    rec = asyncio.run(fetch(hostile.url("split-every-byte"), case_by_name("split-every-byte")))
    # 0.5 ms between bytes, ~300 bytes per event: the three chunks arrive apart.
    assert rec.chunk_s == sorted(rec.chunk_s) and rec.chunk_s[-1] - rec.chunk_s[0] > 0.05
    assert (rec.completion_tokens, rec.finish_reason) == (3, "length")


def test_compressed_streams_are_measured_like_plain_ones(hostile: HostileServer):
    plain = asyncio.run(fetch(hostile.url("ok-lf"), case_by_name("ok-lf")))
    for name in ("gzip-stream", "deflate-stream", "deflate-raw-stream"):
        rec = asyncio.run(fetch(hostile.url(name), case_by_name(name)))
        assert (rec.content_chunks, rec.completion_tokens, rec.finish_reason) == (
            plain.content_chunks,
            plain.completion_tokens,
            plain.finish_reason,
        )
        assert len(rec.chunk_s) == len(plain.chunk_s) == 3


def test_the_server_serves_a_case_under_any_path(hostile: HostileServer):
    async def get(path: str) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as s, s.get(hostile.url("html-404") + path) as r:
            return r.status, await r.read()

    assert asyncio.run(get("/v1/models"))[0] == 404
    assert b"Not Found" in asyncio.run(get("/ai/chat/completions"))[1]
    assert hostile.requests[-2:] == ["html-404", "html-404"]


def test_every_case_is_distinct_and_documented():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) and all(c.what for c in CASES)
    kinds = {c.expected.transport_error for c in CASES}
    # Every kind of failure a response can cause is covered.
    assert {
        None,
        R.INCOMPLETE_STREAM,
        R.MALFORMED_EVENT,
        R.LINE_TOO_LONG,
        R.BODY_TOO_LARGE,
        R.UNSUPPORTED_ENCODING,
        R.RESET,
        R.TIMEOUT,
    } <= kinds
