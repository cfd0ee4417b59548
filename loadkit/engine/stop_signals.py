"""The signals that stop a run (SIGINT, SIGTERM, SIGHUP: what an operator, a CI runner,
``timeout`` or Kubernetes sends), handled on an asyncio loop while a run lasts, and the
process's own handlers put back afterwards."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)

Installed = list[tuple[signal.Signals, Any]]


def signal_label(sig: signal.Signals) -> str:
    """How a stop reason names the signal: ``Ctrl-C`` for SIGINT, else its name."""
    return "Ctrl-C" if sig == signal.SIGINT else sig.name


def install(
    loop: asyncio.AbstractEventLoop, handler: Callable[[signal.Signals], None]
) -> Installed:
    """``handler(sig)`` on each stop signal; returns what ``remove`` restores (each signal
    with the handler it replaced). A signal that cannot be handled here (not the main
    thread, or no such signal on this platform) is left alone."""
    installed: Installed = []
    for sig in STOP_SIGNALS:
        previous = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, handler, sig)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        installed.append((sig, previous))
    return installed


def remove(loop: asyncio.AbstractEventLoop, installed: Installed) -> None:
    for sig, previous in installed:
        # remove_signal_handler resets to the default: put back what was there before (a
        # caller's own handler, or asyncio.run's for Ctrl-C).
        if loop.remove_signal_handler(sig) and previous is not None:
            signal.signal(sig, previous)
