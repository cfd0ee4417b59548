"""When a request's connection was ready and when its headers left (``conn_s``,
``sent_s``): reported by the aiohttp transport from aiohttp's trace hooks for new and
reused connections, stamped by the engine on the run's clock, absent when the transport
never got that far."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from loadkit.engine.transport import Refused
from tests.engine.scripted import (
    CONNECTED,
    HEADERS_SENT,
    Fail,
    Wait,
    json_reply,
    make_scenario,
    run_scripted,
)
from tests.engine.test_aiohttp_transport import serve, transport

EXACT = 1e-9


class Recorder:
    """Milestones and the answer, in the order they came, on the loop's clock."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def connected(self) -> None:
        self.events.append(("connected", asyncio.get_running_loop().time()))

    def sent(self) -> None:
        self.events.append(("sent", asyncio.get_running_loop().time()))


def test_engine_stamps_each_milestone_on_the_run_clock():
    sc = make_scenario({"pattern": "constant", "rate_per_s": 5})
    # 0.2 s to get a connection, 0.01 s to write the request, 0.05 s to the answer.
    script = [Wait(0.2), CONNECTED, Wait(0.01), HEADERS_SENT, *json_reply(after_s=0.05)]
    run = run_scripted(sc, script)
    assert len(run.records) == 10
    for r in run.records:
        assert r.conn_s == pytest.approx(r.send_s + 0.2, abs=EXACT)
        assert r.sent_s == pytest.approx(r.send_s + 0.21, abs=EXACT)
        assert r.headers_s == pytest.approx(r.send_s + 0.26, abs=EXACT)


def test_no_milestone_no_time_and_a_retried_connection_counts_last():
    sc = make_scenario({"pattern": "constant", "rate_per_s": 5})

    def script(sent):
        if sent.n % 2:  # refused: no connection was ever ready
            return [Wait(0.1), Fail(Refused)]
        # the client's retry on a second connection: the one used is the last
        return [CONNECTED, Wait(0.1), CONNECTED, HEADERS_SENT, *json_reply(after_s=0.05)]

    run = run_scripted(sc, script)
    refused = [r for r in run.records if r.transport_error == "refused"]
    answered = [r for r in run.records if r.status == 200]
    assert len(refused) == 5 and len(answered) == 5
    assert all(r.conn_s is None and r.sent_s is None for r in refused)
    for r in answered:
        assert r.conn_s == pytest.approx(r.send_s + 0.1, abs=EXACT) and r.sent_s == r.conn_s


def test_aiohttp_reports_new_and_reused_connections_before_the_answer():
    peers: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        await asyncio.sleep(0.02)  # the answer comes measurably after the request left
        return web.json_response({"choices": []})

    async def main() -> list[list[tuple[str, float]]]:
        out = []
        async with serve(handler) as base, transport() as t:
            for _ in range(2):  # one after the other: the second reuses the connection
                rec = Recorder()
                async with t.send("POST", base + "/v1/chat", {}, b"{}", rec) as resp:
                    rec.events.append(("answer", asyncio.get_running_loop().time()))
                    while await resp.read():
                        pass
                out.append(rec.events)
        return out

    runs = asyncio.run(main())
    assert peers[0] == peers[1]  # the same client socket: the second connection was reused
    for events in runs:
        assert [name for name, _ in events] == ["connected", "sent", "answer"]
        times = [t for _, t in events]
        assert times == sorted(times) and times[2] - times[1] >= 0.015


def test_aiohttp_reports_nothing_for_a_refused_connection():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused

        async def main() -> Recorder:
            rec = Recorder()
            async with transport() as t:
                with pytest.raises(Refused):
                    async with t.send("GET", f"http://127.0.0.1:{port}/v1/models", {}, None, rec):
                        pass
            return rec

        assert asyncio.run(main()).events == []
