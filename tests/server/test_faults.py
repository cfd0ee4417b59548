"""Fault injection is off by default and each fault is observable when on: 500s (the
server keeps serving), server-side disconnects mid-stream, stalls, and error events."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

from tests.server.conftest import Raw, sse_events, truth_of

MSGS = [{"role": "user", "content": "hi"}]
CHAT = {"model": "loadkit-instant", "messages": MSGS, "max_tokens": 10}


def test_no_faults_by_default(shared_server) -> None:  # type: ignore[no-untyped-def]
    raw = Raw(shared_server.base_url)
    for _ in range(20):
        assert raw.request("POST", "/ai/chat/completions", CHAT,
                           shared_server.key("enterprise-1"))[0] == 200  # fmt: skip


def test_error_rate_gives_500s_and_the_server_keeps_serving(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve({"faults": {"error_rate": 0.5, "seed": 3}})
    raw = Raw(srv.base_url)
    codes = [raw.request("POST", "/ai/chat/completions", CHAT, srv.key("pro-1"))
             for _ in range(40)]  # fmt: skip
    statuses = [c for c, _, _ in codes]
    assert 5 <= statuses.count(500) <= 35 and statuses.count(200) + statuses.count(500) == 40
    err = json.loads(next(b for c, _, b in codes if c == 500))
    assert err["error"]["code"] == "internal_error" and err["error"]["type"] == "server_error"
    assert raw.request("GET", "/ai/models")[0] == 200
    truth = truth_of(srv)
    fivehundreds = [t for t in truth if t["status"] == 500]
    assert all(t["decision"] == "admitted" and t["error_code"] == "internal_error"
               for t in fivehundreds)  # fmt: skip


def test_server_disconnect_mid_stream(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve({"faults": {"disconnect_rate": 1.0, "disconnect_after_tokens": 3}})
    u = urlsplit(srv.base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    body = json.dumps({**CHAT, "stream": True})
    conn.request("POST", u.path + "/ai/chat/completions", body=body,
                 headers={"Authorization": f"Bearer {srv.key('free-1')}"})  # fmt: skip
    r = conn.getresponse()
    assert r.status == 200
    got = b""
    try:
        while chunk := r.read1(65536):
            got += chunk
        incomplete = False
    except (http.client.IncompleteRead, ConnectionError):
        incomplete = True
    assert incomplete or b"[DONE]" not in got
    assert b"[DONE]" not in got and got.count(b'"content"') == 3
    (rec,) = truth_of(srv)
    assert rec["disconnect"] == "server" and rec["status"] == 200
    assert rec["completion_tokens"] == 3
    assert srv.stats()["in_flight"]["by_key"] == {"admin": 1}


def test_stall_pauses_the_stream(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve({"faults": {"stall_rate": 1.0, "stall_s": 0.4, "stall_after_tokens": 2}})
    u = urlsplit(srv.base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("POST", u.path + "/ai/chat/completions",
                 body=json.dumps({**CHAT, "max_tokens": 4, "stream": True}),
                 headers={"Authorization": f"Bearer {srv.key('free-1')}"})  # fmt: skip
    r = conn.getresponse()
    arrivals = []
    buf = b""
    while chunk := r.read1(65536):
        buf += chunk
        arrivals.append((time.perf_counter(), buf.count(b'"content"')))
    first_two = min(t for t, n in arrivals if n >= 2)
    third = min(t for t, n in arrivals if n >= 3)
    assert third - first_two >= 0.35
    assert sse_events(buf)[-1] == "[DONE]"
    # a non-stream is delayed by the stall too
    t0 = time.perf_counter()
    assert Raw(srv.base_url).request("POST", "/ai/chat/completions", CHAT,
                                     srv.key("free-2"))[0] == 200  # fmt: skip
    assert time.perf_counter() - t0 >= 0.35


def test_midstream_error_event_then_end(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve({"faults": {"midstream_error_rate": 1.0, "midstream_error_after_tokens": 2}})
    status, _, data = Raw(srv.base_url).request(
        "POST", "/ai/completions", {"model": "loadkit-instant", "prompt": "x", "stream": True},
        srv.key("free-1"))  # fmt: skip
    events = sse_events(data)
    assert status == 200 and len(events) == 3
    assert json.loads(events[-1])["error"]["code"] == "internal_error"
    (rec,) = truth_of(srv)
    assert rec["status"] == 200 and rec["error_code"] == "internal_error"
