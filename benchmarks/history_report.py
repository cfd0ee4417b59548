"""Scale benchmark of the nightly history: 1,000 runs in the store (each with every figure
of a real summary: ~110 metric rows, limit verdicts, an SLO), then ``loadkit history
report`` in a fresh process, as a user runs it (imports, queries, change point detection
on every key metric, the charts and the page). Target: <= 5 s on a 2-core machine.
``history check`` and ``history show`` are timed the same way.

    .venv/bin/python benchmarks/history_report.py                      # SQLite, 1,000 runs
    .venv/bin/python benchmarks/history_report.py --runs 3000
    .venv/bin/python benchmarks/history_report.py --db postgresql://user@host/db  # empty DB
    .venv/bin/python benchmarks/history_report.py --example docs/img/history_ttft.png

The store is filled in one transaction per 100 runs (reported apart); the synthetic
nights have a +25 % TTFT step at 70 % of the history and a -20 % throughput step at 85 %.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fill(db: str, runs: int) -> float:
    import numpy as np

    from loadkit.history.ingest import ingest
    from loadkit.history.store import open_store
    from tests.history.builders import DAY, T0, Night, summary

    rng = np.random.default_rng(42)
    t0 = time.perf_counter()
    with open_store(db) as store:
        batch = []
        for i in range(runs):
            step = 1.25 if i >= 0.7 * runs else 1.0
            rps = 30.0 * (0.8 if i >= 0.85 * runs else 1.0)
            night = Night(
                ttft=100.0 * step * (1 + 0.03 * rng.standard_normal()),
                itl=20.0 * (1 + 0.02 * rng.standard_normal()),
                e2e=400.0 * (1 + 0.03 * rng.standard_normal()),
                rps=rps * (1 + 0.02 * rng.standard_normal()),
                error_rate=float(max(0.0, 0.002 * rng.standard_normal())),
            )
            started = T0 + i * DAY / 4  # four runs a day
            meta = {"started_unix": started, "scenario": {"name": "bench", "rate": 1}}
            batch.append(ingest(summary(night, f"bench-{i:05d}", started, "bench"), meta))
            if len(batch) == 100:
                store.add_many(batch)
                batch = []
        if batch:
            store.add_many(batch)
    return time.perf_counter() - t0


def example(png: Path) -> None:
    """The README's chart: 30 nights of TTFT, +25 % from night 21 (a commit that made
    prefill slower), each percentile with its own noise."""
    import shutil

    import numpy as np

    from loadkit.history.ingest import ingest
    from loadkit.history.store import open_store
    from tests.history.builders import DAY, T0, Night, summary

    rng = np.random.default_rng(7)
    work = Path(tempfile.mkdtemp(prefix="lk-history-example-"))
    db = str(work / "history.db")
    items = []
    for i in range(30):
        step = 1.25 if i >= 20 else 1.0
        data = summary(
            Night(ttft=180.0 * step), f"nightly-{i:02d}", T0 + i * DAY, "free-tier-check"
        )
        for stat, level, cv in (("p50", 180.0, 0.03), ("p90", 260.0, 0.04), ("p99", 390.0, 0.06)):
            data["latency"]["ttft_ms"]["overall"][stat] = (
                level * step * (1 + cv * rng.standard_normal())
            )
        scenario = {"name": "free-tier-check", "target": {"base_url": "https://staging.example/v1"}}
        meta = {"started_unix": T0 + i * DAY, "scenario": scenario}
        items.append(ingest(data, meta))
    with open_store(db) as store:
        store.add_many(items)
    out = work / "report"
    subprocess.run(
        [sys.executable, "-m", "loadkit", "history", "report", "--db", db, "--out", str(out)],
        check=True,
        cwd=ROOT,
    )
    shutil.copy(out / "free-tier-check-ttft.png", png)
    print(f"wrote {png}")


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return elapsed, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--db", help="an empty database URL (default: a new SQLite file)")
    ap.add_argument("--repeat", type=int, default=3, help="time each command this often")
    ap.add_argument("--example", metavar="PNG", help="only write the README's example chart")
    args = ap.parse_args()
    if args.example:
        example(Path(args.example))
        return
    work = Path(tempfile.mkdtemp(prefix="lk-history-bench-"))
    db = args.db or str(work / "history.db")
    print(f"filling {db if not args.db else '(given database)'} with {args.runs} runs ...")
    print(f"  fill: {fill(db, args.runs):.1f} s")
    if not args.db:
        print(f"  size: {os.path.getsize(db) / 1e6:.1f} MB")
    base = [sys.executable, "-m", "loadkit", "history"]
    commands = {
        "report": [*base, "report", "--db", db, "--out", str(work / "report")],
        "check": [*base, "check", "--db", db],
        "show": [*base, "show", "--db", db],
    }
    for name, cmd in commands.items():
        times = []
        for _ in range(args.repeat):
            t, last = timed(cmd)
            times.append(t)
        median = sorted(times)[len(times) // 2]
        print(f"history {name}: best {min(times):.2f} s, median {median:.2f} s  ({last})")
    print(f"report: {work / 'report' / 'history.html'}")


if __name__ == "__main__":
    main()
