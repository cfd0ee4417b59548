"""A fuzz of expensive requests with no caps that hide cost: ``n`` and ``best_of`` in the
thousands, ``max_tokens`` in the millions, logprobs and alternatives beyond their
ranges, stop sequences of thousands of characters, bodies nested thousands deep,
streamed or not. Whatever the fuzz sends, no request gets a 5xx (no fault is injected),
another key's requests keep being answered within a bound, and the server answers after.

The server runs in its own process (no GIL shared with the client) with smaller output
limits than the defaults, so that the most expensive request the limits let through
takes milliseconds, not seconds; the limits, not the fuzz, bound the cost.
``benchmarks/server_isolation.py`` measures the default limits."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadkit.server.process import ServerProcess, start_server_process

pytestmark = pytest.mark.slow

# Before the lane, one key stalled the server for 9.6 to 38 s; a stall now lasts one
# slice of work (about a millisecond). 1 s is the margin for a loaded 2-core machine.
STALL_BOUND_S = 1.0
CONFIG = {
    "tiers": {
        "pro": {"requests": 10**9, "concurrency": 100, "keys": 1},
        "probe": {"requests": 10**9, "concurrency": 10, "keys": 1},
    },
    "limits": {"max_output_tokens": 2048, "max_logprob_entries": 4096},
}
DEEP = "__DEEP__"
STATUSES: Counter[int] = Counter()


class Probe(threading.Thread):
    """Another key's small chat completion, back to back, timing each answer."""

    def __init__(self, srv: ServerProcess) -> None:
        super().__init__(daemon=True)
        self.srv = srv
        self.worst = 0.0
        self.count = 0
        self.failures: list[int] = []
        self._done = threading.Event()

    def run(self) -> None:
        u = urlsplit(self.srv.api_root)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        body = json.dumps({"model": "loadkit-instant", "max_tokens": 1,
                           "messages": [{"role": "user", "content": "ping"}]})  # fmt: skip
        headers = {"Authorization": f"Bearer {self.srv.key('probe-1')}",
                   "Content-Type": "application/json"}  # fmt: skip
        while not self._done.is_set():
            t0 = time.perf_counter()
            conn.request("POST", u.path + "/chat/completions", body=body, headers=headers)
            r = conn.getresponse()
            r.read()
            self.worst = max(self.worst, time.perf_counter() - t0)
            self.count += 1
            if r.status != 200:
                self.failures.append(r.status)
            self._done.wait(0.005)

    def stop(self) -> None:
        self._done.set()
        self.join(30)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[ServerProcess, Probe]]:
    srv = start_server_process(config_dict=CONFIG)
    probe = Probe(srv)
    probe.start()
    try:
        yield srv, probe
    finally:
        probe.stop()
        srv.stop()


# absent (null), at and around the limits, or far beyond them
huge = st.one_of(
    st.none(),
    st.sampled_from([1, 2, 5, 8, 16, 20, 64, 128, 256, 1024, 2048]),
    st.integers(-5, 10**7),
)
long_text = st.tuples(st.text(min_size=1, max_size=3), st.integers(0, 5000)).map(
    lambda t: (t[0] * t[1])[: t[1]]
)
messages = st.lists(
    st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=50)}),
    min_size=1,
    max_size=3,
)
common = {
    "model": st.sampled_from(["loadkit-instant", "loadkit-small"]),
    "stream": st.booleans(),
    "n": huge,
    "max_tokens": huge,
    "stop": st.one_of(st.none(), st.none(), long_text, st.lists(long_text, max_size=5)),
    "temperature": st.sampled_from([0, 1.0]),
    "deep": st.one_of(st.just(0), st.integers(0, 3000)),
}
chat_bodies = st.fixed_dictionaries(
    {**common, "messages": messages, "logprobs": st.booleans(), "top_logprobs": huge}
)
completion_bodies = st.fixed_dictionaries(
    {
        **common,
        "prompt": st.one_of(
            st.text(max_size=40),
            st.lists(st.text(max_size=10), min_size=1, max_size=300),
            st.lists(st.integers(0, 50_000), min_size=1, max_size=20_000),
        ),
        "logprobs": huge,
        "echo": st.booleans(),
        "best_of": huge,
    }
)


def encode(body: dict[str, Any]) -> bytes:
    """JSON with a ``deep`` field nested ``deep`` levels (written by hand: a JSON encoder
    would overflow its own stack)."""
    depth = body.pop("deep")
    body["deep"] = DEEP
    text = json.dumps(body)
    nested = "[" * depth + "]" * depth if depth else "null"
    return text.replace(json.dumps(DEEP), nested).encode()


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])  # fmt: skip
@given(path_body=st.one_of(
    chat_bodies.map(lambda b: ("/chat/completions", b)),
    completion_bodies.map(lambda b: ("/completions", b)),
))  # fmt: skip
def test_expensive_requests_never_stall_another_key(fuzzed, path_body) -> None:  # type: ignore[no-untyped-def]
    srv, probe = fuzzed
    path, body = path_body
    u = urlsplit(srv.api_root)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    conn.request("POST", u.path + path, body=encode(dict(body)),
                 headers={"Authorization": f"Bearer {srv.key('pro-1')}",
                          "Content-Type": "application/json"})  # fmt: skip
    r = conn.getresponse()
    data = r.read()
    conn.close()
    assert r.status < 500, data[:300]
    STATUSES[r.status] += 1
    if r.status != 200:
        assert set(json.loads(data)["error"]) == {"message", "type", "param", "code"}
    assert probe.worst < STALL_BOUND_S, f"another key waited {probe.worst:.2f} s"
    assert not probe.failures


def test_the_server_answers_after_the_fuzz(fuzzed) -> None:  # type: ignore[no-untyped-def]
    srv, probe = fuzzed
    assert probe.count > 0 and probe.worst < STALL_BOUND_S and not probe.failures
    assert STATUSES[200] >= 10, STATUSES  # expensive requests were served, not only refused
    stats = srv.stats()
    assert stats["status"].get("500", 0) == 0 and stats["in_flight"]["by_key"] == {"admin": 1}
