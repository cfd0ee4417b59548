"""``loadkit run --engine async --workers N``: the asyncio engine on every core, as one run.

Each worker is a process (``loadkit.engine.worker``) that owns whole keys (a key's limit
is judged on one clock) and writes its own ``records-async-<n>.jsonl`` into the one run
directory, the layout analysis reads for Locust's workers too; this process writes the one
``run.json``. Workers get their share, keys included, through a pipe (never argv nor the
environment), say when they are ready, and start on one shared t=0 sent to all, so every
open-loop schedule keeps its exact times across workers. A stop signal here reaches every
worker (each drains; a second signal cuts the drains short; a third ends them at once). A
worker that dies stops the others and leaves the run incomplete, named in run.json. A
worker whose parent is gone (SIGKILL included) sees its control pipe close and exits.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

from loadkit.engine import stop_signals
from loadkit.engine import worker_link as link
from loadkit.engine.worker_plan import WorkerPlan, WorkerShare
from loadkit.runmeta import Clock, Origin, RunMeta, WorkerInfo, start_at
from loadkit.scenario import Key, Scenario, scenario_to_dict

READY_TIMEOUT_S = 60.0  # a worker imports aiohttp and the engine: seconds on a busy machine
START_LEAD_S = 0.1  # t=0 this far after ``go`` is sent: every worker is waiting for it
STOP_GRACE_S = 30.0  # after an interrupt, beyond the drain: a worker still there is ended
ROUTINE_STOPS = ("duration reached", "schedule complete")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # ${NAME} in a header value


class Target(Protocol):
    base_url: str
    keys: list[Key]


class WorkersFailed(RuntimeError):
    """The workers could not be started (no load was sent); the message says why."""


@dataclass
class _Worker:
    share: WorkerShare
    proc: subprocess.Popen[bytes]
    control: int  # our end of its control pipe (we write)
    status: int  # our end of its status pipe (we read)
    records_path: Path
    reader: link.LineReader = field(default_factory=link.LineReader)
    ready: bool = False
    counts: link.Counts = field(default_factory=link.Counts)
    stop_reason: str = ""
    result: link.WorkerResult | None = None
    ended: bool = False  # its status pipe closed
    killed: str = ""  # why we ended it ourselves

    @property
    def name(self) -> str:
        return self.share.worker


def run_workers(
    scenario: Scenario,
    target: Target,
    out_dir: Path,
    clock: Clock,
    meta: RunMeta,
    wplan: WorkerPlan,
    progress: bool = True,
) -> None:
    """Run ``scenario`` on ``wplan``'s workers into ``out_dir``; moves ``clock`` and
    ``meta`` to the shared t=0 and sets how the run ended and each worker's account.
    Raises WorkersFailed when a worker cannot start (nothing sent)."""
    job = _job_base(scenario, target, out_dir, meta.run_id)
    secrets = {k.label: k for k in target.keys}
    workers: list[_Worker] = []
    with _caught_signals() as caught:
        try:
            for share in wplan.shares:
                workers.append(_start(share, job, [secrets[lb] for lb in share.labels], scenario))
            _await_ready(workers, caught)
            if caught:  # stopped before any load: nothing sent, nothing to drain
                for w in workers:
                    link.send(w.control, link.ABORT)
                meta.interrupted = True
                meta.stop_reason = f"interrupted ({stop_signals.signal_label(caught[0])})"
                _wait_all(workers, deadline=time.monotonic() + STOP_GRACE_S)
                meta.workers = [
                    WorkerInfo(w.name, status="interrupted", sent=0, in_flight=0) for w in workers
                ]
                return
            origin = Origin.now(START_LEAD_S)
            for w in workers:
                link.send(w.control, link.GO, origin=origin.to_dict())
            start_at(clock, meta, origin.mono_ns, origin.wall)
            meta.write(out_dir)
            _follow(workers, scenario, clock, meta, caught, progress)
        finally:
            _end_all(workers)
    # A worker interrupted by a signal sent to it alone interrupted the run.
    meta.interrupted = meta.interrupted or any(w.result and w.result.interrupted for w in workers)
    meta.workers = [_info(w, "interrupted" if meta.interrupted else "ok") for w in workers]
    if not meta.stop_reason:
        meta.stop_reason = _run_stop_reason(workers)


def _job_base(scenario: Scenario, target: Target, out_dir: Path, run_id: str) -> dict[str, object]:
    spec = scenario_to_dict(scenario)
    if scenario.target.server_config:  # read relative to the scenario file, not the worker
        spec["target"]["server_config"] = os.path.abspath(scenario.target.server_config)
    return {
        "scenario": spec,
        "base_url": target.base_url,
        "run_id": run_id,
        "out": str(out_dir.resolve()),
    }


def _worker_env(scenario: Scenario) -> dict[str, str]:
    """This process's environment without the keys (loadkit's own variables, each tier's
    ``keys_env``): a worker gets its keys through its pipe. Variables the scenario's header
    values name stay (they are read where requests are sent)."""
    named = {n for v in scenario.target.headers.values() for n in _ENV_REF.findall(v)}
    keys_envs = {t.keys_env for t in scenario.tiers.values() if t.keys_env}
    return {
        k: v
        for k, v in os.environ.items()
        if k in named or not (k.startswith("LOADKIT_") or k in keys_envs)
    }


def _start(
    share: WorkerShare, job: dict[str, object], keys: list[Key], scenario: Scenario
) -> _Worker:
    ctl_r, ctl_w = os.pipe()
    st_r, st_w = os.pipe()
    cmd = [
        sys.executable, "-m", "loadkit.engine.worker",
        "--control-fd", str(ctl_r), "--status-fd", str(st_w),
    ]  # fmt: skip
    try:
        # Its own session: a Ctrl-C in the terminal reaches this process only, which passes
        # it on once (the terminal's copy and ours would be two signals: no drain).
        proc = subprocess.Popen(
            cmd, env=_worker_env(scenario), pass_fds=(ctl_r, st_w), start_new_session=True
        )
    except BaseException:
        os.close(ctl_w)
        os.close(st_r)
        raise
    finally:
        os.close(ctl_r)
        os.close(st_w)
    w = _Worker(share, proc, ctl_w, st_r, Path(str(job["out"])) / f"records-{share.worker}.jsonl")
    link.send(
        ctl_w,
        link.JOB,
        **job,
        worker=share.worker,
        keys=[{"label": k.label, "tier": k.tier, "key": k.secret} for k in keys],
        pairs=[list(p) for p in share.pairs],
    )
    return w


def _read(w: _Worker) -> list[dict[str, object]]:
    """Messages waiting on a worker's status pipe (marks it ended at the pipe's end)."""
    try:
        data = os.read(w.status, 65536)
    except BlockingIOError:
        return []
    except OSError:
        data = b""
    if not data:
        w.ended = True
        return []
    try:
        return w.reader.feed(data)
    except json.JSONDecodeError:
        return []  # not ours: a worker writes nothing else on this pipe


def _handle(w: _Worker, msg: dict[str, object]) -> None:
    kind = msg.get("kind")
    if kind == link.READY:
        w.ready = True
    elif kind == link.PROGRESS:
        counts = msg.get("counts")
        if isinstance(counts, dict):
            w.counts = link.counts_from(counts)
        w.stop_reason = str(msg.get("stop_reason") or "")
    elif kind == link.RESULT:
        res = msg.get("result")
        if isinstance(res, dict):
            w.result = link.WorkerResult.from_dict(res)


def _selector(workers: list[_Worker]) -> selectors.DefaultSelector:
    sel = selectors.DefaultSelector()
    for w in workers:
        if not w.ended:
            os.set_blocking(w.status, False)
            sel.register(w.status, selectors.EVENT_READ, w)
    return sel


def _pump(sel: selectors.DefaultSelector, timeout: float) -> list[_Worker]:
    """Read what the workers sent within ``timeout``; returns those whose pipe closed."""
    closed = []
    for key, _ in sel.select(timeout):
        w: _Worker = key.data
        for msg in _read(w):
            _handle(w, msg)
        if w.ended:
            sel.unregister(w.status)
            w.proc.wait()
            closed.append(w)
    return closed


def _await_ready(workers: list[_Worker], caught: list[signal.Signals]) -> None:
    """Until every worker is ready, or a stop signal came first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    with _selector(workers) as sel:
        while not all(w.ready for w in workers) and not caught:
            for w in _pump(sel, 0.2):
                if not w.ready:
                    raise WorkersFailed(
                        f"worker {w.name} (pid {w.proc.pid}) ended before it was ready "
                        f"({_how_ended(w.proc.returncode)}); no load was sent"
                    )
            if time.monotonic() > deadline:
                slow = [w.name for w in workers if not w.ready]
                raise WorkersFailed(
                    f"worker{'s' if len(slow) > 1 else ''} {', '.join(slow)} not ready "
                    f"after {READY_TIMEOUT_S:g} s; no load was sent"
                )


