"""The Locust engine against the reference server, always in subprocesses (pytest's process
never imports locust): headless runs, --processes and a master with workers in other
directories, every record in the master's run directory and matched against the server's
truth log, the schedule that ran, on-time TTFT, a worker killed mid-run, and Ctrl-C."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from loadkit.arrivals import arrivals
from loadkit.locust_engine import locustfile
from loadkit.payloads import MixPicker, prepare
from loadkit.records import iter_records, iter_records_file, record_files
from loadkit.run import run_scenario
from loadkit.runmeta import RunMeta, read_run_meta
from loadkit.scenario import Key, Scenario, plan, scenario_from_dict, scenario_to_dict

pytestmark = pytest.mark.slow

N, W, C = 10, 2.0, 2
BURST, PERIOD, PHASE = 14, 1.3, 0.1
USERS = C + 1  # closed-loop users on free-2: one more than its concurrency limit


def scenario(
    tmp_path: Path, duration: float = 4.0, server: dict | None = None, loads: list | None = None
) -> Scenario:
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
                    "burst_size": BURST,
                    "burst_period_s": PERIOD,
                    "phase_s": PHASE,
                    "mix": {"chat": 1, "completions": 1},
                    "model": "loadkit-instant",
                },
                {
                    "tier": "free",
                    "keys": [2],
                    "pattern": "closed",
                    "concurrency": USERS,
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


def planned(sc: Scenario, meta: RunMeta) -> dict[str, list[tuple[float, str, bool]]]:
    """Each open-loop key's sends (scheduled time, endpoint, stream), from the scenario
    alone: its seeded schedule, each arrival's request drawn from the same RNG in turn (the
    asyncio engine's seeds and order, so either engine sends these)."""
    keys = [Key(k["label"], k["tier"], "") for k in meta.keys]
    out: dict[str, list[tuple[float, str, bool]]] = {}
    for i, (key, load) in enumerate(plan(sc, keys)):
        if load.pattern == "closed":
            continue
        rng = random.Random(f"{sc.seed}/{i}/{key.label}")
        picker = MixPicker(load.mix)
        for t in arrivals(load, sc.duration_s, rng):
            req = prepare(
                picker.pick(rng),
                load.model or sc.target.model,
                load.prompt_tokens.sample(rng),
                load.max_tokens.sample(rng),
                rng,
            )
            out.setdefault(key.label, []).append((round(t, 6), req.endpoint, req.stream))
    return {k: sorted(v) for k, v in out.items()}


def assert_what_ran(recs: list, sc: Scenario, meta: RunMeta) -> None:
    """The records are the scenario's: every scheduled arrival of an open-loop key sent
    exactly once at its time, the closed-loop key driven by its users and no more."""
    by_key: dict[str, list] = {}
    for r in recs:
        by_key.setdefault(r.key, []).append(r)
    want = planned(sc, meta)
    assert set(by_key) == {"free-1", "free-2", "pro-1"}
    bursts = [round(PHASE + i * PERIOD, 6) for i in range(3) for _ in range(BURST)]
    assert [t for t, _, _ in want["free-1"]] == bursts
    for label, sends in want.items():
        got = sorted((r.scheduled_s, r.endpoint, r.stream) for r in by_key[label])
        assert got == sends, label
    free1 = Counter(r.status for r in by_key["free-1"])
    # 42 requests within 2.6 s, two windows of 2 s: at most 2 x 10 admitted
    assert free1[200] + free1[429] == 3 * BURST and free1[429] >= 3 * BURST - 2 * N
    closed = by_key["free-2"]
    assert all(r.scheduled_s is None and r.stream for r in closed)
    assert max_in_flight(closed) <= USERS
    # three users against a concurrency limit of two: the server refuses the third
    assert any(r.error_code == "concurrency_limit_exceeded" for r in closed)
    assert {r.status for r in by_key["pro-1"]} <= {200, 429}


def max_in_flight(recs: list) -> int:
    events = sorted([(r.send_s, 1) for r in recs] + [(r.end_s, -1) for r in recs])
    n = peak = 0
    for _, d in events:
        n += d
        peak = max(peak, n)
    return peak


