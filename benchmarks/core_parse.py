"""Speed of the pure measurement core on the engine's hot path: SSE decoding, OpenAI chunk
interpretation and RequestTrace, for the common case (LF-terminated ``data: `` lines,
identity encoding, small JSON chunks).

    python benchmarks/core_parse.py            # about 20 s
    python benchmarks/core_parse.py --quick    # fewer repeats
    python benchmarks/core_parse.py --giant    # also one 8 and 24 MiB line per request

Each figure is the best of many short repeats of this thread's CPU time (the least
disturbed by other processes on a shared machine), in microseconds per unit. Not a test:
compare before/after a change, e.g. against a copy of the old modules:
``PYTHONPATH=/tmp/old python benchmarks/core_parse.py``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from loadkit.sse import SSEDecoder
from loadkit.trace import RequestInfo, RequestTrace

INFO = RequestInfo("run", "async", "w", "w-1", "free", "free-1", "chat", True, "m")
HEADERS = {
    "content-type": "text/event-stream",
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-reset-requests": "1s",
}


def chunk_event(i: int, text: str = " word", finish: str | None = None) -> bytes:
    """One event as an OpenAI server sends it (ids, model, fingerprint: realistic size)."""
    obj = {
        "id": "chatcmpl-9x8Yb7Zc6Wd5Ve4Uf3Tg2Sh1Ri0Q",
        "object": "chat.completion.chunk",
        "created": 1732000000 + i,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [
            {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish}
        ],
    }
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def stream_16() -> list[bytes]:
    """A 16-token stream as read off the wire: one event per read, usage, [DONE]."""
    role = {
        "id": "chatcmpl-9x8Yb7Zc6Wd5Ve4Uf3Tg2Sh1Ri0Q",
        "object": "chat.completion.chunk",
        "created": 1732000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
    }
    usage = {
        "id": "chatcmpl-9x8Yb7Zc6Wd5Ve4Uf3Tg2Sh1Ri0Q",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28},
    }
    reads = [b"data: " + json.dumps(role).encode() + b"\n\n"]
    reads += [chunk_event(i) for i in range(15)]
    reads.append(chunk_event(15, finish="length"))
    reads.append(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
    return reads


def best(fn: Callable[[], None], repeats: int) -> float:
    # CPU time of this thread, not wall time: on a shared machine the wall clock also counts
    # the time other processes held the core.
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return min(times)


def bench_decode(n_events: int, reads: str, repeats: int) -> float:
    """µs per event for SSEDecoder alone."""
    events = [chunk_event(i) for i in range(n_events)]
    if reads == "event":
        parts = events
    else:  # fixed-size reads: events split anywhere, as a busy socket delivers them
        blob = b"".join(events)
        size = int(reads)
        parts = [blob[i : i + size] for i in range(0, len(blob), size)]

    def run() -> None:
        d = SSEDecoder()
        n = 0
        for p in parts:
            n += len(d.feed(p))
        assert n == n_events, n

    return best(run, repeats) / n_events * 1e6


def bench_trace_stream(n: int, repeats: int) -> float:
    """µs per whole 16-chunk streamed request through RequestTrace."""
    reads = stream_16()

    def run() -> None:
        for _ in range(n):
            t = RequestTrace(INFO, 0.0)
            t.response(0.1, 200, HEADERS)
            for i, r in enumerate(reads):
                t.data(0.2 + i * 0.01, r)
            rec = t.finish(0.5)
        assert rec.content_chunks == 16 and rec.transport_error is None, rec

    return best(run, repeats) / n * 1e6


def bench_trace_body(n: int, repeats: int) -> float:
    """µs per non-streamed request (small JSON body) through RequestTrace."""
    info = RequestInfo("run", "async", "w", "w-1", "free", "free-1", "chat", False, "m")
    body = json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello " * 16},
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28},
        }
    ).encode()
    headers = dict(HEADERS, **{"content-type": "application/json"})

    def run() -> None:
        for _ in range(n):
            t = RequestTrace(info, 0.0)
            t.response(0.1, 200, headers)
            t.data(0.2, body)
            rec = t.finish(0.3)
        assert rec.completion_tokens == 16, rec

    return best(run, repeats) / n * 1e6


def bench_trace_429(n: int, repeats: int) -> float:
    """µs per 429 (error body, rate-limit headers) through RequestTrace."""
    info = RequestInfo("run", "async", "w", "w-1", "free", "free-1", "chat", True, "m")
    body = (
        b'{"error":{"message":"limit of requests per window reached for this key",'
        b'"type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}'
    )
    headers = dict(
        HEADERS,
        **{"content-type": "application/json", "retry-after": "1", "retry-after-ms": "750"},
    )

    def run() -> None:
        for _ in range(n):
            t = RequestTrace(info, 0.0)
            t.response(0.1, 429, headers)
            t.data(0.2, body)
            rec = t.finish(0.3)
        assert rec.error_code == "rate_limit_exceeded", rec

    return best(run, repeats) / n * 1e6


def bench_giant_line(mib: int, read: int) -> float:
    """Seconds of CPU one streamed request with a ``mib`` MiB data line costs, the line
    arriving in ``read``-byte pieces (0: in one piece, as a readline-based client hands
    it over)."""
    line = b"data: " + b"x" * (mib << 20) + b"\n\n"
    parts = [line[i : i + read] for i in range(0, len(line), read)] if read else [line]
    reads = stream_16()

    def run() -> None:
        t = RequestTrace(INFO, 0.0)
        t.response(0.1, 200, HEADERS)
        t.data(0.2, reads[1])
        for p in parts:
            t.data(0.3, p)
        for r in reads[2:]:
            t.data(0.4, r)
        t.finish(0.5)

    return best(run, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--giant", action="store_true", help="also time 8 and 24 MiB lines")
    args = ap.parse_args()
    r = 8 if args.quick else 30
    rows = [
        ("SSE decode, one event per read", bench_decode(10_000, "event", r), "event"),
        ("SSE decode, 4096-byte reads", bench_decode(10_000, "4096", r), "event"),
        ("SSE decode, 128-byte reads", bench_decode(10_000, "128", r), "event"),
        ("RequestTrace, 16-chunk stream", bench_trace_stream(200, r), "request"),
        ("RequestTrace, non-streamed JSON body", bench_trace_body(2_000, r), "request"),
        ("RequestTrace, 429 with error body", bench_trace_429(2_000, r), "request"),
    ]
    for name, us, unit in rows:
        print(f"{name:<38} {us:7.2f} µs/{unit}")
    if args.giant:
        for mib in (8, 24):
            for read, how in ((65536, "64 KiB reads"), (0, "one piece")):
                secs = bench_giant_line(mib, read)
                print(f"one {mib} MiB SSE line, {how:<13}       {secs:7.3f} s/request")


if __name__ == "__main__":
    main()
