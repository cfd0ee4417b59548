"""``loadkit run --engine locust``: the same scenario, headless through Locust.

This module never imports Locust or gevent (``import locust`` monkey-patches the standard
library): it launches ``python -m locust`` as a subprocess on ``locustfiles/tier_users.py``,
hands it the resolved scenario (a JSON file, no secrets), the keys (a private 0600 file,
never argv or logs) and the run's clock, shows progress from the record files, forwards
Ctrl-C, and reports workers that died in the run metadata.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadkit.records import record_files
from loadkit.runmeta import Clock, RunMeta, WorkerInfo
from loadkit.scenario import Scenario, plan, scenario_to_dict

STARTUP_S = 4.0  # Locust's import and spawn; the schedule's t=0 is this far in the future


def locustfile() -> Path:
    spec = importlib.util.find_spec("loadkit.locustfiles")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the locustfiles package is not installed with loadkit")
    return Path(next(iter(spec.submodule_search_locations))) / "tier_users.py"


def users_count(scenario: Scenario, keys: list[Any]) -> int:
    """Locust users in scenario mode: one per key that has load (a user drives every load
    phase of its key with greenlets)."""
    return len({key.label for key, _ in plan(scenario, keys)})


def run_locust(
    scenario: Scenario,
    target: Any,
    out_dir: Path,
    clock: Clock,
    meta: RunMeta,
    workers: int | None = None,
    progress: bool = True,
) -> None:
    users = users_count(scenario, target.keys)
    if users == 0:
        meta.stop_reason = "nothing to run: no load phase matches a key"
        return
    private = Path(tempfile.mkdtemp(prefix="loadkit-locust-"))
    os.chmod(private, 0o700)
    try:
        _run(scenario, target, out_dir, clock, meta, workers or 0, progress, users, private)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _run(
    scenario: Scenario,
    target: Any,
    out_dir: Path,
    clock: Clock,
    meta: RunMeta,
    workers: int,
    progress: bool,
    users: int,
    private: Path,
) -> None:
    keys_file = private / "keys.json"
    fd = os.open(keys_file, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(
            {"keys": [{"label": k.label, "tier": k.tier, "key": k.secret} for k in target.keys]}, fh
        )
    scenario_file = out_dir / "scenario.json"
    scenario_file.write_text(json.dumps(scenario_to_dict(scenario), indent=2) + "\n")

    # t=0 of the schedule is when Locust's users are up, not when this process started it.
    shift_ns = int(STARTUP_S * 1e9)
    clock.mono_anchor_ns = time.perf_counter_ns() + shift_ns
    clock.wall_anchor = time.time() + STARTUP_S
    meta.mono_anchor_ns = clock.mono_anchor_ns
    meta.started_unix = clock.wall_anchor
    meta.write(out_dir)

    t = scenario.target
    env = {
        **os.environ,
        "LOADKIT_SCENARIO": str(scenario_file),
        "LOADKIT_KEYS_FILE": str(keys_file),
        "LOADKIT_OUT": str(out_dir),
        "LOADKIT_RUN_ID": meta.run_id,
        "LOADKIT_MONO_ANCHOR_NS": str(clock.mono_anchor_ns),
        "LOADKIT_WALL_ANCHOR": repr(clock.wall_anchor),
        "LOADKIT_BOOT_ID": _boot_id(),
        "LOADKIT_WORKERS": str(max(1, workers)),
        "LOADKIT_RUNNER_OWNS_META": "1",
        "LOADKIT_CONNECT_TIMEOUT_S": str(t.connect_timeout_s),
        "LOADKIT_READ_TIMEOUT_S": str(t.read_timeout_s),
    }
    for name in [n for n in env if n.startswith("LOADKIT_KEYS_") and n != "LOADKIT_KEYS_FILE"]:
        del env[name]  # keys come from the file only
    span = scenario.duration_s if not math.isinf(scenario.duration_s) else 24 * 3600
    run_time = int(STARTUP_S + span + scenario.drain_s + 30)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(locustfile()), "--headless",
        "--host", target.base_url, "-u", str(users), "-r", str(max(users, 1)),
        "--run-time", f"{run_time}s", "--stop-timeout", str(int(scenario.drain_s) + 1),
        "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0",
    ]  # fmt: skip
    if workers > 0:
        # An ephemeral master port: with Locust's fixed default, workers left over from
        # another run on this machine would join this one.
        port = _free_port()
        cmd += [
            "--processes",
            str(workers),
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--master-host",
            "127.0.0.1",
            "--master-port",
            str(port),
        ]
    log_path = out_dir / "locust.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _watch(proc, out_dir, clock, progress)
        except KeyboardInterrupt:
            meta.interrupted = True
            meta.stop_reason = "interrupted (Ctrl-C)"
            _stop(proc, out_dir)
    code = proc.returncode
    meta.workers = [WorkerInfo(**w) for w in _worker_status(out_dir)]
    if not meta.interrupted:
        died = [w for w in meta.workers if w.status == "died"]
        meta.stop_reason = f"{len(died)} Locust worker(s) died" if died else "schedule complete"
    if code not in (0, None) and not meta.interrupted and not record_files(out_dir):
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"locust exited with {code} and wrote no records:\n{tail}")


class _Tally:
    """Counts finished records by status as the record files grow (reads only new bytes)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.offsets: dict[Path, int] = {}
        self.done = self.ok = self.limited = 0

    def update(self) -> None:
        for path in record_files(self.out_dir):
            start = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # whole lines only
            self.offsets[path] = start + end
            chunk = data[:end]
            self.done += chunk.count(b"\n")
            self.ok += chunk.count(b'"status":200,')
            self.limited += chunk.count(b'"status":429,')

    def line(self, t: float) -> str:
        other = self.done - self.ok - self.limited
        return (
            f"[{t:7.1f}s] locust: done {self.done}  2xx {self.ok}  429 {self.limited}  "
            f"other {other}"
        )


def _watch(proc: subprocess.Popen[bytes], out_dir: Path, clock: Clock, progress: bool) -> None:
    period = 1.0 if sys.stderr.isatty() else 5.0
    tally = _Tally(out_dir)
    last = time.monotonic()
    while proc.poll() is None:
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if progress and time.monotonic() - last >= period:
            last = time.monotonic()
            tally.update()
            end = "\r" if sys.stderr.isatty() else "\n"
            print(tally.line(clock.now()), end=end, file=sys.stderr, flush=True)
    if progress:
        tally.update()
        print(tally.line(clock.now()), file=sys.stderr, flush=True)


def _stop(proc: subprocess.Popen[bytes], out_dir: Path) -> None:
    """Ctrl-C: first a graceful stop every Locust process sees (the ``.stop`` file): no new
    requests, open ones finish and are recorded, the run ends as usual. If that has not
    ended it in 10 s (or on a second Ctrl-C), Locust's main process gets SIGINT (its users
    record open requests as cancelled); past 20 s more the process group is terminated."""
    (out_dir / ".stop").touch()
    try:
        proc.wait(timeout=10)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    try:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    except ProcessLookupError:
        pass
    # Workers finish writing their records after the main process is gone; give them a
    # moment, then nothing of the run may outlive it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.1)
    _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _worker_status(out_dir: Path) -> list[dict[str, Any]]:
    from loadkit.locustfiles._roles import worker_status  # no locust import there

    return worker_status(out_dir)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
