"""Every way `loadkit run` (asyncio engine) can end, as a CI runner or an operator ends it:
SIGTERM and SIGHUP stop it gracefully (records kept, analysed, verdict `incomplete`, exit 3);
SIGKILL leaves no process of the run behind and no load reaching the target. The Locust
engine's lifecycle tests are in tests/locust_engine/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from loadkit.server.testing import ServerThread

pytestmark = pytest.mark.slow


def scenario(tmp_path: Path, base_url: str) -> Path:
    p = tmp_path / "s.json"
    p.write_text(
        json.dumps(
            {
                "name": "lifecycle",
                "target": {"base_url": base_url},
                "run": {"duration_s": 60, "drain_s": 5},
                "tiers": {"free": {"requests": 600, "concurrency": 3, "keys_env": "LK_TEST_KEYS"}},
                "load": [
                    {
                        "tier": "free",
                        "pattern": "constant",
                        "rate_per_s": 20,
                        "mix": {"chat_stream": 1},
                        "max_tokens": 30,
                    }
                ],
            }
        )
    )
    return p


def start_run(tmp_path: Path, args: list[str], env: dict[str, str] | None = None):
    """``loadkit run`` analysing without charts (they cost seconds; no test here reads them)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadkit",
            "run",
            *args,
            "--engine",
            "async",
            "--out",
            str(out),
            "--no-charts",
        ],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out


def wait_for_records(out: Path, n: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        files = list(out.glob("records-async-*.jsonl"))
        if files and sum(f.read_text().count("\n") for f in files) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no records appeared"
        time.sleep(0.1)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def truth_count(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_gracefully_and_the_run_is_incomplete(tmp_path, sig):
    # The built-in scenario on the embedded server: the server must not be orphaned.
    proc, out = start_run(tmp_path, ["--duration", "60"])
    wait_for_records(out, 20, proc)
    children = descendants(proc.pid)
    assert children, "the embedded server runs as a child"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 3, stderr  # incomplete
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "incomplete"
    meta = json.loads((out / "run.json").read_text())
    assert meta["interrupted"] and sig.name in meta["stop_reason"]
    records = sum(f.read_text().count("\n") for f in out.glob("records-*.jsonl"))
    assert records == meta["workers"][0]["records"] == meta["workers"][0]["sent"]
    assert "INCOMPLETE" in stdout
    gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"left behind: {[p.cmdline() for p in alive]}"


def test_sigkill_leaves_no_process_and_no_load(tmp_path):
    truth = tmp_path / "truth.jsonl"
    with ServerThread(truth_path=truth) as srv:
        keys = ",".join(srv.key(label) for label in srv.labels("free")[:2])
        proc, out = start_run(
            tmp_path, [str(scenario(tmp_path, srv.base_url))], {"LK_TEST_KEYS": keys}
        )
        wait_for_records(out, 20, proc)
        children = descendants(proc.pid)
        proc.kill()
        proc.wait()
        time.sleep(0.5)  # what was already on the wire lands
        srv.wait_idle()
        before = truth_count(truth)
        time.sleep(2.0)
        srv.wait_idle()
        assert truth_count(truth) == before, "load reached the target after the run was killed"
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
        # What finished before the kill is on disk, whole lines only but the last.
        # (Two keys on a real target: one worker process per key by default, each its file.)
        lines = [ln for f in out.glob("records-async-*.jsonl") for ln in f.read_text().splitlines()]
        assert len(lines) >= 20


def test_sigkill_ends_the_embedded_server_and_removes_its_keys(tmp_path):
    proc, out = start_run(tmp_path, ["--duration", "60"])
    wait_for_records(out, 10, proc)
    servers = [p for p in descendants(proc.pid) if "serve" in p.cmdline()]
    assert len(servers) == 1
    cmd = servers[0].cmdline()
    keys_dir = Path(cmd[cmd.index("--cleanup-dir") + 1])
    assert (keys_dir / "keys.json").exists()
    proc.kill()
    proc.wait()
    gone, alive = psutil.wait_procs(servers, timeout=5)
    assert not alive, "the embedded server outlived the run"
    assert not keys_dir.exists(), "the keys outlived the run"
