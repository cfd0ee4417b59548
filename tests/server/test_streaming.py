"""The wire format of streams (SSE framing, role chunk, finish_reason, usage, [DONE]),
usage agreement between streaming and non-streaming, the ground truth of a stream, and a
client that hangs up mid-stream getting its concurrency slot freed."""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.server.conftest import Raw, sse_events, truth_of

MSGS = [{"role": "user", "content": "Write about rivers."}]


def test_chat_stream_wire_format(shared_server) -> None:  # type: ignore[no-untyped-def]
    raw = Raw(shared_server.base_url)
    body = {"model": "loadkit-instant", "messages": MSGS, "max_tokens": 4, "n": 2,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    status, h, data = raw.request("POST", "/ai/chat/completions", body,
                                  shared_server.key("enterprise-1"))  # fmt: skip
    assert status == 200 and h["content-type"].startswith("text/event-stream")
    assert "x-ratelimit-remaining-requests" in h
    events = sse_events(data)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    # role-only first chunk per choice
    for i in (0, 1):
        first = next(c for c in chunks if c["choices"] and c["choices"][0]["index"] == i)
        assert first["choices"][0]["delta"] == {"role": "assistant"}
    # one content chunk per choice per step; the last of each choice has finish_reason
    content = [c for c in chunks if c["choices"] and "content" in c["choices"][0]["delta"]]
    assert len(content) == 8
    for i in (0, 1):
        mine = [c["choices"][0] for c in content if c["choices"][0]["index"] == i]
        assert [m["finish_reason"] for m in mine] == [None, None, None, "length"]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8


def test_completion_stream_wire_format(shared_server) -> None:  # type: ignore[no-untyped-def]
    raw = Raw(shared_server.base_url)
    body = {"model": "loadkit-instant", "prompt": "abc", "max_tokens": 3, "stream": True}
    status, _, data = raw.request("POST", "/ai/completions", body, shared_server.key("pro-1"))
    events = sse_events(data)
    chunks = [json.loads(e) for e in events[:-1]]
    assert status == 200 and events[-1] == "[DONE]" and len(chunks) == 3
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "usage" not in chunks[-1]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/ai/chat/completions", {"model": "loadkit-instant", "messages": MSGS, "n": 3,
                                  "max_tokens": 30, "stop": ["."]}),
        ("/ai/chat/completions", {"model": "loadkit-instant", "messages": MSGS}),
        ("/ai/completions", {"model": "loadkit-instant", "prompt": ["a b", "c"], "n": 2,
                             "echo": True, "suffix": "!", "logprobs": 2, "max_tokens": 7}),
        ("/ai/completions", {"model": "loadkit-instant", "prompt": [1, 2, 3], "stop": ","}),
    ],
)  # fmt: skip
def test_stream_and_non_stream_agree(shared_server, path: str, body: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    raw = Raw(shared_server.base_url)
    key = shared_server.key("enterprise-1")
    _, _, plain = raw.request("POST", path, body, key)
    full = json.loads(plain)
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    _, _, data = raw.request("POST", path, streamed, key)
    chunks = [json.loads(e) for e in sse_events(data)[:-1]]
    assert chunks[-1]["usage"] == full["usage"]
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for c in chunks[:-1]:
        ch = c["choices"][0]
        piece = ch["delta"].get("content", "") if "delta" in ch else ch["text"]
        texts[ch["index"]] = texts.get(ch["index"], "") + piece
        if ch["finish_reason"]:
            finish[ch["index"]] = ch["finish_reason"]
    for ch in full["choices"]:
        want = ch["message"]["content"] if "message" in ch else ch["text"]
        assert texts[ch["index"]] == want
        assert finish[ch["index"]] == ch["finish_reason"]


def test_stream_truth_and_timing(serve) -> None:  # type: ignore[no-untyped-def]
    model = {"id": "timed", "ttft_ms": 60, "itl_ms": 15}
    srv = serve({"models": [model]})
    raw = Raw(srv.base_url)
    body = {"model": "timed", "messages": MSGS, "max_tokens": 5, "stream": True}
    t0 = time.perf_counter_ns()
    status, _, _ = raw.request("POST", "/ai/chat/completions", body, srv.key("free-1"),
                               headers={"x-loadkit-request-id": "abc-1"})  # fmt: skip
    assert status == 200
    (rec,) = truth_of(srv)
    assert rec["request_id"] == "abc-1" and rec["key"] == "free-1" and rec["stream"] is True
    assert rec["endpoint"] == "chat" and rec["decision"] == "admitted" and rec["status"] == 200
    assert t0 <= rec["arrival_ns"] <= rec["admitted_ns"] < rec["finish_ns"]
    # TTFT 60 ms + 4 x 15 ms, scheduled from admission (generous upper bound: busy CI)
    assert 115e6 <= rec["finish_ns"] - rec["admitted_ns"] < 2e9
    assert rec["completion_tokens"] == 5 and "disconnect" not in rec
    lat = srv.stats()["lateness"]
    assert lat["count"] == 5 and lat["p50_ms"] is not None


def test_client_disconnect_frees_the_slot(serve) -> None:  # type: ignore[no-untyped-def]
    model = {"id": "long", "ttft_ms": 0, "itl_ms": 20}
    srv = serve({"models": [model], "tiers": {"free": {"concurrency": 1, "keys": 1}}})
    u = urlsplit(srv.base_url)
    body = json.dumps({"model": "long", "messages": MSGS, "max_tokens": 500, "stream": True})
    s = socket.create_connection((u.hostname, u.port))
    s.sendall(
        (
            f"POST {u.path}/ai/chat/completions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {srv.key('free-1')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
    )
    got = b""
    while got.count(b"data: ") < 3:  # a few tokens are flowing
        got += s.recv(65536)
    assert srv.stats()["in_flight"]["by_key"] == {"free-1": 1, "admin": 1}
    raw = Raw(srv.base_url)
    busy = raw.request("POST", "/ai/chat/completions", {"model": "long", "messages": MSGS},
                       srv.key("free-1"))  # fmt: skip
    assert busy[0] == 429 and b"concurrency_limit_exceeded" in busy[2]
    s.close()
    srv.wait_idle()
    assert srv.stats()["in_flight"]["by_key"] == {"admin": 1}
    recs = truth_of(srv)
    cut = next(r for r in recs if r.get("disconnect"))
    assert cut["disconnect"] == "client" and 2 <= cut["completion_tokens"] < 500
    # the slot is usable again
    ok = raw.request("POST", "/ai/chat/completions",
                     {"model": "loadkit-instant", "messages": MSGS}, srv.key("free-1"))  # fmt: skip
    assert ok[0] == 200
