"""How a Locust run ends when `loadkit run` (or its master) is told to: killed with SIGKILL
(no load reaches the target 2 s later, no process of the run is left, no key file
anywhere), interrupted twice (the drain skipped), SIGHUP to the master (a graceful stop).
`loadkit run` runs as a subprocess against a reference server the test starts itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from loadkit.records import iter_records, record_files
from loadkit.runmeta import read_run_meta
from loadkit.server.process import ServerProcess, start_server_process

pytestmark = pytest.mark.slow

GRACE_S = 5.0  # the master's grace on a stop before the schedule's end (min(drain, 5 s))


def server(tmp_path: Path, itl_ms: int) -> ServerProcess:
    return start_server_process(
        config_dict={
            "tiers": {"pro": {"requests": 100_000, "window_s": 60, "concurrency": 100, "keys": 2}},
            "models": [
                {
                    "id": "fixed",
                    "ttft_ms": 20,
                    "itl_ms": itl_ms,
                    "ttft_jitter_ms": 0,
                    "itl_jitter_ms": 0,
                    "prefill_ms_per_token": 0,
                    "decode_capacity_tps": 0,
                }
            ],
        },
        truth_path=tmp_path / "truth.jsonl",
    )


def scenario_file(tmp_path: Path, srv: ServerProcess, tokens: int, users: int = 3) -> Path:
    keys = tmp_path / "pro.keys"
    keys.write_text("".join(f"{label} {srv.key(label)}\n" for label in srv.labels("pro")))
    path = tmp_path / "scenario.json"
    path.write_text(
        json.dumps(
            {
                "name": "lifecycle",
                "target": {"base_url": srv.base_url, "model": "fixed"},
                "run": {"duration_s": 120, "drain_s": 30},
                "tiers": {
                    "pro": {
                        "requests": 100_000,
                        "window_s": 60,
                        "concurrency": 100,
                        "keys_file": keys.name,  # beside the scenario
                    }
                },
                "load": [
                    {
                        "tier": "pro",
                        "pattern": "closed",
                        "concurrency": users,
                        "max_tokens": tokens,
                        "mix": {"chat_stream": 1},
                    }
                ],
            }
        )
    )
    return path


def start_run(scenario: Path, out: Path, workers: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADKIT_")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadkit",
            "run",
            str(scenario),
            "--engine",
            "locust",
            "--workers",
            str(workers),
            "--out",
            str(out),
            "--no-analyze",
            "--no-preflight",
            "--quiet",
        ],  # fmt: skip
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_records(out: Path, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sum(len(p.read_text().splitlines()) for p in record_files(out)) >= n:
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} records after 60 s")


def wait_streams(srv: ServerProcess, n: int) -> None:
    """Until the server holds ``n`` connections open (streams under way)."""
    port = int(srv.base_url.split(":")[2].split("/")[0])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conns = psutil.Process(srv.pid).net_connections(kind="tcp")
        if sum(c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port for c in conns) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"never {n} streams open")


def run_processes(out: Path) -> list[psutil.Process]:
    """Every process of the run: Locust's master and workers name the run directory."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if str(out) in cmd and cmd[1:3] == ["-m", "locust"]:
            found.append(p)
    return found


def still_running(procs: list[psutil.Process], until_ns: int) -> list[psutil.Process]:
    """The processes that have not exited (gone, or a zombie not reaped yet) by
    ``until_ns`` (a perf_counter_ns time)."""
    while True:
        running = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    running.append(p)
            except psutil.NoSuchProcess:
                pass
        if not running or time.perf_counter_ns() > until_ns:
            return running
        time.sleep(0.02)


