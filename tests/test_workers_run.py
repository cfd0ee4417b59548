"""``loadkit run --engine async --workers N`` end to end: one run from several processes
(one run.json, one analysis, every arrival accounted for, the same verdicts as one
process), a worker that dies makes the run incomplete, and no process outlives the run
(SIGTERM drains every worker; SIGKILL of the parent ends them too)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from loadkit.analysis.summary import analyze_run
from loadkit.records import iter_records
from loadkit.run import run_scenario
from loadkit.runmeta import read_run_meta
from loadkit.scenario import Scenario, scenario_from_dict
from loadkit.server.testing import ServerThread

pytestmark = pytest.mark.slow

WORKER_MODULE = "loadkit.engine.worker"


def verdicts(s: dict[str, Any]) -> dict[tuple[str, str], tuple[str, str]]:
    return {(e["key"], e["kind"]): (e["enforced"], e["honoured"]) for e in s["limits"]}


def deterministic(tmp_path: Path) -> Scenario:
    """Verdicts that do not depend on timing: every key offers more than the 5 requests a
    2 s window allows, each answered at once, and no arrival comes within 0.1 s of a
    window's edge (a steady gap that does not divide the window, bursts further apart than
    it), so the request limit is provoked and held clear of the timing uncertainty,
    and the concurrency limit (50) is never reached: requests held, concurrency
    inconclusive, whatever the machine's load."""
    cfg = tmp_path / "server.json"
    tier = {"requests": 5, "window_s": 2.0, "concurrency": 50}
    cfg.write_text(json.dumps({"tiers": {"free": {**tier, "keys": 4}}}))
    fast = {"mix": {"chat": 1}, "model": "loadkit-instant", "max_tokens": 4}

    def steady(rate: float, keys: list[int]) -> dict[str, Any]:
        return {"tier": "free", "pattern": "constant", "rate_per_s": rate, "keys": keys, **fast}

    bursts = {"tier": "free", "pattern": "burst", "burst_size": 10, "burst_period_s": 2.5}
    return scenario_from_dict(
        {
            "name": "workers-deterministic",
            "target": {"base_url": "embedded", "server_config": str(cfg)},
            "run": {"duration_s": 7, "drain_s": 5},
            "tiers": {"free": tier},
            "load": [
                steady(2.7, [1, 2]),  # a 0.37 s gap: 5.4 per window
                steady(3.7, [3]),  # a 0.27 s gap: 7.4 per window
                {**bursts, "keys": [4], **fast},
            ],
        }
    )


