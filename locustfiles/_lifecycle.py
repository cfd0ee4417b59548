"""How a Locust process of a loadkit run ends when the run around it ends: signals, the
death of ``loadkit run`` (its parent), and a bound on how long a process may take to go.

``loadkit run --engine locust`` starts the Locust master with ``--loadkit-parent-pid``. Every
process of the run (the master, and the workers ``--processes`` forks from it) then watches
that pid: when ``loadkit run`` is gone — SIGKILL included — the process stops sending at
once and exits, so no load outlives the run that asked for it. The watch is a greenlet
that looks every ``WATCH_S`` (it works on Linux and macOS); on Linux the kernel's
parent-death signal (``prctl(PR_SET_PDEATHSIG)``) also tells the master at once and ends a
forked worker whose master died. SIGHUP means what SIGTERM means to Locust (a graceful
stop). Imports gevent, never Locust.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import gevent

from loadkit.locustfiles._agent import Agent
from loadkit.locustfiles._coordinator import pid_alive
from loadkit.locustfiles._lead import Lead

log = logging.getLogger("loadkit")

WATCH_S = 0.25  # how often a process looks whether loadkit run is still there
EXIT_BOUND_S = 5.0  # after loadkit run is gone, a process that has not exited is ended
STOP_NOW = signal.SIGUSR1  # to the master: stop at once (open requests cancelled, recorded)
# From the kernel to the master: loadkit run is ending. Its own signal, not STOP_NOW: it
# comes when the thread that started the master ends, while the process may still look
# alive for a moment.
PARENT_GONE = signal.SIGUSR2

_PR_SET_PDEATHSIG = 1


def parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent ends (Linux only;
    False elsewhere or when refused)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def run_alive(run_pid: int, parent: int) -> bool:
    """Whether ``loadkit run`` (``run_pid``) and this process's own parent at start-up
    (``parent``: loadkit run for the master, the master for a forked worker) are both still
    there. A parent that ended leaves this process to another parent at once, even while
    it is a zombie nobody reaped, so the first test sees a SIGKILL on any system."""
    if os.getppid() != parent:
        return False
    return run_pid == parent or pid_alive(run_pid)


def watch_run(
    run_pid: int, on_gone: Callable[[], None], period: float = WATCH_S
) -> gevent.Greenlet:
    """Call ``on_gone`` (once) when ``loadkit run`` ends before this process does."""
    parent = os.getppid()

    def watch() -> None:
        while run_alive(run_pid, parent):
            gevent.sleep(period)
        log.warning("loadkit: loadkit run (pid %d) has ended: stopping this process", run_pid)
        on_gone()

    return gevent.spawn(watch)


def exit_within(seconds: float) -> None:
    """Make sure this process ends within ``seconds`` whatever it is doing: the kernel ends
    it (SIGALRM, default action) unless it exits first. Used once nobody is left to wait
    for its records."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, round(seconds)))


def on_signal(sig: int, handler: Callable[[], None]) -> None:
    """Run ``handler`` in a new greenlet when this process receives ``sig``."""
    gevent.signal_handler(sig, handler)


def hangup_is_terminate() -> None:
    """SIGHUP (a closed terminal, a supervisor's reload) stops the run as SIGTERM does:
    gracefully, every record kept. Locust handles SIGTERM only."""
    on_signal(signal.SIGHUP, lambda: os.kill(os.getpid(), signal.SIGTERM))


def interrupt_is_quiet(again: Callable[[], None] | None) -> None:
    """Ctrl-C (SIGINT) ends the run as Locust's own Ctrl-C does — open requests get the
    grace, every record is written, Locust's summary and ``--html`` report — without the
    traceback gevent prints when the interrupt lands in its hub: the KeyboardInterrupt is
    handed to the main greenlet, where Locust waits for it. ``again``: what a second
    Ctrl-C does (the master: stop at once). A process started with SIGINT ignored (a
    background job of a script) keeps ignoring it."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        return
    hub = gevent.get_hub()
    seen: list[bool] = []

    def on_interrupt() -> None:
        if seen:
            if again is not None:
                again()
            return
        seen.append(True)
        log.warning("loadkit: interrupted: stopping (Ctrl-C again to stop at once)")
        hub.loop.run_callback(hub.parent.throw, KeyboardInterrupt)

    on_signal(signal.SIGINT, on_interrupt)


def end_with_the_run(
    lead: Lead | None, agent: Callable[[], Agent | None], options: Any, forked_worker: bool
) -> None:
    """Every process ends with the run: SIGHUP is a graceful stop as SIGTERM is, Ctrl-C
    one without a traceback; the master (``lead``) stops at once on STOP_NOW (a second
    interrupt of ``loadkit run``) or a second Ctrl-C; and when ``loadkit run`` itself is
    gone, every process stops sending at once and exits."""
    hangup_is_terminate()
    interrupt_is_quiet(
        (lambda: lead.stop_now("stopped at once (interrupted again)")) if lead else None
    )
    run_pid = int(getattr(options, "loadkit_parent_pid", 0) or 0)
    told: list[bool] = []

    def gone() -> None:
        if told:  # the kernel's signal and the watch: either may tell first
            return
        told.append(True)
        exit_within(EXIT_BOUND_S)
        a = agent()
        if lead is not None:
            lead.stop_now(f"loadkit run (pid {run_pid}) ended")
            # Every record and the run's end are written: nobody is left to wait for
            # Locust's own shutdown (its summary, its wait for the workers), so end now.
            # Forked workers end with this process (their parent-death signal, or their
            # own watch).
            lead.written.wait(timeout=EXIT_BOUND_S - 1)
            os._exit(1)
        elif a is not None:
            a.drain(0.0)

    if lead is not None:
        on_signal(STOP_NOW, lambda: lead.stop_now("stopped at once (interrupted again)"))
        if run_pid and os.getppid() == run_pid:
            # Linux: the kernel says at once when loadkit run ends; the watch below is
            # the portable way, and catches the moment before this was set.
            on_signal(PARENT_GONE, gone)
            parent_death_signal(PARENT_GONE)
    elif forked_worker and getattr(options, "processes", None):
        # A worker forked by --processes: nothing is left to take its records when its
        # master is gone.
        parent_death_signal(signal.SIGKILL)
    if run_pid:
        watch_run(run_pid, gone)