def assert_workers_reported(meta: RunMeta, recs: list) -> None:
    """Every worker's final report: what it says it sent is what arrived in the master's
    run directory."""
    assert all(w.status == "ok" for w in meta.workers), meta.workers
    assert all(w.sent == w.records for w in meta.workers), meta.workers
    assert sum(w.records for w in meta.workers) == len(recs)
    owners: dict[str, set[str]] = {}
    for r in recs:
        owners.setdefault(r.key, set()).add(r.worker)
    assert all(len(v) == 1 for v in owners.values()), "each key is driven by one process"


def test_headless_run_records_every_request(tmp_path):
    out = tmp_path / "run"
    sc = scenario(tmp_path)
    meta = run_scenario(sc, out, engine="locust", progress=False)
    recs = assert_complete(out)
    assert not meta.interrupted and meta.stop_reason == "schedule complete"
    assert_what_ran(recs, sc, meta)
    assert any(r.stream and r.first_token_s and len(r.chunk_s) >= 2 for r in recs)
    # 429s show in Locust's own failure table, by status and API code
    log = (out / "locust.log").read_text()
    assert "429 rate_limit_exceeded" in log or "429 concurrency_limit_exceeded" in log
    assert_workers_reported(meta, recs)
    assert len(meta.workers) == 1
    # t=0 is the master's, taken when every key had its process: the first burst leaves
    # on time, not seconds late or early
    first = [r for r in recs if r.key == "free-1" and r.scheduled_s == PHASE]
    assert all(0 <= r.send_s - PHASE < 0.5 for r in first)


def test_processes_stream_every_record_to_the_master(tmp_path):
    out = tmp_path / "run"
    sc = scenario(tmp_path)
    meta = run_scenario(sc, out, engine="locust", workers=2, progress=False)
    recs = assert_complete(out)
    assert_what_ran(recs, sc, meta)
    assert len(meta.workers) == 2 and len({r.worker for r in recs}) == 2
    assert_workers_reported(meta, recs)
    # one records file per worker, each holding exactly that worker's records
    for path in record_files(out):
        workers = {r.worker for r in iter_records_file(path)}
        assert len(workers) == 1 and path.name == f"records-{workers.pop()}.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_master_and_workers_in_other_directories(tmp_path):
    """Started by hand as separate `locust` processes: the workers run elsewhere (their
    own directory, their own copy of the keys, no run directory), the master's directory
    receives every record."""
    from loadkit.run import embedded_keys
    from loadkit.server.process import start_server_process

    sc = scenario(tmp_path, duration=3.0)
    out = tmp_path / "master" / "run"
    out.parent.mkdir()
    spec = tmp_path / "master" / "scenario.json"
    spec.write_text(json.dumps(scenario_to_dict(sc)))
    with start_server_process(
        config_path=sc.target.server_config, truth_path=tmp_path / "truth.jsonl"
    ) as srv:
        keys = embedded_keys(sc, srv.keys)
        doc = {"keys": [{"label": k.label, "tier": k.tier, "key": k.secret} for k in keys]}
        dirs = [tmp_path / name for name in ("master", "worker-a", "worker-b")]
        for d in dirs:
            (d / "keys.json").parent.mkdir(exist_ok=True)
            (d / "keys.json").write_text(json.dumps(doc))
        port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith("LOADKIT_")}
        f = str(locustfile())
        master = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                f,
                "--master",
                "--headless",
                "--expect-workers",
                "2",
                "--master-bind-port",
                str(port),
                "--host",
                srv.base_url,
                "--run-time",
                "60s",
                "--only-summary",
                "--exit-code-on-error",
                "0",
                "--loadkit-scenario",
                str(spec),
                "--loadkit-out",
                "run",
                "--loadkit-keys-file",
                "keys.json",
            ],  # fmt: skip
            cwd=dirs[0],
            env=base,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "locust", "-f", f, "--worker", "--master-port", str(port)],
                cwd=d,
                env={**base, "LOADKIT_KEYS_FILE": "keys.json"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for d in dirs[1:]
        ]
        try:
            listening = wait_for_listener(master.pid, port)
            log, _ = master.communicate(timeout=90)
            for w in workers:
                w.wait(timeout=30)
        finally:
            for p in (master, *workers):
                if p.poll() is None:
                    p.kill()
    # the master port is on loopback unless asked otherwise
    assert listening == "127.0.0.1"
    assert master.returncode == 0, log[-2000:]
    shutil.move(tmp_path / "truth.jsonl", out / "truth.jsonl")
    recs = assert_complete(out)
    meta = read_run_meta(out)
    assert_what_ran(recs, sc, meta)
    assert len({r.worker for r in recs}) == 2 and len(meta.workers) == 2
    assert_workers_reported(meta, recs)
    assert meta.tiers["free"] == {"requests": N, "window_s": W, "concurrency": C}
    assert meta.stop_reason == "schedule complete"
    for d in dirs[1:]:  # nothing written where the workers ran
        assert sorted(p.name for p in d.iterdir()) == ["keys.json"]


