"""``loadkit run --engine locust``: the same scenario, headless through Locust.

This module never imports Locust or gevent (``import locust`` monkey-patches the standard
library): it launches ``python -m locust`` on ``locustfiles/tier_users.py`` with loadkit's
custom Locust options — the resolved scenario (a JSON file, no secrets), the run
directory, this process's pid (every process of the run ends when this one does, SIGKILL
included) — and lets Locust's master coordinate its workers through Locust's own
messages. The keys go through a pipe the master inherits: never on disk, never on a
command line. The master writes every record and run.json into the run directory; this
module shows progress from the record files, turns an interrupt into a graceful stop
(SIGTERM to the master; a second one stops it at once), and adopts what the master wrote
(t=0, workers, how it ended).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

from loadkit.records import record_files
from loadkit.runmeta import RUN_FILE, Clock, RunMeta, read_run_meta, start_at
from loadkit.scenario import Key, Scenario, plan, scenario_to_dict

STARTUP_MARGIN_S = 60  # Locust's --run-time safety net beyond the schedule and its drain
STOP_WAIT_S = 45.0  # after Ctrl-C: the master's grace (≤ 5 s) and final reports, with room
STOP_NOW_WAIT_S = 15.0  # after a second Ctrl-C: cancel, final reports, run.json
STOP_NOW = signal.SIGUSR1  # the master's signal to stop at once (locustfiles/_lifecycle.py)
KEYS_FD_ENV = "LOADKIT_KEYS_FD"  # the pipe's descriptor number in Locust's environment
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # ${NAME} in a header value


class Target(Protocol):
    base_url: str
    keys: list[Key]


def locustfile() -> Path:
    spec = importlib.util.find_spec("loadkit.locustfiles")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the locustfiles package is not installed with loadkit")
    return Path(next(iter(spec.submodule_search_locations))) / "tier_users.py"


def users_count(scenario: Scenario, keys: list[Key]) -> int:
    """Locust users in scenario mode: one per key that has load (a user drives every load
    phase of its key with greenlets)."""
    return len({key.label for key, _ in plan(scenario, keys)})


def run_locust(
    scenario: Scenario,
    target: Target,
    out_dir: Path,
    clock: Clock,
    meta: RunMeta,
    workers: int | None = None,
    progress: bool = True,
) -> None:
    """Run ``scenario`` through Locust (``workers`` > 0: that many local worker processes)
    into ``out_dir``; updates ``clock`` and ``meta`` with the master's t=0 and outcome."""
    users = users_count(scenario, target.keys)
    if users == 0:
        meta.stop_reason = "nothing to run: no load phase matches a key"
        return
    _run(scenario, target, out_dir, clock, meta, workers or 0, progress, users)


def locust_command(
    scenario_file: Path,
    out_dir: Path,
    base_url: str,
    users: int,
    run_time_s: int,
    workers: int,
    port: int,
) -> list[str]:
    """The Locust command line: every setting as a Locust option, nothing secret."""
    cmd = [
        sys.executable, "-m", "locust", "-f", str(locustfile()), "--headless",
        "--host", base_url, "-u", str(users), "-r", str(max(users, 1)),
        "--run-time", f"{run_time_s}s", "--only-summary", "--loglevel", "WARNING",
        "--exit-code-on-error", "0",
        "--loadkit-scenario", str(scenario_file),
        "--loadkit-out", str(out_dir),
        "--loadkit-parent-pid", str(os.getpid()),
    ]  # fmt: skip
    if workers > 0:
        # An ephemeral master port on loopback: with Locust's fixed default, workers left
        # over from another run on this machine would join this one.
        cmd += [
            "--processes", str(workers),
            "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
            "--master-host", "127.0.0.1", "--master-port", str(port),
        ]  # fmt: skip
    return cmd


