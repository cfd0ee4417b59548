"""The asyncio engine end to end, over aiohttp against the reference server: one record
per request whatever happened to it, checked against the server's truth log, for an
open-loop run under every fault, a closed-loop run bounded by its request count, and runs
stopped by signals (one drains, a second cuts the drain). Scheduling, caps, retries, drains
and signals are tested fast through the scripted transport (test_scheduling.py,
test_stopping.py, test_signals.py, test_every_arrival.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadkit.records import iter_records
from loadkit.run import run_scenario
from loadkit.runmeta import read_run_meta
from loadkit.scenario import scenario_from_dict

pytestmark = pytest.mark.slow


def make_scenario(
    tmp: Path, server: dict, loads: list[dict], tiers: dict | None = None, **run
) -> tuple:
    cfg = tmp / "server.json"
    cfg.write_text(json.dumps(server))
    run.setdefault("duration_s", 2.0)
    run.setdefault("drain_s", 5.0)
    d = {
        "name": "t",
        "target": {
            "base_url": "embedded",
            "model": "loadkit-small",
            "server_config": str(cfg),
            "read_timeout_s": run.pop("read_timeout_s", 30.0),
        },
        "run": run,
        "tiers": tiers or {"free": {"requests": 10_000, "window_s": 1.0, "concurrency": 10_000}},
        "load": loads,
    }
    return scenario_from_dict(d), d


def truth(path: Path) -> dict[str, dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {r["request_id"]: r for r in rows if r["request_id"]}


def test_no_lost_records_under_every_fault(tmp_path):
    server = {
        "tiers": {"free": {"requests": 10_000, "window_s": 1.0, "concurrency": 10_000, "keys": 2}},
        "faults": {
            "seed": 3,
            "error_rate": 0.1,
            "disconnect_rate": 0.1,
            "midstream_error_rate": 0.1,
            "stall_rate": 0.1,
            "stall_s": 1.0,
        },
    }
    loads = [
        {
            "tier": "free",
            "pattern": "poisson",
            "rate_per_s": 25,
            "mix": {"chat_stream": 2, "completions_stream": 1, "chat": 1, "completions": 1},
            "max_tokens": 8,
        }
    ]
    # A 0.5 s read timeout turns the 1 s stalls into client timeouts.
    sc, _ = make_scenario(tmp_path, server, loads, read_timeout_s=0.5)
    out = tmp_path / "run"
    meta = run_scenario(sc, out, engine="async", progress=False)
    recs = {r.request_id: r for r in iter_records(out)}
    seen = truth(out / "truth.jsonl")
    assert len(recs) > 40
    assert set(recs) == set(seen), "every request the server saw has exactly one record"
    assert meta.workers[0].records == len(recs)
    kinds = set()
    for rid, r in recs.items():
        t = seen[rid]
        if r.transport_error == "timeout":
            kinds.add("timeout")
            continue  # the client gave up first; the server's status is its own business
        assert r.status == t["status"], (r, t)
        if t["status"] == 500:
            kinds.add("500")
            assert r.error_code == "internal_error"
        elif t.get("disconnect") == "server":
            kinds.add("disconnect")
            assert r.transport_error in ("incomplete_stream", "reset")
        elif t["error_code"] == "internal_error":
            kinds.add("midstream")
            assert r.status == 200 and r.error_code == "internal_error"
        else:
            assert r.transport_error is None and r.error_code is None
            if r.stream:
                assert r.first_token_s is not None and r.chunk_s
    assert kinds == {"timeout", "500", "disconnect", "midstream"}


def test_request_count_bounds_the_run(tmp_path):
    sc, _ = make_scenario(
        tmp_path,
        {
            "tiers": {
                "free": {"requests": 10_000, "window_s": 1.0, "concurrency": 10_000, "keys": 2}
            }
        },
        [
            {
                "tier": "free",
                "pattern": "closed",
                "concurrency": 3,
                "mix": {"chat": 1},
                "model": "loadkit-instant",
            }
        ],
        duration_s=30,
        max_requests=40,
    )
    out = tmp_path / "run"
    meta = run_scenario(sc, out, engine="async", progress=False)
    recs = iter_records(out)
    assert len(recs) == 40 and all(r.status == 200 for r in recs)
    assert {r.request_id for r in recs} == set(truth(out / "truth.jsonl"))
    # Each request's connection (new for the first of each user, then reused) was ready
    # between its send and its answer.
    for r in recs:
        assert r.conn_s is not None and r.headers_s is not None
        assert r.send_s <= r.conn_s <= r.headers_s
    assert meta.stop_reason == "request count reached"
    assert meta.duration_s < 20


def _start_streaming_run(tmp_path: Path, drain_s: float) -> tuple[subprocess.Popen, Path]:
    """``loadkit run`` in a subprocess, 4 closed-loop users streaming 200 tokens (about
    4 s each), returned once records are being written."""
    _, d = make_scenario(
        tmp_path,
        {
            "tiers": {
                "free": {"requests": 10_000, "window_s": 1.0, "concurrency": 10_000, "keys": 1}
            }
        },
        [
            {
                "tier": "free",
                "pattern": "closed",
                "concurrency": 4,
                "mix": {"chat_stream": 1},
                "max_tokens": 200,
            }
        ],
        duration_s=60,
        drain_s=drain_s,
    )
    path = tmp_path / "s.json"  # a scenario file may be JSON as well as TOML
    path.write_text(json.dumps(d))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadkit",
            "run",
            str(path),
            "--engine",
            "async",
            "--out",
            str(out),
            "--no-analyze",
            "--quiet",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        files = list(out.glob("records-*.jsonl"))
        if files and files[0].stat().st_size > 0:
            break
        time.sleep(0.1)
    time.sleep(0.3)
    return proc, out


def test_sigterm_stops_sending_and_drains_every_open_stream(tmp_path):
    proc, out = _start_streaming_run(tmp_path, drain_s=20)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=40)
    assert proc.returncode == 130, err
    meta = read_run_meta(out)
    assert meta.interrupted and meta.stop_reason == "interrupted (SIGTERM)"
    recs = iter_records(out)
    # The streams open at the signal were read to their end within the drain.
    assert recs and all(r.status == 200 and r.transport_error is None for r in recs)
    assert set(truth(out / "truth.jsonl")) == {r.request_id for r in recs}


def test_a_second_signal_cuts_the_drain_and_keeps_every_record(tmp_path):
    proc, out = _start_streaming_run(tmp_path, drain_s=20)
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    meta = read_run_meta(out)
    assert meta.interrupted and meta.stop_reason == "interrupted (Ctrl-C); drain cut short"
    recs = iter_records(out)
    assert any(r.transport_error == "cancelled" for r in recs)  # open streams are recorded
    assert set(truth(out / "truth.jsonl")) == {r.request_id for r in recs}
