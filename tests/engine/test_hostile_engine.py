"""The asyncio engine, over aiohttp, against every case of the hostile test server
(``tests/hostile_server.py``, loopback, port 0): each answer — nested JSON, invalid UTF-8,
bad events, CR-only lines, gzip, a cut body, a zip bomb, silence — gives exactly one record
with the case's expected outcome, and a closed-loop user that meets one goes on to its next
request."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from loadkit.engine.async_engine import AsyncEngine, EngineResult
from loadkit.records import RequestRecord
from loadkit.runmeta import Clock
from loadkit.scenario import Key, Scenario, scenario_from_dict
from tests.engine.scripted import MemorySink
from tests.hostile_server import CASES, HostileCase, HostileServer

KEY = Key("free-1", "free", "sk-hostile-secret")


@pytest.fixture(scope="module")
def server() -> Iterator[HostileServer]:
    with HostileServer() as srv:
        yield srv


def scenario(srv: HostileServer, case: HostileCase, load: dict[str, Any], **run: Any) -> Scenario:
    return scenario_from_dict(
        {
            "name": f"hostile-{case.name}",
            "target": {
                "base_url": srv.url(case.name),
                "model": "hostile",
                "connect_timeout_s": 5.0,
                "read_timeout_s": case.timeout_s,
                "request_timeout_s": case.timeout_s + 10,
            },
            "run": run,
            "tiers": {"free": {"requests": 1000, "window_s": 1.0, "concurrency": 100}},
            "load": [
                {"tier": "free", "mix": {"chat_stream" if case.stream else "chat": 1}, **load}
            ],
        }
    )


def engine(sc: Scenario, sink: MemorySink, **kw: Any) -> AsyncEngine:
    return AsyncEngine(
        sc, [KEY], sc.target.base_url, sink, Clock(), "run-hostile", progress=False, **kw
    )


def check(rec: RequestRecord, case: HostileCase) -> None:
    e = case.expected
    got = (rec.status, rec.transport_error, rec.error_code, rec.content_chunks)
    assert got == (e.status, e.transport_error, e.error_code, e.content_chunks), case.what
    if e.limit_kind is not None:
        assert rec.limit_kind == e.limit_kind, case.what
    if e.content_type is not None:
        assert rec.content_type == e.content_type, case.what
    assert KEY.secret not in rec.to_json()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_hostile_answer_gives_its_one_expected_record(server, case):
    sc = scenario(
        server,
        case,
        {"pattern": "burst", "burst_size": 1, "burst_period_s": 100, "phase_s": 0.0},
        duration_s=0.05,
        drain_s=case.timeout_s + 5,
    )
    seen = server.requests.count(case.name)
    sink = MemorySink()
    res = asyncio.run(engine(sc, sink).run())
    assert len(sink.records) == 1 == res.records == res.sent
    check(sink.records[0], case)
    assert server.requests.count(case.name) == seen + 1
    assert res.stop_reason == "schedule complete" and not res.engine_errors


@pytest.mark.slow
def test_a_closed_loop_user_survives_every_hostile_answer(server):
    """One closed-loop user per case, all at once: each sends again after its hostile
    answer (after a success, think time; after a failure, its backoff)."""
    sinks = {c.name: MemorySink() for c in CASES}
    seen = Counter(server.requests)
    engines = [
        engine(
            scenario(
                server,
                c,
                {"pattern": "closed", "concurrency": 1, "think_s": 0.2},
                duration_s=3.0,
                drain_s=10,
                max_requests=3,
            ),
            sinks[c.name],
            handle_signals=False,  # many engines on one loop: none owns the process
        )
        for c in CASES
    ]

    async def main() -> list[EngineResult]:
        return await asyncio.gather(*(e.run() for e in engines))

    results = asyncio.run(main())
    asked = Counter(server.requests) - seen
    for case, res in zip(CASES, results, strict=True):
        recs = sinks[case.name].records
        assert len(recs) >= 2, f"{case.name}: the user stopped after its first request"
        assert len(recs) == res.sent == asked[case.name], case.name
        for r in recs:
            check(r, case)
        assert not res.engine_errors, case.name
        assert [r.pause_s for r in recs] == expected_pauses(case, len(recs)), case.name


def expected_pauses(case: HostileCase, n: int) -> list[float]:
    """A success is followed by the think time, a 429 by its Retry-After (1 s), any other
    failure by a backoff doubling from 1 s."""
    status = case.expected.status
    if 200 <= status < 300:
        return [0.2] * n
    if status == 429:
        return [1.0] * n
    return [2.0**i for i in range(n)]