def wait_for_listener(pid: int, port: int) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            break
        for c in conns:
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port:
                return c.laddr.ip
        time.sleep(0.1)
    raise AssertionError(f"the master never listened on port {port}")


def test_streaming_ttft_matches_the_fixed_profile(tmp_path):
    ttft_ms, itl_ms = 60, 25
    server = {
        "tiers": {"pro": {"requests": 10_000, "window_s": 60, "concurrency": 100, "keys": 1}},
        "models": [
            {
                "id": "fixed",
                "ttft_ms": ttft_ms,
                "itl_ms": itl_ms,
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
    # Bounds from the profile, wide enough for a busy 2-core machine and tight enough to
    # tell the measurement points apart (accuracy itself: benchmarks/locust_streams.py):
    # TTFT is the first content token, not the headers (which come before the profile's
    # 60 ms; -1 ms for the server's timer) and not a later token (the second is 25 ms on).
    median = ttft[len(ttft) // 2]
    assert ttft_ms - 1 <= median < ttft_ms + itl_ms, ttft
    # chunks are read one by one: read in 1 KB blocks they would arrive together (gaps
    # near 0); a median gap of at least half the profile's is one chunk per token
    assert itl[len(itl) // 2] >= itl_ms / 2, itl[:20]
    assert max(len(r.chunk_s) for r in recs) == 10


def test_a_killed_worker_is_named_and_the_others_lose_nothing(tmp_path):
    out = tmp_path / "run"
    sc = scenario(tmp_path, duration=6.0)
    killed: list[str] = []

    def kill_one():
        # a worker's records file (records-locust-<host>-<pid>.jsonl) appears in the
        # master's directory once its first batch arrived
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            files = record_files(out)
            grown = [p for p in files if p.stat().st_size > 0]
            if len(files) == 2 and len(grown) == 2:
                time.sleep(1.0)  # mid-run
                name = files[0].name.removeprefix("records-").removesuffix(".jsonl")
                os.kill(int(name.rpartition("-")[2]), signal.SIGKILL)
                killed.append(name)
                return
            time.sleep(0.1)

    t = threading.Thread(target=kill_one)
    t.start()
    meta = run_scenario(sc, out, engine="locust", workers=2, progress=False)
    t.join()
    assert killed
    statuses = {w.worker: w for w in meta.workers}
    dead = statuses[killed[0]]
    assert dead.status == "died" and "killed or crashed" in dead.detail, dead
    assert sorted(w.status for w in meta.workers) == ["died", "ok"]
    assert "1 Locust worker(s) died" in meta.stop_reason
    # what arrived from the dead worker is kept and counted
    dead_recs = iter_records_file(out / f"records-{killed[0]}.jsonl")
    assert dead.records == len(dead_recs) > 0 and dead.sent is None
    # nothing of the survivor is lost; what the server saw without a record was the dead
    # worker's keys' (in flight when it died)
    recs = iter_records(out)
    seen = truth(out / "truth.jsonl")
    assert {r.request_id for r in recs} <= set(seen)
    dead_keys = {r.key for r in dead_recs}
    missing = set(seen) - {r.request_id for r in recs}
    assert all(seen[rid]["key"] in dead_keys for rid in missing)
    alive = next(w for w in meta.workers if w.status == "ok")
    assert alive.sent == alive.records == sum(r.worker == alive.worker for r in recs)


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


@pytest.mark.parametrize("workers", [0, 2])
def test_ctrl_c_stops_gracefully_and_records_every_open_request(tmp_path, workers):
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
            str(workers),
            "--out",
            str(out),
            "--no-analyze",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sum(len(p.read_text().splitlines()) for p in record_files(out)) > 30:
            break
        time.sleep(0.2)
    stopped_at = time.time()
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err[-2000:]
    meta = read_run_meta(out)
    assert meta.interrupted and "Ctrl-C" in meta.stop_reason
    recs = iter_records(out)
    seen = truth(out / "truth.jsonl")
    # every request the server saw has its record: the ones open at the stop finished
    # within the grace (streams here last well under a second) and none was cut
    assert {r.request_id for r in recs} == set(seen)
    assert not [r for r in recs if r.transport_error == "cancelled"]
    # no new request after the stop (1 s for Ctrl-C to reach the workers, with room)
    stop_s = stopped_at - meta.started_unix
    assert max(r.send_s for r in recs) < stop_s + 1.0
    assert [w.status for w in meta.workers] == ["interrupted"] * max(1, workers)
    assert all(w.sent == w.records for w in meta.workers)
    assert sum(w.records for w in meta.workers) == len(recs)
    leftover = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "no Locust process outlives the run"


def test_the_openai_layout_against_the_reference_server(tmp_path):
    """The reference server in the OpenAI layout (every other test here uses the seed's),
    the scenario's "auto" layout decided by its URL (…/v1): every request reaches a route
    and has its record."""
    api = "openai"
    from loadkit.server.process import start_server_process
    from tests.locust_engine.helpers import run_direct
    from tests.locust_engine.helpers import scenario as make_scenario

    config = {"tiers": {"pro": {"requests": 10_000, "window_s": 60, "concurrency": 100}}}
    with start_server_process(
        config_dict=config, truth_path=tmp_path / "truth.jsonl", api=api
    ) as srv:
        assert srv.base_url.endswith("/v1") and not srv.base_url.endswith("/api/v1")
        keys = [Key(label, "pro", srv.key(label)) for label in srv.labels("pro")][:1]
        sc = make_scenario(
            srv.base_url,
            ["pro"],
            [
                {
                    "tier": "pro",
                    "pattern": "constant",
                    "rate_per_s": 10,
                    "max_tokens": 4,
                    "mix": {"chat_stream": 1, "completions": 1, "models": 1},
                }
            ],
            run={"duration_s": 1.5},
        )
        _, recs = run_direct(sc, keys, tmp_path / "run")
    seen = truth(tmp_path / "truth.jsonl")
    assert {r.request_id for r in recs} == set(seen) and len(recs) >= 10
    assert all(r.status == 200 and r.transport_error is None for r in recs)
    assert {seen[r.request_id]["endpoint"] for r in recs} == {"chat", "completions", "models"}


def test_a_relative_server_config_is_read_beside_the_scenario(tmp_path):
    """`loadkit run sub/scenario.toml` from another folder: the reference server's config
    named relative to the scenario is found, by the engine and by the master."""
    sub = tmp_path / "sub"
    sub.mkdir()
    model = {
        "id": "only-in-this-config",
        "ttft_ms": 5,
        "itl_ms": 5,
        "ttft_jitter_ms": 0,
        "itl_jitter_ms": 0,
        "prefill_ms_per_token": 0,
        "decode_capacity_tps": 0,
    }
    (sub / "server.toml").write_text(
        "[tiers.free]\nrequests = 1000\nwindow_s = 60\nconcurrency = 10\nkeys = 1\n"
        "[[models]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in model.items())
    )
    (sub / "scenario.toml").write_text(
        '[target]\nbase_url = "embedded"\nserver_config = "server.toml"\n'
        'model = "only-in-this-config"\n[run]\nduration_s = 1\n'
        "[tiers.free]\nrequests = 1000\nwindow_s = 60\nconcurrency = 10\n"
        '[[load]]\ntier = "free"\npattern = "constant"\nrate_per_s = 10\nmax_tokens = 3\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADKIT_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadkit",
            "run",
            "sub/scenario.toml",
            "--engine",
            "locust",
            "--out",
            "out",
            "--no-analyze",
            "--quiet",
        ],  # fmt: skip
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    recs = iter_records(tmp_path / "out")
    # the model exists only in that config: every request answered means it was read
    assert len(recs) >= 8 and all(r.status == 200 for r in recs)
