"""When a request's connection was ready (``conn_s``): reported by both transports for
new and reused connections, stamped by the engine on the run's clock, absent when no
connection was ever ready."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from loadkit.engine.transport import Refused
from tests.engine.scripted import (
    CONNECTED,
    Fail,
    Wait,
    json_reply,
    make_scenario,
    run_scripted,
)
from tests.engine.test_transports import serve, transport

EXACT = 1e-9


class Recorder:
    """Milestones and the answer, in the order they came, on the loop's clock."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def connected(self) -> None:
        self.events.append(("connected", asyncio.get_running_loop().time()))


def test_engine_stamps_the_connection_on_the_run_clock():
    sc = make_scenario({"pattern": "constant", "rate_per_s": 5})
    # 0.2 s to get a connection, then 0.05 s to the answer.
    run = run_scripted(sc, [Wait(0.2), CONNECTED, *json_reply(after_s=0.05)])
    assert len(run.records) == 10
    for r in run.records:
        assert r.conn_s == pytest.approx(r.send_s + 0.2, abs=EXACT)
        assert r.headers_s == pytest.approx(r.send_s + 0.25, abs=EXACT)


def test_no_connection_no_time_and_a_retried_connection_counts_last():
    sc = make_scenario({"pattern": "constant", "rate_per_s": 5})

    def script(sent):
        if sent.n % 2:  # refused: no connection was ever ready
            return [Wait(0.1), Fail(Refused)]
        # the client's retry on a second connection: the one used is the last
        return [CONNECTED, Wait(0.1), CONNECTED, *json_reply(after_s=0.05)]

    run = run_scripted(sc, script)
    refused = [r for r in run.records if r.transport_error == "refused"]
    answered = [r for r in run.records if r.status == 200]
    assert len(refused) == 5 and len(answered) == 5
    assert all(r.conn_s is None for r in refused)
    assert [r.conn_s for r in answered] == pytest.approx(
        [r.send_s + 0.1 for r in answered], abs=EXACT
    )


def test_transports_report_new_and_reused_connections_before_the_answer(client: str):
    peers: list[object] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        await asyncio.sleep(0.02)  # the answer comes measurably after the connection
        return web.json_response({"choices": []})

    async def main() -> list[list[tuple[str, float]]]:
        out = []
        async with serve(handler) as base, transport(client) as t:
            for _ in range(2):  # one after the other: the second reuses the connection
                rec = Recorder()
                async with t.send("POST", base + "/v1/chat", {}, b"{}", rec) as resp:
                    rec.events.append(("answer", asyncio.get_running_loop().time()))
                    while await resp.read():
                        pass
                out.append(rec.events)
            # a request that does not ask is not told, and tells no other request
            async with t.send("GET", base + "/v1/models", {}, None) as resp:
                while await resp.read():
                    pass
        return out

    runs = asyncio.run(main())
    assert peers[0] == peers[1]  # the same client socket: the second connection was reused
    for events in runs:
        assert [name for name, _ in events] == ["connected", "answer"]
        assert events[1][1] - events[0][1] >= 0.015


def test_transports_report_nothing_for_a_refused_connection(client: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused

        async def main() -> Recorder:
            rec = Recorder()
            async with transport(client) as t:
                with pytest.raises(Refused):
                    async with t.send("GET", f"http://127.0.0.1:{port}/v1/models", {}, None, rec):
                        pass
            return rec

        assert asyncio.run(main()).events == []
