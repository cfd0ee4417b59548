"""Many concurrent streams through the server's pacer, on asyncio's loop and on uvloop's
(what ``loadkit serve`` runs on when installed): every stream arrives whole (the same
text as the same request without streaming, no token skipped or repeated), every
stream finishes (none starved), and no token is handed over before its deadline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from loadkit.server.testing import running_server
from tests.server.conftest import loop_factories, sse_events, unchunk

STREAMS = 40
TOKENS = 30
ITL_MS = 1.5


async def _post(host: str, port: int, path: str, key: str, body: dict[str, Any]) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    raw = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\n\r\n".encode()
        + raw
    )
    data = await reader.read()
    writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return unchunk(rest) if b"chunked" in head.lower() else rest


@pytest.mark.parametrize("factory", loop_factories())
def test_concurrent_streams_arrive_whole_and_never_early(factory: Callable[[], Any]) -> None:
    cfg = {"models": [{"id": "m", "ttft_ms": 3, "itl_ms": ITL_MS, "context_length": 100_000}]}

    async def main() -> tuple[list[list[str]], list[str], list[int], int]:
        async with running_server(cfg) as srv:
            u = urlsplit(srv.base_url)
            host, port = u.hostname or "127.0.0.1", u.port or 80
            path = f"{u.path}/ai/completions"
            key = srv.key("enterprise-1")
            bodies = [
                {"model": "m", "prompt": f"stream {i}", "max_tokens": TOKENS, "seed": i}
                for i in range(STREAMS)
            ]
            streamed = await asyncio.wait_for(
                asyncio.gather(
                    *(_post(host, port, path, key, {**b, "stream": True}) for b in bodies)
                ),
                30,
            )
            # the server's own lateness of every token handed over (raw samples)
            lateness = list(srv.state.counters.lateness._buf)
            written = srv.state.counters.tokens_written
            plain = [json.loads(await _post(host, port, path, key, b)) for b in bodies]
        texts = [c["choices"][0]["text"] for c in plain]
        events = []
        for s in streamed:
            ev = sse_events(s)
            assert ev[-1] == "[DONE]"
            events.append([json.loads(e)["choices"][0]["text"] for e in ev[:-1]])
        return events, texts, lateness, written

    with asyncio.Runner(loop_factory=factory) as r:
        events, texts, lateness, written = r.run(main())
    assert written == STREAMS * TOKENS
    assert [len(e) for e in events] == [TOKENS] * STREAMS, "a token skipped or repeated"
    assert ["".join(e) for e in events] == texts
    assert len(lateness) == STREAMS * TOKENS
    early = [ns for ns in lateness if ns < 0]
    assert not early, f"{len(early)} tokens handed over before their deadline"


@pytest.mark.parametrize("factory", loop_factories())
def test_a_non_stream_answer_never_leaves_before_its_last_token_is_due(
    factory: Callable[[], Any], tmp_path: Any
) -> None:
    ttft_ms, itl_ms, tokens = 3.0, 1.5, 30
    cfg = {
        "models": [
            {
                "id": "m",
                "ttft_ms": ttft_ms,
                "itl_ms": itl_ms,
                "ttft_jitter_ms": 0.0,
                "itl_jitter_ms": 0.0,
                "prefill_ms_per_token": 0.0,
                "decode_capacity_tps": 0,
                "context_length": 100_000,
            }
        ]
    }
    due_ns = round((ttft_ms + (tokens - 1) * itl_ms) * 1e6)  # from admission
    truth = tmp_path / "truth.jsonl"

    async def main() -> None:
        async with running_server(cfg, truth_path=truth) as srv:
            u = urlsplit(srv.base_url)
            host, port = u.hostname or "127.0.0.1", u.port or 80
            path = f"{u.path}/ai/completions"
            key = srv.key("enterprise-1")

            async def one(i: int) -> None:
                body = {"model": "m", "prompt": f"plain {i}", "max_tokens": tokens, "seed": i}
                answer = json.loads(await _post(host, port, path, key, body))
                assert answer["usage"]["completion_tokens"] == tokens

            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(40))), 30)

    with asyncio.Runner(loop_factory=factory) as r:
        r.run(main())
    lines = [json.loads(x) for x in truth.read_text().splitlines()]
    took = [r["finish_ns"] - r["admitted_ns"] for r in lines if r.get("admitted_ns")]
    assert len(took) == 40
    early = [t for t in took if t < due_ns]
    assert not early, f"{len(early)} answers left up to {(due_ns - min(early)) / 1e6:.2f} ms early"