def _run(
    scenario: Scenario,
    target: Target,
    out_dir: Path,
    clock: Clock,
    meta: RunMeta,
    workers: int,
    progress: bool,
    users: int,
) -> None:
    spec = scenario_to_dict(scenario)
    if scenario.target.server_config:  # read relative to the scenario file, not to out_dir
        spec["target"]["server_config"] = os.path.abspath(scenario.target.server_config)
    scenario_file = out_dir / "scenario.json"
    scenario_file.write_text(json.dumps(spec, indent=2) + "\n")

    span = scenario.duration_s if not math.isinf(scenario.duration_s) else 24 * 3600
    run_time = int(span + scenario.drain_s + STARTUP_MARGIN_S)
    cmd = locust_command(
        scenario_file.resolve(),
        out_dir.resolve(),
        target.base_url,
        users,
        run_time,
        workers,
        _free_port() if workers > 0 else 0,
    )
    # Everything else is on the command line; loadkit variables a user exported for plain
    # Locust use (keys above all) must not add to it, but those the scenario's headers name
    # are read where the requests are sent.
    named = {n for v in scenario.target.headers.values() for n in _ENV_REF.findall(v)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADKIT_") or k in named}
    keys_out, keys_in = os.pipe()
    env[KEYS_FD_ENV] = str(keys_out)
    log_path = out_dir / "locust.log"
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(keys_out,),
            )
        except BaseException:
            os.close(keys_in)
            raise
        finally:
            os.close(keys_out)
        try:
            _hand_keys(keys_in, target)
            _watch(proc, out_dir, clock, progress)
        except KeyboardInterrupt:
            meta.interrupted = True
            meta.stop_reason = "interrupted (Ctrl-C)"
            if _stop(proc):
                meta.stop_reason = "interrupted twice (Ctrl-C): open requests cancelled"
        finally:
            _reap(proc)
    _adopt(out_dir, clock, meta)
    code = proc.returncode
    if code not in (0, None) and not meta.interrupted and not record_files(out_dir):
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"locust exited with {code} and wrote no records:\n{tail}")


def _hand_keys(fd: int, target: Target) -> None:
    """Write the keys into the pipe Locust's master reads when it starts (it blocks only
    until the master has read them, or fails if the master is gone)."""
    doc = {"keys": [{"label": k.label, "tier": k.tier, "key": k.secret} for k in target.keys]}
    try:
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(json.dumps(doc).encode())
    except BrokenPipeError:
        pass  # the master ended before reading them: its log says why


def _adopt(out_dir: Path, clock: Clock, meta: RunMeta) -> None:
    """Take the master's t=0 (same machine: its monotonic anchor is exact here), its
    workers, whether it was interrupted (a signal sent to the master itself) and, unless
    Ctrl-C here stopped the run, its reason for ending."""
    try:
        master = read_run_meta(out_dir)
    except (OSError, ValueError):
        return
    if master.run_id != meta.run_id:
        return
    start_at(clock, meta, master.mono_anchor_ns, master.started_unix)
    meta.workers = master.workers
    if not meta.interrupted and master.stop_reason:
        meta.stop_reason = master.stop_reason
    meta.interrupted = meta.interrupted or master.interrupted


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
    seen = 0.0
    while proc.poll() is None:
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if progress and time.monotonic() - last >= period:
            last = time.monotonic()
            seen = _follow_origin(out_dir, clock, seen)
            tally.update()
            end = "\r" if sys.stderr.isatty() else "\n"
            print(tally.line(clock.now()), end=end, file=sys.stderr, flush=True)
    if progress:
        _follow_origin(out_dir, clock, seen)
        tally.update()
        print(tally.line(clock.now()), file=sys.stderr, flush=True)


def _follow_origin(out_dir: Path, clock: Clock, seen: float) -> float:
    """Progress times from the master's t=0 once run.json has it."""
    try:
        mtime = (out_dir / RUN_FILE).stat().st_mtime
        if mtime != seen:
            master = read_run_meta(out_dir)
            clock.mono_anchor_ns, clock.wall_anchor = master.mono_anchor_ns, master.started_unix
    except (OSError, ValueError):
        return seen
    return mtime


def _stop(proc: subprocess.Popen[bytes]) -> bool:
    """Ctrl-C: SIGTERM to Locust's master, which tells every worker to stop (no new
    requests; open ones finish within the grace and are recorded), waits for their final
    reports, writes run.json and quits. A second Ctrl-C skips the grace: STOP_NOW to the
    master, which cancels what is open (each recorded), collects the final reports and
    quits. A third, or a master that has not ended in time, ends every process of the run
    at once (records written so far are kept). True if the grace was skipped."""
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    try:
        proc.wait(timeout=STOP_WAIT_S)
        return False
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        return False
    except KeyboardInterrupt:
        pass
    try:
        os.kill(proc.pid, STOP_NOW)
        proc.wait(timeout=STOP_NOW_WAIT_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
    return True


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Nothing of the run outlives it: Locust's forked workers leave with the master's quit;
    any that have not after 10 s are killed."""
    if proc.poll() is None:  # an error on the way out: no Locust process may stay behind
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