def test_two_workers_make_one_run_with_the_verdicts_of_one(tmp_path: Path) -> None:
    scenario = deterministic(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    run_scenario(scenario, one, engine="async", workers=1, progress=False)
    meta = run_scenario(scenario, two, engine="async", workers=2, progress=False)

    # One run: one run.json naming both workers, a records file per worker.
    assert [w.worker for w in meta.workers] == ["async-0", "async-1"]
    assert sorted(p.name for p in two.glob("records-*.jsonl")) == [
        "records-async-0.jsonl",
        "records-async-1.jsonl",
    ]
    assert read_run_meta(two).run_id == "two"
    recs = iter_records(two)
    assert (
        len(recs) == sum(w.sent or 0 for w in meta.workers) == sum(w.records for w in meta.workers)
    )
    # Each key on exactly one worker, two keys each.
    owner: dict[str, set[str]] = {}
    for r in recs:
        owner.setdefault(r.key, set()).add(r.worker)
    assert all(len(ws) == 1 for ws in owner.values()), owner
    assert Counter(next(iter(ws)) for ws in owner.values()) == {"async-0": 2, "async-1": 2}

    # Every scheduled arrival, at the very times one process scheduled it: a key's
    # schedule does not depend on which process drives it.
    def schedule(run: Path) -> Counter[tuple[str, float]]:
        return Counter(
            (r.key, r.scheduled_s)
            for r in iter_records(run)
            if r.attempt == 1 and r.scheduled_s is not None
        )

    assert schedule(two) == schedule(one)
    assert len({k for k, _ in schedule(two)}) == 4 and sum(schedule(two).values()) > 70

    s1, s2 = analyze_run(one, charts=False), analyze_run(two, charts=False)
    assert s2["completeness"]["complete"], s2["completeness"]["reasons"]
    v1, v2 = verdicts(s1), verdicts(s2)
    assert v2 == v1
    assert v2 == {
        **{(f"free-{i}", "requests"): ("held", "held") for i in range(1, 5)},
        **{(f"free-{i}", "concurrency"): ("inconclusive", "inconclusive") for i in range(1, 5)},
    }
    assert s2["verdict"] == s1["verdict"] == "pass"


# -- processes ---------------------------------------------------------------------------


def scenario_file(tmp_path: Path, base_url: str, max_tokens: int = 30) -> Path:
    p = tmp_path / "s.json"
    p.write_text(
        json.dumps(
            {
                "name": "workers",
                "target": {"base_url": base_url},
                "run": {"duration_s": 60, "drain_s": 5},
                "tiers": {"free": {"requests": 600, "concurrency": 3, "keys_env": "LK_TEST_KEYS"}},
                "load": [
                    {
                        "tier": "free",
                        "pattern": "constant",
                        "rate_per_s": 10,
                        "mix": {"chat_stream": 1},
                        "max_tokens": max_tokens,
                    }
                ],
            }
        )
    )
    return p


def start_run(
    tmp_path: Path, srv: ServerThread, max_tokens: int = 30
) -> tuple[subprocess.Popen[str], Path]:
    out = tmp_path / "run"
    keys = ",".join(srv.key(label) for label in srv.labels("free")[:2])
    spec = scenario_file(tmp_path, srv.base_url, max_tokens)
    cmd = [
        sys.executable, "-m", "loadkit", "run", str(spec),
        "--engine", "async", "--workers", "2", "--out", str(out), "--no-preflight", "--no-charts",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "LK_TEST_KEYS": keys},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, out


def wait_for_records_from_each(out: Path, files: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while True:
        counts = [f.read_text().count("\n") for f in out.glob("records-async-*.jsonl")]
        if len(counts) == files and min(counts) >= 5:
            return
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"records did not appear: {counts}"
        time.sleep(0.1)


def workers_of(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True) if WORKER_MODULE in p.cmdline()]


def test_a_worker_that_dies_makes_the_run_incomplete_and_names_it(tmp_path: Path) -> None:
    with ServerThread() as srv:
        proc, out = start_run(tmp_path, srv)
        wait_for_records_from_each(out, 2, proc)
        ws = workers_of(proc.pid)
        assert len(ws) == 2
        victim = ws[0]
        victim.kill()
        _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 3, stderr  # incomplete, as the README says
    meta = read_run_meta(out)
    dead = [w for w in meta.workers if w.status == "died"]
    assert len(dead) == 1 and dead[0].detail == "killed by SIGKILL"
    assert f"worker {dead[0].worker} (pid {victim.pid}) died (killed by SIGKILL)" in stderr
    assert meta.stop_reason == f"worker {dead[0].worker} died (killed by SIGKILL)"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "incomplete"
    assert any(dead[0].worker in r and "died" in r for r in summary["completeness"]["reasons"])
    # the survivor stopped with the run (it did not load on for the full minute)
    assert meta.duration_s is not None and meta.duration_s < 50


def test_sigterm_drains_every_worker_and_leaves_no_process_nor_key_in_sight(tmp_path: Path) -> None:
    with ServerThread() as srv:
        proc, out = start_run(tmp_path, srv)
        wait_for_records_from_each(out, 2, proc)
        children = psutil.Process(proc.pid).children(recursive=True)
        ws = [c for c in children if WORKER_MODULE in c.cmdline()]
        assert len(ws) == 2
        # The keys reached the workers through their pipes: never on a command line nor
        # in an environment another user's `ps` can read.
        secrets = [srv.key(label) for label in srv.labels("free")[:2]]
        for w in ws:
            seen = " ".join(w.cmdline()) + " " + " ".join(w.environ().values())
            assert not any(s in seen for s in secrets)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 3, stderr  # interrupted: incomplete
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"left behind: {[p.cmdline() for p in alive]}"
    meta = read_run_meta(out)
    assert meta.interrupted and meta.stop_reason == "interrupted (SIGTERM)"
    assert [w.status for w in meta.workers] == ["interrupted", "interrupted"]
    recs = iter_records(out)
    # every arrival has its record, and none was cut: the drain let open streams finish
    assert len(recs) == sum(w.sent or 0 for w in meta.workers)
    assert not [r for r in recs if r.transport_error == "cancelled"]
    assert "INCOMPLETE" in stdout


def test_a_second_sigterm_cuts_every_drain_short(tmp_path: Path) -> None:
    with ServerThread() as srv:
        # Streams of 400 tokens (seconds each): many are open at any moment.
        proc, out = start_run(tmp_path, srv, max_tokens=400)
        wait_for_records_from_each(out, 2, proc)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # two signals, as a user pressing Ctrl-C twice
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3, stderr
    meta = read_run_meta(out)
    assert meta.stop_reason == "interrupted (SIGTERM); drain cut short"
    recs = iter_records(out)
    assert len(recs) == sum(w.sent or 0 for w in meta.workers)
    cancelled = {r.worker for r in recs if r.transport_error == "cancelled"}
    assert cancelled == {"async-0", "async-1"}, "every worker's drain was cut"


def test_a_killed_parent_leaves_no_worker_and_no_load(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    with ServerThread(truth_path=truth) as srv:
        proc, out = start_run(tmp_path, srv)
        wait_for_records_from_each(out, 2, proc)
        ws = workers_of(proc.pid)
        assert len(ws) == 2
        proc.kill()
        proc.communicate()
        _, alive = psutil.wait_procs(ws, timeout=10)
        assert not alive, "a worker outlived its killed parent"
        srv.wait_idle()
        before = truth.read_text().count("\n")
        time.sleep(1.0)  # a worker still sending would show here
        srv.wait_idle()
        assert truth.read_text().count("\n") == before