def _follow(
    workers: list[_Worker],
    scenario: Scenario,
    clock: Clock,
    meta: RunMeta,
    caught: list[signal.Signals],
    progress: bool,
) -> None:
    """Until every worker has ended: pass signals on, stop the run when a worker dies or
    ends the run for a reason of its own, print the summed progress."""
    period = 1.0 if sys.stderr.isatty() else 5.0
    next_line = time.monotonic() + period
    handled = 0  # signals passed on so far
    stopping = ""  # why the run is being ended here
    kill_at: float | None = None
    with _selector(workers) as sel:
        while not all(w.ended for w in workers):
            for w in _pump(sel, 0.2):
                if w.result is None and not w.killed:
                    detail = _how_ended(w.proc.returncode)
                    print(
                        f"loadkit run: worker {w.name} (pid {w.proc.pid}) died ({detail}) "
                        "before its final report: the run is incomplete; its records so far "
                        "are kept",
                        file=sys.stderr,
                        flush=True,
                    )
                    if not stopping:
                        stopping = f"worker {w.name} died ({detail})"
                        _tell(workers, link.STOP, stopping)
            if not stopping:
                for w in workers:
                    if w.stop_reason and w.stop_reason not in ROUTINE_STOPS:
                        # The run ends for all, as on one process (a target failing
                        # everything, an interrupt sent to one worker).
                        stopping = w.stop_reason
                        _tell(workers, link.STOP, stopping)
                        break
            while handled < len(caught):
                sig = caught[handled]
                handled += 1
                reason = f"interrupted ({stop_signals.signal_label(sig)})"
                if handled == 1:
                    meta.interrupted = True
                    meta.stop_reason = reason
                    kill_at = time.monotonic() + scenario.drain_s + STOP_GRACE_S
                if handled <= 2:
                    _tell(workers, link.INTERRUPT, reason)
                    if handled == 2:
                        meta.stop_reason += "; drain cut short"
                else:
                    kill_at = time.monotonic()
            if kill_at is not None and time.monotonic() >= kill_at:
                _kill(workers, "ended after the interrupt: it did not stop in time")
                kill_at = None
            if progress and time.monotonic() >= next_line:
                next_line += period
                _print_progress(workers, clock, final=False)
    if stopping and not meta.interrupted:
        meta.stop_reason = stopping
    if progress:
        _print_progress(workers, clock, final=True)


