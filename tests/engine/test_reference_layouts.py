"""The asyncio engine over aiohttp against the reference server in each path layout (seed
and OpenAI), one request of every kind answered; and against a key presented in a style
the server does not accept, a run that stops early instead of hammering it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from loadkit.engine.async_engine import AsyncEngine, EngineResult
from loadkit.runmeta import Clock
from loadkit.scenario import Key, scenario_from_dict
from loadkit.server.testing import running_server
from tests.engine.scripted import MemorySink

pytestmark = pytest.mark.slow

TIERS = {"tiers": {"free": {"requests": 10_000, "window_s": 1.0, "concurrency": 1000, "keys": 1}}}
EVERY_KIND = {"chat": 1, "chat_stream": 1, "completions": 1, "completions_stream": 1, "models": 1}


def _run(
    tmp: Path, api: str, target: dict[str, Any], load: dict[str, Any], **run: Any
) -> tuple[EngineResult, MemorySink, set[str]]:
    truth = tmp / "truth.jsonl"
    sink = MemorySink()

    async def main() -> EngineResult:
        async with running_server(TIERS, truth_path=truth, api=api) as srv:
            (key,) = [Key(k["label"], "free", k["key"]) for k in srv.keys if k["tier"] == "free"]
            sc = scenario_from_dict(
                {
                    "name": f"layout-{api}",
                    "target": {"base_url": srv.base_url, "model": "loadkit-instant", **target},
                    "run": {"drain_s": 5.0, **run},
                    "tiers": {"free": {"requests": 10_000, "window_s": 1.0, "concurrency": 1000}},
                    "load": [{"tier": "free", **load}],
                }
            )
            engine = AsyncEngine(
                sc, [key], srv.base_url, sink, Clock(), "run-layouts", progress=False
            )
            return await engine.run()

    res = asyncio.run(main())
    seen = {json.loads(x)["request_id"] for x in truth.read_text().splitlines() if x.strip()}
    return res, sink, seen


@pytest.mark.parametrize("api", ["seed", "openai"])
def test_every_kind_of_request_is_answered_in_each_layout(tmp_path, api):
    # "auto" picks the layout from the server's base URL (…/api/v1 or …/v1).
    load = {"pattern": "constant", "rate_per_s": 25, "mix": EVERY_KIND, "max_tokens": 4}
    res, sink, seen = _run(tmp_path, api, {}, load, duration_s=1.0)
    recs = sink.records
    assert len(recs) == 25 == res.sent
    assert {r.endpoint for r in recs} == {"chat", "completions", "models"}
    assert all(r.status == 200 and r.transport_error is None for r in recs), [
        (r.endpoint, r.status, r.transport_error) for r in recs
    ]
    assert all(r.completion_tokens for r in recs if r.endpoint != "models")
    assert {r.request_id for r in recs} == seen


def test_a_key_the_target_refuses_everywhere_stops_the_run_early(tmp_path):
    # The reference server reads the key from Authorization only: every request is a 401.
    load = {"pattern": "constant", "rate_per_s": 40, "mix": {"chat": 1}}
    res, sink, seen = _run(
        tmp_path, "openai", {"auth_header": "api-key", "auth_scheme": ""}, load, duration_s=30.0
    )
    assert res.stop_reason.startswith("target failing: the last ")
    assert "401 Unauthorized" in res.stop_reason
    assert 50 <= len(sink.records) < 40 * 5  # stopped after about 2 s, not 30
    assert all(r.status == 401 for r in sink.records)
    assert {r.request_id for r in sink.records} == seen
