"""Suite-wide setup, and the built-in scenario's asyncio run that several files read."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# A shell that starts a job in the background (a CI script, `cmd &`) leaves SIGINT
# ignored, and an ignored signal stays ignored across exec: the tests that press Ctrl-C
# on a loadkit or Locust process they start would then test nothing. A handled signal is
# reset to the default on exec, so the processes the tests start get a working SIGINT.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Long enough for every free-tier probe of the built-in scenario to act: free-1's burst of
# 70 starts at 2 s and is all sent by 4.7 s even on a loaded 2-core machine.
DEFAULT_RUN_S = "8"


@dataclass(frozen=True)
class DefaultRun:
    """``loadkit run`` with no scenario (the built-in one on the embedded server): the
    finished process and its run folder."""

    proc: subprocess.CompletedProcess[str]
    out: Path
    history_db: Path | None = None


def run_default(tmp: Path, engine: str, *options: str, history: bool = False) -> DefaultRun:
    out = tmp / "run"
    db = tmp / "history.db" if history else None
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadkit",
            "run",
            "--duration",
            DEFAULT_RUN_S,
            "--engine",
            engine,
            "--out",
            str(out),
            *options,
            *(("--history", str(db)) if db else ()),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=240,
    )
    return DefaultRun(proc, out, db)


@pytest.fixture(scope="session")
def default_async_run(tmp_path_factory: pytest.TempPathFactory) -> DefaultRun:
    """The built-in scenario by the asyncio engine, analysed without charts and added to a
    history database: one run (seconds of a shared machine) that tests/test_default_run.py
    and tests/history/test_cli.py each read for what they test."""
    return run_default(
        tmp_path_factory.mktemp("default-async"), "async", "--no-charts", history=True
    )
