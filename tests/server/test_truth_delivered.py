"""Truth is what was delivered: for every fault kind, the tokens a client received equal
the truth log's ``completion_tokens`` for that request id, the bill charges exactly
those, and the truth says who disconnected. Planned tokens never sent are not counted."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from loadkit.server.testing import ServerThread
from tests.server.conftest import truth_of

MSGS = [{"role": "user", "content": "Tell me about rivers."}]
# one credit per completion token, prompts free: "spent" counts delivered tokens
BILLING = {"billing": {"completion_per_1k": 1000.0},
           "tiers": {"pro": {"requests": 100_000, "concurrency": 100, "keys": 1,
                             "balance": 1_000_000.0}}}  # fmt: skip


def tokens_in(data: bytes) -> tuple[int, str | None]:
    """Content tokens in an SSE body (possibly cut short) and an error event's code."""
    n, code = 0, None
    for block in data.split(b"\n\n"):
        if not block.startswith(b"data: {"):
            continue
        try:
            ev = json.loads(block[6:])
        except ValueError:
            continue  # a torn last event
        if "error" in ev:
            code = ev["error"]["code"]
        for c in ev.get("choices", []):
            piece = c["delta"].get("content") if "delta" in c else c.get("text")
            n += bool(piece)
    return n, code


async def send(session: aiohttp.ClientSession, srv: ServerThread, rid: str, path: str,
               body: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """What the client got: status, tokens received, the error code it saw."""
    headers = {"Authorization": f"Bearer {srv.key('pro-1')}", "x-loadkit-request-id": rid}
    data = b""
    async with session.post(srv.api_root + path, json=body, headers=headers) as r:
        try:
            async for chunk in r.content.iter_any():
                data += chunk
        except aiohttp.ClientPayloadError:
            pass  # cut by the server
        if not body.get("stream"):
            doc = json.loads(data)
            got = doc["usage"]["completion_tokens"] if r.status == 200 else 0
            return {"status": r.status, "tokens": got, "code": doc.get("error", {}).get("code")}
        n, code = tokens_in(data)
        return {"status": r.status, "tokens": n, "code": code}


def run_all(srv: ServerThread, reqs: list[tuple[str, str, dict[str, Any]]]) -> dict[str, dict]:  # type: ignore[type-arg]
    async def main() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            return await asyncio.gather(*(send(s, srv, rid, p, b) for rid, p, b in reqs))

    return dict(zip([rid for rid, _, _ in reqs], asyncio.run(main()), strict=True))


FAULTS = {
    "error": {"error_rate": 1.0},
    "midstream": {"midstream_error_rate": 1.0, "midstream_error_after_tokens": 2},
    "disconnect": {"disconnect_rate": 1.0, "disconnect_after_tokens": 3},
    "stall": {"stall_rate": 1.0, "stall_s": 0.05, "stall_after_tokens": 1},
    "disconnect late": {"disconnect_rate": 1.0, "disconnect_after_tokens": 50},
}


def shapes() -> list[tuple[str, dict[str, Any]]]:
    chat = {"model": "loadkit-instant", "messages": MSGS, "max_tokens": 8}
    comp = {"model": "loadkit-instant", "prompt": "Once upon", "max_tokens": 8}
    return [
        ("/chat/completions", {**chat, "stream": True}),
        ("/chat/completions", {**chat, "stream": True, "n": 3}),
        ("/chat/completions", {**chat, "stream": True, "stop": ["."], "max_tokens": 30}),
        ("/chat/completions", chat),
        ("/completions", {**comp, "stream": True, "n": 2}),
        ("/completions", comp),
        ("/completions", {**comp, "best_of": 3}),
    ]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_truth_equals_delivered_for_each_fault(serve, fault: str) -> None:  # type: ignore[no-untyped-def]
    srv = serve({**BILLING, "faults": FAULTS[fault]})
    reqs = [(f"r{i}", p, b) for i, (p, b) in enumerate(shapes())]
    got = run_all(srv, reqs)
    truth = {t["request_id"]: t for t in truth_of(srv)}
    for rid, _, body in reqs:
        t, g = truth[rid], got[rid]
        assert t["status"] == g["status"], (fault, body, t, g)
        assert (t["completion_tokens"] or 0) == g["tokens"], (fault, body, t, g)
        if body.get("stream") and fault in ("disconnect", "disconnect late"):
            assert t["disconnect"] == "server"
        if body.get("stream") and fault == "midstream":
            assert g["code"] == t["error_code"] == "internal_error"
    if fault == "error":
        assert all(g["status"] == 500 and g["tokens"] == 0 for g in got.values())
    if fault == "midstream":  # planned 8 or more, delivered 2 per choice
        assert got["r0"]["tokens"] == 2 and got["r1"]["tokens"] == 6
    if fault == "disconnect":
        assert got["r0"]["tokens"] == 3 and got["r1"]["tokens"] == 9
    spent = srv.stats()["spent"].get("pro-1", 0.0)
    assert spent == pytest.approx(sum(g["tokens"] for g in got.values()))


def test_truth_equals_delivered_under_mixed_faults(serve) -> None:  # type: ignore[no-untyped-def]
    faults = {"seed": 11, "error_rate": 0.15, "midstream_error_rate": 0.25,
              "midstream_error_after_tokens": 2, "disconnect_rate": 0.25,
              "disconnect_after_tokens": 4, "stall_rate": 0.2, "stall_s": 0.02}  # fmt: skip
    srv = serve({**BILLING, "faults": faults})
    kinds = shapes()
    reqs = [(f"m{i}", *kinds[i % len(kinds)]) for i in range(70)]
    got = run_all(srv, reqs)
    truth = {t["request_id"]: t for t in truth_of(srv)}
    seen = set()
    for rid, _, _ in reqs:
        t, g = truth[rid], got[rid]
        assert t["status"] == g["status"] and (t["completion_tokens"] or 0) == g["tokens"]
        seen.add("500" if t["status"] == 500 else t.get("disconnect") or t["error_code"] or "ok")
    assert seen == {"500", "server", "internal_error", "ok"}
    spent = srv.stats()["spent"].get("pro-1", 0.0)
    assert spent == pytest.approx(sum(g["tokens"] for g in got.values()))


# --- the client hangs up ------------------------------------------------------------------


def _post(srv: ServerThread, body: dict[str, Any], rid: str) -> http.client.HTTPConnection:
    u = urlsplit(srv.api_root)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    headers = {"Authorization": f"Bearer {srv.key('pro-1')}", "x-loadkit-request-id": rid,
               "Content-Type": "application/json"}  # fmt: skip
    conn.request("POST", u.path + "/chat/completions", body=json.dumps(body), headers=headers)
    return conn


def test_a_client_that_leaves_mid_stream_is_charged_what_it_got(serve) -> None:  # type: ignore[no-untyped-def]
    # the stream stalls after 3 tokens; the client leaves during the stall
    srv = serve({**BILLING, "faults": {"stall_rate": 1.0, "stall_s": 1.0, "stall_after_tokens": 3}})
    conn = _post(srv, {"model": "loadkit-instant", "messages": MSGS, "max_tokens": 10,
                       "stream": True}, "c1")  # fmt: skip
    r = conn.getresponse()
    data = b""
    while tokens_in(data)[0] < 3:
        data += r.read1(65536)
    conn.close()
    (t,) = truth_of(srv)
    assert tokens_in(data)[0] == 3
    assert (t["status"], t["disconnect"], t["completion_tokens"]) == (200, "client", 3)
    assert srv.stats()["spent"]["pro-1"] == pytest.approx(3)


def test_a_client_that_leaves_before_the_answer_gets_no_status(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve({**BILLING, "models": [{"id": "slow", "ttft_ms": 400}]})
    conn = _post(srv, {"model": "slow", "messages": MSGS, "max_tokens": 5}, "c2")
    deadline = time.monotonic() + 10
    while not srv.state.limiter.in_flight_by_key().get("pro-1"):  # admitted, not yet answered
        assert time.monotonic() < deadline
        time.sleep(0.005)  # another thread's state: nothing to await
    conn.close()
    (t,) = truth_of(srv)
    assert (t["status"], t["disconnect"], t["completion_tokens"]) == (None, "client", 0)
    assert t["decision"] == "admitted" and t["finish_ns"] > t["admitted_ns"]
    assert srv.stats()["spent"].get("pro-1", 0.0) == 0