def truth(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def files_holding(secrets: list[str], before: set[str]) -> list[Path]:
    """Files in the temp folder, new since ``before``, that hold one of ``secrets`` (other
    runs on a shared machine may add their own files there)."""
    tmp = Path(tempfile.gettempdir())
    found = []
    for name in sorted(set(os.listdir(tmp)) - before):
        root = tmp / name
        for path in [root] if root.is_file() else root.rglob("*"):
            try:
                if path.is_file() and path.stat().st_size < 1 << 20:
                    text = path.read_text(errors="replace")
                    found += [path for s in secrets if s in text][:1]
            except OSError:
                continue
    return found


def test_sigkill_of_loadkit_run_stops_the_load_and_every_process(tmp_path):
    # with workers: the master (loadkit run's child) and the workers it forked all end
    workers = 2
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    out = tmp_path / "run"
    with server(tmp_path, itl_ms=20) as srv:
        proc = start_run(scenario_file(tmp_path, srv, tokens=8), out, workers)
        try:
            wait_records(out, 20, proc)
            procs = run_processes(out)
            assert len(procs) == 1 + workers
            assert all(p.ppid() in (proc.pid, procs[0].pid) for p in procs)
            killed_ns = time.perf_counter_ns()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            # every process of the run ends by itself within 2 s (0.5 s more for a busy
            # machine; they take 0.1 to 0.5 s); the container's init may take a moment
            # longer to reap them
            running = still_running(procs, killed_ns + 2_500_000_000)
            assert not running, [p.cmdline() for p in running]
            _, alive = psutil.wait_procs(procs, timeout=8)
            assert not alive
            # wait out the 2 s, then look at what reached the server
            time.sleep(max(0.0, 2.5 - (time.perf_counter_ns() - killed_ns) / 1e9))
        finally:
            if proc.poll() is None:
                proc.kill()
            for p in run_processes(out):
                p.kill()
        rows = truth(tmp_path / "truth.jsonl")
        secrets = [srv.key(label) for label in srv.labels("pro")]
    late = [r for r in rows if r["arrival_ns"] > killed_ns + 2_000_000_000]
    assert not late, f"{len(late)} requests reached the target more than 2 s after the kill"
    assert not run_processes(out)
    # the run's end is written by the master, which saw loadkit run go
    meta = read_run_meta(out)
    assert f"loadkit run (pid {proc.pid}) ended" in meta.stop_reason and meta.ended_unix
    # keys were never written to disk: not in the temp folder, not in the run directory
    assert not files_holding(secrets, tmp_before)
    written = "".join(p.read_text(errors="replace") for p in out.iterdir() if p.is_file())
    assert secrets and not any(s in written for s in secrets)
    # what was sent before the kill is recorded; what was open was cancelled and recorded
    recs = iter_records(out)
    assert len(recs) >= 20


def test_a_second_interrupt_skips_the_drain(tmp_path):
    users = 3
    out = tmp_path / "run"
    # 20 tokens 500 ms apart: each stream lasts 10 s, well past the 5 s grace
    with server(tmp_path, itl_ms=500) as srv:
        proc = start_run(scenario_file(tmp_path, srv, tokens=20, users=users), out, 0)
        streams = users * len(srv.labels("pro"))
        try:
            wait_streams(srv, streams)
            first = time.monotonic()
            os.kill(proc.pid, signal.SIGINT)
            time.sleep(0.3)
            os.kill(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            took = time.monotonic() - first
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err[-2000:]
    # without the second interrupt the open streams would have had the whole grace
    assert took < GRACE_S - 1.0
    meta = read_run_meta(out)
    assert meta.interrupted and "interrupted twice" in meta.stop_reason
    recs = iter_records(out)
    cut = [r for r in recs if r.transport_error == "cancelled"]
    assert len(cut) == streams and all(r.status == 200 and r.first_token_s for r in cut)
    assert [w.sent for w in meta.workers] == [len(recs)]
    assert not run_processes(out)


def test_sighup_to_the_master_is_a_graceful_stop(tmp_path):
    out = tmp_path / "run"
    with server(tmp_path, itl_ms=20) as srv:
        proc = start_run(scenario_file(tmp_path, srv, tokens=8), out, 0)
        try:
            wait_records(out, 20, proc)
            (master,) = run_processes(out)
            master.send_signal(signal.SIGHUP)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        rows = truth(tmp_path / "truth.jsonl")
    assert proc.returncode == 130, err[-2000:]
    meta = read_run_meta(out)
    assert meta.interrupted and meta.stop_reason == "stopped before the schedule ended"
    # graceful: the open streams (160 ms each) finished within the grace, none was cut,
    # and every request the server saw has its record
    recs = iter_records(out)
    assert not [r for r in recs if r.transport_error]
    assert {r.request_id for r in recs} == {r["request_id"] for r in rows}
    assert not run_processes(out)
