"""One worker process of ``loadkit run --engine async --workers N``: the asyncio engine on
its share of the run's keys, writing its own records file into the run directory.

Started by ``loadkit.engine.workers`` as ``python -m loadkit.engine.worker --control-fd R
--status-fd W``; everything else, keys included, comes through the control pipe
(``loadkit.engine.worker_link``). It sends ``ready`` once it can start at once, sends
nothing until ``go`` names the run's shared t=0, then runs its share and reports.
Stop signals sent to it directly act as they do on a single-process run (stop, drain; a
second one cuts the drain). When the control pipe closes without an ``abort`` (the parent
is gone, SIGKILL included) it stops sending at once and exits within ``EXIT_BOUND_S``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from loadkit.engine import stop_signals
from loadkit.engine import worker_link as link
from loadkit.runmeta import Clock, Origin

if TYPE_CHECKING:
    from loadkit.engine.async_engine import AsyncEngine, EngineResult

EXIT_BOUND_S = 5  # once the parent is gone, nobody waits for this process: end it soon
PROGRESS_S = 0.5  # how often the parent hears the counters (its progress line, in flight)
PARENT_GONE = "interrupted (loadkit run ended)"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadkit.engine.worker")
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--status-fd", type=int, required=True)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    # A stop signal before the engine's own handling must not kill the worker (its records
    # and report would be lost): it is kept and handed to the engine when it starts.
    early: list[signal.Signals] = []

    def keep(sig: int, _frame: FrameType | None) -> None:
        early.append(signal.Signals(sig))

    for sig in stop_signals.STOP_SIGNALS:
        signal.signal(sig, keep)
    args = _parse(argv)
    reader = link.LineReader()
    job = link.read_message(args.control_fd, reader)
    if job is None or job.get("kind") != link.JOB:
        return 0  # the parent went away before the run: nothing to do
    result = _run_job(job, args.control_fd, args.status_fd, reader, early)
    if result is not None:
        link.send(args.status_fd, link.RESULT, result=result)
    return 0


def _run_job(
    job: dict[str, Any],
    control: int,
    status: int,
    reader: link.LineReader,
    early: list[signal.Signals],
) -> dict[str, Any] | None:
    from loadkit.engine.async_engine import AsyncEngine
    from loadkit.records import record_writer
    from loadkit.scenario import Key
    from loadkit.scenario.parse import scenario_from_dict

    scenario = scenario_from_dict(job["scenario"], source=f"<worker {job['worker']}>")
    keys = [Key(k["label"], k["tier"], k["key"]) for k in job["keys"]]
    by_label = {k.label: k for k in keys}
    pairs = [(int(i), by_label[label], scenario.load[int(n)]) for i, label, n in job["pairs"]]
    worker = str(job["worker"])
    clock = Clock()  # re-anchored on the run's t=0 by ``go``
    with record_writer(
        Path(job["out"]) / f"records-{worker}.jsonl", scenario.parquet_twins
    ) as writer:
        engine = AsyncEngine(
            scenario,
            keys,
            str(job["base_url"]),
            writer,
            clock,
            str(job["run_id"]),
            worker=worker,
            progress=False,
            api=scenario.target.target_api(os.environ),
            handle_signals=False,
            pairs=pairs,
        )
        # As run_engine does: records and traces are acyclic, fewer collections keep GC
        # pauses out of the timings.
        gc.freeze()
        gc.set_threshold(50_000, 20, 50)
        res = asyncio.run(_serve(engine, clock, control, status, reader, early))
        if res is None:
            return None
        return {
            "records": writer.count,
            "sent": res.sent,
            "not_sent": res.not_sent,
            "in_flight": res.in_flight,
            "interrupted": res.interrupted,
            "drain_cut": res.drain_cut,
            "stop_reason": res.stop_reason,
            "engine_errors": dict(res.engine_errors),
        }


async def _serve(
    engine: AsyncEngine,
    clock: Clock,
    control: int,
    status: int,
    reader: link.LineReader,
    early: list[signal.Signals],
) -> EngineResult | None:
    """Wait for ``go`` (None: aborted), then run the engine while following the parent's
    messages and this process's signals."""
    loop = asyncio.get_running_loop()
    go: asyncio.Future[bool] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        engine.interrupt(f"interrupted ({stop_signals.signal_label(sig)})")

    def parent_gone() -> None:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(EXIT_BOUND_S)
        if not go.done():
            go.set_result(False)
        engine.interrupt(PARENT_GONE, drain=False)

    def on_message(msg: dict[str, Any]) -> None:
        kind = msg.get("kind")
        if kind == link.GO:
            origin = Origin.from_dict(msg["origin"])
            run_clock = origin.local_clock()
            clock.mono_anchor_ns, clock.wall_anchor = (
                run_clock.mono_anchor_ns,
                run_clock.wall_anchor,
            )
            if not go.done():
                go.set_result(True)
        elif kind == link.ABORT:
            if not go.done():
                go.set_result(False)
        elif kind == link.INTERRUPT:
            engine.interrupt(str(msg.get("reason") or "interrupted"))
        elif kind == link.STOP:
            engine.stop(str(msg.get("reason") or "stopped"), hold=True)

    def on_readable() -> None:
        try:
            data = os.read(control, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(control)
            parent_gone()
            return
        for msg in reader.feed(data):
            on_message(msg)

    installed = stop_signals.install(loop, on_signal)
    os.set_blocking(control, False)
    loop.add_reader(control, on_readable)
    try:
        for sig in early:
            on_signal(sig)
        backlog, reader.backlog = reader.backlog, []
        for msg in backlog:  # sent right behind the job (an abort, say)
            on_message(msg)
        link.send(status, link.READY)
        if not await go:
            return None
        ticker = asyncio.ensure_future(_report_progress(engine, status))
        try:
            return await engine.run()
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
    finally:
        loop.remove_reader(control)
        stop_signals.remove(loop, installed)


async def _report_progress(engine: AsyncEngine, status: int) -> None:
    while True:
        await asyncio.sleep(PROGRESS_S)
        r = engine.result
        ok = sum(n for s, n in r.statuses.items() if 200 <= s < 300)
        limited = r.statuses.get(429, 0)
        done = engine.writer.count
        counts = link.Counts(
            sent=r.sent,
            done=done,
            in_flight=max(r.sent + r.not_sent - done, 0),
            ok=ok,
            limited=limited,
            other=sum(r.statuses.values()) - ok - limited,
        )
        link.send(status, link.PROGRESS, counts=counts.__dict__, stop_reason=r.stop_reason)


if __name__ == "__main__":
    sys.exit(main())
