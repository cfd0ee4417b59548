"""One worker process of ``--workers N`` driven by hand through its pipes, as ``loadkit
run`` drives it: it starts only on ``go``, at the t=0 it is given; an ``abort`` before
``go`` sends nothing; and when its control pipe closes (its parent is gone) it stops at
once and exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from loadkit.engine import worker_link as link
from loadkit.records import iter_records
from loadkit.runmeta import Origin
from loadkit.scenario import scenario_from_dict, scenario_to_dict
from loadkit.server.testing import ServerThread

pytestmark = pytest.mark.slow


class Worker:
    def __init__(self) -> None:
        ctl_r, self.control = os.pipe()
        self.status, st_w = os.pipe()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadkit.engine.worker",
                "--control-fd",
                str(ctl_r),
                "--status-fd",
                str(st_w),
            ],  # fmt: skip
            pass_fds=(ctl_r, st_w),
        )
        os.close(ctl_r)
        os.close(st_w)
        self.reader = link.LineReader()

    def send(self, kind: str, **fields: Any) -> None:
        assert link.send(self.control, kind, **fields)

    def next(self) -> dict[str, Any] | None:
        return link.read_message(self.status, self.reader)

    def close(self) -> None:
        for fd in (self.control, self.status):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def job(srv: ServerThread, out: Path) -> dict[str, Any]:
    s = scenario_from_dict(
        {
            "name": "one-worker",
            "run": {"duration_s": 30, "drain_s": 5},
            "tiers": {"free": {"requests": 600, "window_s": 60, "concurrency": 50}},
            "load": [{"tier": "free", "pattern": "constant", "rate_per_s": 20, "max_tokens": 200}],
        }
    )
    label = srv.labels("free")[0]
    return {
        "worker": "async-1",
        "run_id": "r",
        "out": str(out),
        "base_url": srv.base_url,
        "scenario": scenario_to_dict(s),
        "keys": [{"label": label, "tier": "free", "key": srv.key(label)}],
        "pairs": [[3, label, 0]],
    }


def test_abort_before_go_sends_nothing(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    with ServerThread(truth_path=truth) as srv:
        w = Worker()
        try:
            w.send(link.JOB, **job(srv, tmp_path))
            assert w.next() == {"kind": "ready"}
            w.send(link.ABORT)
            assert w.next() is None  # no result: there was no run
            assert w.proc.wait(timeout=30) == 0
        finally:
            w.close()
        srv.wait_idle()
    assert not truth.exists() or truth.read_text() == ""
    assert iter_records(tmp_path) == []


def test_it_starts_at_the_given_t0_and_stops_when_its_parent_is_gone(tmp_path: Path) -> None:
    with ServerThread() as srv:
        w = Worker()
        try:
            w.send(link.JOB, **job(srv, tmp_path))
            assert w.next() == {"kind": "ready"}
            origin = Origin.now(0.5)
            w.send(link.GO, origin=origin.to_dict())
            deadline = time.monotonic() + 30
            while True:  # progress reports until it has sent a few requests
                msg = w.next()
                assert msg is not None and msg["kind"] == "progress"
                if msg["counts"]["sent"] >= 5:
                    break
                assert time.monotonic() < deadline
            os.close(w.control)  # the parent is gone
            t0 = time.monotonic()
            assert w.proc.wait(timeout=10) == 0
            assert time.monotonic() - t0 < 5
        finally:
            w.close()
    recs = iter_records(tmp_path)
    assert recs and {r.worker for r in recs} == {"async-1"}
    # The schedule counts from the t=0 it was given: none before it, and the first
    # arrival of a 20/s constant rate within its first gap.
    first = min(r.scheduled_s for r in recs if r.scheduled_s is not None)
    assert 0.0 <= first < 0.05
    assert all(r.send_s >= 0.0 for r in recs)
    assert {r.status for r in recs} <= {0, 200, 429}
    assert any(r.status == 200 for r in recs)
    # Stopped at once, no drain: what was open is recorded as cancelled.
    assert any(r.transport_error == "cancelled" for r in recs)
    lines = (tmp_path / "records-async-1.jsonl").read_text().splitlines()
    assert all(json.loads(x)["run_id"] == "r" for x in lines)