def _tell(workers: list[_Worker], kind: str, reason: str) -> None:
    for w in workers:
        if not w.ended:
            link.send(w.control, kind, reason=reason)


def _kill(workers: list[_Worker], why: str) -> None:
    for w in workers:
        if not w.ended and w.proc.poll() is None:
            w.killed = why
            _signal(w.proc, signal.SIGKILL)


def _wait_all(workers: list[_Worker], deadline: float) -> None:
    with _selector(workers) as sel:
        while not all(w.ended for w in workers) and time.monotonic() < deadline:
            _pump(sel, 0.2)


def _end_all(workers: list[_Worker]) -> None:
    """Nothing of the run outlives it: a worker still there (an error here) is ended."""
    for w in workers:
        if w.proc.poll() is None:
            w.killed = w.killed or "ended with the run"
            _signal(w.proc, signal.SIGKILL)
        w.proc.wait()
        for fd in (w.control, w.status):
            try:
                os.close(fd)
            except OSError:
                pass


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


def _how_ended(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _count_lines(path: Path) -> int:
    """Whole records in a file (a torn last line of a killed writer is not one)."""
    n = 0
    try:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                n += block.count(b"\n")
    except OSError:
        return 0
    return n


def _info(w: _Worker, status: str) -> WorkerInfo:
    res = w.result
    if res is None:
        return WorkerInfo(
            w.name,
            records=_count_lines(w.records_path),
            status="died",
            detail=w.killed or _how_ended(w.proc.returncode),
            sent=None,
            in_flight=w.counts.in_flight,
        )
    return WorkerInfo(
        w.name,
        records=res.records,
        status="interrupted" if res.interrupted else status,
        sent=res.sent + res.not_sent,
        in_flight=res.in_flight,
    )


def _run_stop_reason(workers: list[_Worker]) -> str:
    """The run's reason to end from its workers': the first that is not routine, else
    "duration reached" if any reached it, else the schedule was complete."""
    reasons = [w.result.stop_reason for w in workers if w.result is not None]
    for r in reasons:
        if r and r not in ROUTINE_STOPS:
            return r
    if "duration reached" in reasons:
        return "duration reached"
    return reasons[0] if reasons else ""


def _print_progress(workers: list[_Worker], clock: Clock, final: bool) -> None:
    total = link.Counts()
    for w in workers:
        total.add(w.counts)
    line = (
        f"[{clock.now():7.1f}s] {len(workers)} workers: sent {total.sent}  done {total.done}  "
        f"in flight {total.in_flight}  2xx {total.ok}  429 {total.limited}  other {total.other}"
    )
    end = "\n" if final or not sys.stderr.isatty() else "\r"
    print(line, end=end, file=sys.stderr, flush=True)


@contextmanager
def _caught_signals() -> Iterator[list[signal.Signals]]:
    """SIGINT, SIGTERM and SIGHUP are collected (in order) while the workers run, to be
    passed on to them; the handlers before are put back after."""
    caught: list[signal.Signals] = []

    def keep(sig: int, _frame: FrameType | None) -> None:
        caught.append(signal.Signals(sig))

    old = {}
    try:
        for sig in stop_signals.STOP_SIGNALS:
            old[sig] = signal.signal(sig, keep)
    except ValueError:  # not the main thread (tests): signals stay as they are
        pass
    try:
        yield caught
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
