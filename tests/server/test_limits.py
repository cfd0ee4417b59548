"""Limits end to end, judged from the ground-truth log: the exact limiter never admits
more than N in any span of W nor more than C at once under many concurrent attempts;
retry-after is honest; the rate-limit headers are on every authenticated response; each
deliberately wrong limiter mode shows its wrong behaviour in the truth log."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from loadkit.durations import parse_duration
from loadkit.server.testing import ServerThread, max_admitted_in_window, max_in_flight
from tests.server.conftest import Raw, truth_of

SLOW = {"id": "slow", "ttft_ms": 50, "itl_ms": 10}  # ~90 ms per 5-token request
MSGS = [{"role": "user", "content": "hi"}]
CHAT = {"model": "loadkit-instant", "messages": MSGS, "max_tokens": 2}


def tier(requests: int, window_s: float, concurrency: int, keys: int = 1) -> dict[str, Any]:
    return {"requests": requests, "window_s": window_s, "concurrency": concurrency, "keys": keys}


async def _fire(
    base_url: str, key: str, n: int, span_s: float, body: dict[str, Any], stream: bool = False
) -> list[int]:
    """``n`` attempts spread evenly over ``span_s`` seconds, all on their own tasks."""
    statuses: list[int] = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def one(i: int) -> None:
            await asyncio.sleep(span_s * i / n)
            async with s.post(
                base_url + "/ai/chat/completions",
                json={**body, "stream": stream},
                headers={"Authorization": f"Bearer {key}", "x-loadkit-request-id": f"r{i}"},
            ) as r:
                await r.read()
                statuses.append(r.status)

        await asyncio.gather(*(one(i) for i in range(n)))
    return statuses


def _admitted(truth: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    return [t for t in truth if t["key"] == label and t["decision"] == "admitted"]


def test_exact_limiter_holds_under_concurrent_attempts(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve({"tiers": {"free": tier(10, 1.0, 3)}, "models": [SLOW]})
    body = {**CHAT, "model": "slow", "max_tokens": 5}
    statuses = asyncio.run(_fire(srv.base_url, srv.key("free-1"), 200, 3.0, body, stream=True))
    truth = truth_of(srv)
    adm = _admitted(truth, "free-1")
    assert len(truth) == 200 and statuses.count(200) == len(adm)
    assert max_admitted_in_window([t["admitted_ns"] for t in adm], 1_000_000_000) <= 10
    assert max_in_flight([(t["admitted_ns"], t["finish_ns"]) for t in adm]) <= 3
    # the limits were actually reached: both refusals happened and admissions were near N
    decisions = {t["decision"] for t in truth}
    assert {"rate_limited", "concurrency_limited"} <= decisions
    assert len(adm) >= 20
    assert all(t["request_id"] and t["finish_ns"] >= t["arrival_ns"] for t in truth)
    refused = [t for t in truth if t["decision"] != "admitted"]
    assert all(t["admitted_ns"] is None and t["status"] == 429 for t in refused)
    assert srv.stats()["in_flight"]["by_key"].get("free-1", 0) == 0


def test_retry_after_is_a_promise(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve({"tiers": {"free": tier(3, 0.6, 10)}})
    raw = Raw(srv.base_url)
    key = srv.key("free-1")
    promised = 0
    for _ in range(3):
        while True:
            status, h, _ = raw.request("POST", "/ai/chat/completions", CHAT, key)
            if status == 429:
                break
            assert status == 200
        assert h["retry-after"] == str(-(-int(h["retry-after-ms"]) // 1000))
        time.sleep(int(h["retry-after-ms"]) / 1000)  # the client honours the header, no more
        status, _, body = raw.request("POST", "/ai/chat/completions", CHAT, key)
        assert status == 200, body
        promised += 1
    assert promised == 3


def test_ratelimit_headers_on_every_authenticated_response(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve({"tiers": {"free": tier(4, 10.0, 2)}})
    raw = Raw(srv.base_url)
    key = srv.key("free-1")
    seen = []
    for body in (CHAT, {"model": "nope", "messages": CHAT["messages"]}, {"x": 1}):
        seen.append(raw.request("POST", "/ai/chat/completions", body, key))
    seen.append(raw.request("POST", "/ai/admin/models", {"id": "m"}, key))  # 403
    seen.append(raw.request("POST", "/ai/chat/completions", CHAT, key))  # 429
    assert [s for s, _, _ in seen] == [200, 404, 400, 403, 429]
    for i, (_, h, _) in enumerate(seen):
        assert h["x-ratelimit-limit-requests"] == "4"
        assert h["x-ratelimit-remaining-requests"] == str(max(0, 3 - i))
        assert 9 < parse_duration(h["x-ratelimit-reset-requests"]) <= 10
        assert h["x-ratelimit-limit-concurrency"] == "2"
    # a stream carries them too
    status, h, _ = raw.request("POST", "/ai/chat/completions", {**CHAT, "stream": True},
                               srv.key("free-1"))  # fmt: skip
    assert status == 429 and "retry-after-ms" in h
    # 401 and unauthenticated paths: no limiter, no headers
    status, h, _ = raw.request("GET", "/ai/models", key=key)
    assert status == 200 and "x-ratelimit-limit-requests" not in h
    status, h, _ = raw.request("POST", "/ai/chat/completions", CHAT, "wrong")
    assert status == 401 and "x-ratelimit-limit-requests" not in h
    decisions = [t["decision"] for t in truth_of(srv)]
    assert decisions == ["admitted"] * 4 + ["rate_limited"] * 2 + ["unlimited", "unauthenticated"]


def test_429_uses_neither_a_request_nor_a_slot(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve({"tiers": {"free": tier(2, 30.0, 5, keys=2)}})
    raw = Raw(srv.base_url)
    codes = [raw.request("POST", "/ai/chat/completions", CHAT, srv.key("free-1"))[0]
             for _ in range(6)]  # fmt: skip
    assert codes == [200, 200, 429, 429, 429, 429]
    st = srv.stats()
    assert st["admitted"] >= 2 and st["rejected"]["rate_limit_exceeded"] == 4
    assert st["in_flight"]["by_key"].get("free-1", 0) == 0
    # the other key of the tier is untouched
    assert raw.request("POST", "/ai/chat/completions", CHAT, srv.key("free-2"))[0] == 200


# --- the deliberately wrong modes ----------------------------------------------------


def _burst(srv: ServerThread, n: int, stream: bool = False, body: dict | None = None) -> list[int]:
    return asyncio.run(_fire(srv.base_url, srv.key("free-1"), n, 0.0, body or CHAT, stream))


def test_fixed_window_admits_2n_across_an_edge(serve) -> None:  # type: ignore[no-untyped-def]
    w = 2_000_000_000
    srv = serve({"tiers": {"free": tier(10, 2.0, 50)}, "limiter": {"mode": "fixed_window"}})
    # Same clock as the server (CLOCK_MONOTONIC): a burst 0.8 s before an edge of a window
    # (room for a slow machine to finish it in time), another just after.
    now = time.perf_counter_ns()
    edge = (now // w + 1) * w
    if edge - now < 1_000_000_000:
        edge += w
    time.sleep((edge - 800_000_000 - time.perf_counter_ns()) / 1e9)
    _burst(srv, 12)
    assert time.perf_counter_ns() < edge, "the first burst must end before the edge"
    time.sleep(max(0.0, (edge + 20_000_000 - time.perf_counter_ns()) / 1e9))
    _burst(srv, 12)
    adm = [t["admitted_ns"] for t in _admitted(truth_of(srv), "free-1")]
    assert len(adm) == 20
    assert max_admitted_in_window(adm, w) == 20  # 2N in a span shorter than W: a violation


def test_token_bucket_bursts_beyond_the_limit(serve) -> None:  # type: ignore[no-untyped-def]
    # Refill is 10 per minute: a burst, however slow the machine, meets a full bucket of 20.
    srv = serve({"tiers": {"free": tier(10, 60.0, 100)},
                 "limiter": {"mode": "token_bucket", "burst_factor": 2.0}})  # fmt: skip
    statuses = _burst(srv, 30)
    assert statuses.count(200) == 20
    adm = [t["admitted_ns"] for t in _admitted(truth_of(srv), "free-1")]
    assert max_admitted_in_window(adm, 60_000_000_000) == 20


def test_concurrency_off_by_one(serve) -> None:  # type: ignore[no-untyped-def]
    slow = {"id": "slow", "ttft_ms": 300}
    srv = serve({"tiers": {"free": tier(100, 1.0, 2)}, "models": [slow],
                 "limiter": {"mode": "concurrency_off_by_one"}})  # fmt: skip
    statuses = _burst(srv, 8, stream=True, body={**CHAT, "model": "slow"})
    assert statuses.count(200) == 3
    adm = _admitted(truth_of(srv), "free-1")
    assert max_in_flight([(t["admitted_ns"], t["finish_ns"]) for t in adm]) == 3


def test_under_admit_throttles_falsely(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve({"tiers": {"free": tier(10, 5.0, 100)}, "limiter": {"mode": "under_admit"}})
    raw = Raw(srv.base_url)
    results = [raw.request("POST", "/ai/chat/completions", CHAT, srv.key("free-1"))
               for _ in range(10)]  # fmt: skip
    assert [s for s, _, _ in results] == [200] * 8 + [429] * 2
    _, h, body = results[8]
    assert b"rate_limit_exceeded" in body and int(h["x-ratelimit-remaining-requests"]) == 2
    truth = truth_of(srv)
    assert sum(t["decision"] == "rate_limited" for t in truth) == 2
    assert len(_admitted(truth, "free-1")) == 8  # refused while under N in the window


def test_off_admits_everything(serve) -> None:  # type: ignore[no-untyped-def]
    slow = {"id": "slow", "ttft_ms": 200}
    srv = serve({"tiers": {"free": tier(5, 10.0, 2)}, "models": [slow],
                 "limiter": {"mode": "off"}})  # fmt: skip
    statuses = _burst(srv, 20, stream=True, body={**CHAT, "model": "slow"})
    assert statuses == [200] * 20
    adm = _admitted(truth_of(srv), "free-1")
    assert max_admitted_in_window([t["admitted_ns"] for t in adm], 10**10) == 20
    assert max_in_flight([(t["admitted_ns"], t["finish_ns"]) for t in adm]) > 2
