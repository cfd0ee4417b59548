"""SIGTERM (CI runners, ``timeout``, Kubernetes) and SIGHUP (a closed terminal) turned into
Ctrl-C for the length of a command, so that what a command cleans up on Ctrl-C (a run's
drain and records, an analysis' unfinished column cache) is cleaned up on those too."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt inside the block, as SIGINT does; the
    handlers before it are put back after. Outside the main thread (tests) signals stay
    as they are."""
    sigs = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    try:
        old = {sig: signal.signal(sig, signal.default_int_handler) for sig in sigs}
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
