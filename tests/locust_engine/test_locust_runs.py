"""The Locust engine against the reference server, always in subprocesses (pytest's process
never imports locust): headless runs, --processes and master/worker distribution, record
completeness against the server's truth log, on-time TTFT, and a worker that dies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadkit.locust_engine import locustfile
from loadkit.records import iter_records
from loadkit.run import run_scenario
from loadkit.runmeta import read_run_meta
from loadkit.scenario import scenario_from_dict, scenario_to_dict

pytestmark = pytest.mark.slow

N, W, C = 10, 2.0, 2


def scenario(
    tmp_path: Path, duration: float = 4.0, server: dict | None = None, loads: list | None = None
):
    cfg = tmp_path / "server.json"
    cfg.write_text(
        json.dumps(
            server
            or {
                "tiers": {
                    "free": {"requests": N, "window_s": W, "concurrency": C, "keys": 2},
                    "pro": {"requests": 200, "window_s": W, "concurrency": 5, "keys": 1},
                },
            }
        )
    )
    return scenario_from_dict(
        {
            "name": "locust-test",
            "target": {"base_url": "embedded", "server_config": str(cfg)},
            "run": {"duration_s": duration, "drain_s": 5.0, "seed": 3},
            "tiers": {
                "free": {"requests": N, "window_s": W, "concurrency": C},
                "pro": {"requests": 200, "window_s": W, "concurrency": 5},
            },
            "load": loads
            or [
                {
                    "tier": "free",
                    "keys": [1],
                    "pattern": "burst",
                    "burst_size": 14,
                    "burst_period_s": 1.3,
                    "phase_s": 0.1,
                    "mix": {"chat": 1, "completions": 1},
                    "model": "loadkit-instant",
                },
                {
                    "tier": "free",
                    "keys": [2],
                    "pattern": "closed",
                    "concurrency": C + 1,
                    "mix": {"chat_stream": 1},
                    "max_tokens": 8,
                    "backoff_429_s": 0.1,
                },
                {
                    "tier": "pro",
                    "pattern": "poisson",
                    "rate_per_s": 15,
                    "mix": {"chat_stream": 1, "completions_stream": 1, "chat": 1},
                    "max_tokens": 6,
                },
            ],
        }
    )


def truth(path: Path) -> dict[str, dict]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return {r["request_id"]: r for r in rows if r["request_id"]}


def assert_complete(out: Path) -> list:
    recs = iter_records(out)
    by_id = {r.request_id: r for r in recs}
    assert len(by_id) == len(recs), "request ids are unique"
    seen = truth(out / "truth.jsonl")
    assert set(by_id) == set(seen), "every request the server saw has exactly one record"
    for rid, r in by_id.items():
        assert r.status == seen[rid]["status"], (r, seen[rid])
        assert r.engine == "locust"
    return recs


def test_headless_run_records_every_request(tmp_path):
    out = tmp_path / "run"
    meta = run_scenario(scenario(tmp_path), out, engine="locust", progress=False)
    recs = assert_complete(out)
    assert len(recs) > 40 and not meta.interrupted
    assert any(r.status == 429 for r in recs)
    assert any(r.stream and r.first_token_s and len(r.chunk_s) >= 2 for r in recs)
    assert {r.key for r in recs} == {"free-1", "free-2", "pro-1"}
    # 429s show in Locust's own failure table, by status and API code
    log = (out / "locust.log").read_text()
    assert "429 rate_limit_exceeded" in log or "429 concurrency_limit_exceeded" in log
    assert [w.status for w in meta.workers] == ["ok"]


def test_processes_share_keys_out_and_lose_nothing(tmp_path):
    out = tmp_path / "run"
    meta = run_scenario(scenario(tmp_path), out, engine="locust", workers=2, progress=False)
    recs = assert_complete(out)
    assert len(meta.workers) == 2 and all(w.status == "ok" for w in meta.workers)
    assert sum(w.records for w in meta.workers) == len(recs)
    # each key is driven by exactly one process, so its times share one clock
    owners: dict[str, set[str]] = {}
    for r in recs:
        owners.setdefault(r.key, set()).add(r.worker)
    assert all(len(v) == 1 for v in owners.values()), owners
    assert len({r.worker for r in recs}) == 2


def test_master_and_two_workers_on_loopback(tmp_path):
    from loadkit.run import embedded_keys
    from loadkit.server.process import start_server_process

    sc = scenario(tmp_path, duration=3.0)
    out = tmp_path / "run"
    out.mkdir()
    (out / "scenario.json").write_text(json.dumps(scenario_to_dict(sc)))
    with start_server_process(
        config_path=sc.target.server_config, truth_path=out / "truth.jsonl"
    ) as srv:
        keys = embedded_keys(sc, srv.keys)
        keys_file = tmp_path / "keys.json"
        keys_file.write_text(
            json.dumps(
                {"keys": [{"label": k.label, "tier": k.tier, "key": k.secret} for k in keys]}
            )
        )
        os.chmod(keys_file, 0o600)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {
            **os.environ,
            "LOADKIT_SCENARIO": str(out / "scenario.json"),
            "LOADKIT_KEYS_FILE": str(keys_file),
            "LOADKIT_OUT": str(out),
            "LOADKIT_WALL_ANCHOR": repr(time.time() + 3),
            "LOADKIT_WORKERS": "2",
        }
        f = str(locustfile())
        users = 3  # one per key
        master = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                f,
                "--master",
                "--headless",
                "--master-bind-host",
                "127.0.0.1",
                "--master-bind-port",
                str(port),
                "--expect-workers",
                "2",
                "-u",
                str(users),
                "-r",
                str(users),
                "--host",
                srv.base_url,
                "--run-time",
                "40s",
                "--only-summary",
                "--exit-code-on-error",
                "0",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "locust",
                    "-f",
                    f,
                    "--worker",
                    "--master-host",
                    "127.0.0.1",
                    "--master-port",
                    str(port),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        try:
            log, _ = master.communicate(timeout=90)
            for w in workers:
                w.wait(timeout=30)
        finally:
            for p in (master, *workers):
                if p.poll() is None:
                    p.kill()
    assert master.returncode == 0, log[-2000:]
    recs = assert_complete(out)
    assert len({r.worker for r in recs}) == 2
    meta = read_run_meta(out)
    assert sorted(w.status for w in meta.workers) == ["ok", "ok"]
    assert meta.tiers["free"] == {"requests": N, "window_s": W, "concurrency": C}


def test_streaming_ttft_matches_the_fixed_profile(tmp_path):
    server = {
        "tiers": {"pro": {"requests": 10_000, "window_s": 60, "concurrency": 100, "keys": 1}},
        "models": [
            {
                "id": "fixed",
                "ttft_ms": 60,
                "itl_ms": 25,
                "ttft_jitter_ms": 0,
                "itl_jitter_ms": 0,
                "prefill_ms_per_token": 0,
                "decode_capacity_tps": 0,
            }
        ],
    }
    loads = [
        {
            "tier": "pro",
            "pattern": "closed",
            "concurrency": 4,
            "model": "fixed",
            "max_tokens": 10,
            "mix": {"chat_stream": 1, "completions_stream": 1},
        }
    ]
    sc = scenario(tmp_path, duration=3.0, server=server, loads=loads)
    sc = scenario_from_dict(
        {
            **scenario_to_dict(sc),
            "tiers": {"pro": {"requests": 10_000, "window_s": 60, "concurrency": 100}},
        }
    )
    out = tmp_path / "run"
    run_scenario(sc, out, engine="locust", progress=False)
    recs = [r for r in iter_records(out) if r.status == 200]
    assert len(recs) >= 20
    ttft = sorted((r.first_token_s - r.send_s) * 1e3 for r in recs)
    itl = sorted(
        (b - a) * 1e3 for r in recs for a, b in zip(r.chunk_s, r.chunk_s[1:], strict=False)
    )
    median = ttft[len(ttft) // 2]
    assert 59 <= median <= 75, ttft  # the profile's 60 ms, not the headers, not the stream end
    assert 23 <= itl[len(itl) // 2] <= 30, "chunks arrive one by one, not in 1 KB blocks"


def test_a_killed_worker_is_reported_not_silently_missing(tmp_path):
    out = tmp_path / "run"
    sc = scenario(tmp_path, duration=6.0)
    killed: list[int] = []

    def kill_one():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            markers = sorted(out.glob("worker-*.started.json"))
            if len(markers) == 2:
                time.sleep(1.5)
                pid = json.loads(markers[0].read_text())["pid"]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1)

    import threading

    t = threading.Thread(target=kill_one)
    t.start()
    meta = run_scenario(sc, out, engine="locust", workers=2, progress=False)
    t.join()
    assert killed
    statuses = sorted(w.status for w in meta.workers)
    assert statuses == ["died", "ok"], meta.workers
    assert "died" in meta.stop_reason
    assert iter_records(out)  # what the dead worker finished is kept


def test_no_record_lost_under_server_faults(tmp_path):
    server = {
        "tiers": {"pro": {"requests": 10_000, "window_s": 60, "concurrency": 1000, "keys": 2}},
        "faults": {
            "seed": 4,
            "error_rate": 0.1,
            "disconnect_rate": 0.15,
            "midstream_error_rate": 0.1,
            "stall_rate": 0.1,
            "stall_s": 0.8,
        },
    }
    loads = [
        {
            "tier": "pro",
            "pattern": "poisson",
            "rate_per_s": 20,
            "max_tokens": 8,
            "mix": {"chat_stream": 2, "completions_stream": 1, "chat": 1},
        }
    ]
    sc = scenario(tmp_path, duration=3.0, server=server, loads=loads)
    d = scenario_to_dict(sc)
    d["tiers"] = {"pro": {"requests": 10_000, "window_s": 60, "concurrency": 1000}}
    d["target"]["read_timeout_s"] = 0.4  # stalls become client timeouts
    out = tmp_path / "run"
    run_scenario(scenario_from_dict(d), out, engine="locust", progress=False)
    recs = iter_records(out)
    seen = truth(out / "truth.jsonl")
    assert {r.request_id for r in recs} == set(seen)
    kinds = set()
    for r in recs:
        t = seen[r.request_id]
        if r.transport_error == "timeout":
            kinds.add("timeout")
            continue
        assert r.status == t["status"]
        if t["status"] == 500:
            kinds.add("500")
        elif t.get("disconnect") == "server":
            kinds.add("disconnect")
            assert r.transport_error in ("incomplete_stream", "reset")
        elif t["error_code"] == "internal_error":
            kinds.add("midstream")
            assert r.error_code == "internal_error"
    assert kinds == {"timeout", "500", "disconnect", "midstream"}


def test_ctrl_c_keeps_every_finished_request(tmp_path):
    sc = scenario(tmp_path, duration=60.0)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(scenario_to_dict(sc)))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadkit",
            "run",
            str(path),
            "--engine",
            "locust",
            "--workers",
            "2",
            "--out",
            str(out),
            "--no-analyze",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if sum(len(p.read_text().splitlines()) for p in out.glob("records-*.jsonl")) > 30:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    meta = read_run_meta(out)
    assert meta.interrupted and "Ctrl-C" in meta.stop_reason
    recs = iter_records(out)
    seen = truth(out / "truth.jsonl")
    ids = {r.request_id for r in recs}
    # every request the server saw has a record; a request cut before it reached the
    # server may have a "cancelled" record the server never saw
    assert set(seen) <= ids
    assert all(r.transport_error == "cancelled" for r in recs if r.request_id not in seen)
    assert not any(p.poll() is None for p in [proc])
    leftover = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "no Locust process outlives the run"
