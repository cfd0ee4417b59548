"""Scale benchmark of the analysis: a synthetic run of 1,000,000 records (streams with 16
chunk times each, several keys and tiers, 429s) is written as a run directory, then
analysed in a fresh process (every metric, verdict, chart and the report) while its time
and peak RSS are measured. Target: <= 10 s and <= 2 GB on a 2-core machine.

    .venv/bin/python benchmarks/analysis_scale.py                 # generate + analyse
    .venv/bin/python benchmarks/analysis_scale.py --records 200000 --dir /tmp/lk-bench
    .venv/bin/python benchmarks/analysis_scale.py --reuse         # analyse an existing run

Generation time is reported apart from analysis time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (key label, tier, share of all records)
KEYS = [(f"paid-{i}", "paid", 0.16) for i in range(6)] + [
    ("free-0", "free", 0.02),
    ("free-1", "free", 0.02),
]
TIERS = {
    "paid": dict(requests=10_000, window_s=60.0, concurrency=100),
    "free": dict(requests=60, window_s=60.0, concurrency=3),
}


def _generate_key(job: tuple[str, str, int, float, str, int]) -> str:
    import numpy as np

    from tests.analysis.synthetic import Limiter, Timing, key_run_rows, poisson_sends, simulate_key

    label, tier, n, duration, out_dir, seed = job
    rng = np.random.default_rng(seed)
    t = TIERS[tier]
    kind = "sliding_log" if tier == "paid" else "fixed_window"
    lim = Limiter(
        kind, requests=t["requests"], window_s=t["window_s"], concurrency=t["concurrency"]
    )
    timing = Timing(
        upload_s=0.001, download_s=0.001, ttft_s=0.08, itl_s=0.012, tokens=16, jitter=0.6
    )
    kr = simulate_key(label, tier, lim, poisson_sends(n / duration, duration, rng), timing, rng)
    kr.scheduled = kr.send - rng.uniform(0, 0.002, kr.send.size)
    path = Path(out_dir) / f"records-{label}.jsonl"
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as fh:
        batch = []
        for row in key_run_rows(kr, "bench"):
            batch.append(dumps(row))
            if len(batch) >= 20_000:
                fh.write("\n".join(batch) + "\n")
                batch = []
        if batch:
            fh.write("\n".join(batch) + "\n")
    return label


def generate(run_dir: Path, records: int, duration: float) -> float:
    from tests.analysis.synthetic import Limiter, run_meta

    run_dir.mkdir(parents=True, exist_ok=True)
    for old in run_dir.glob("records-*.jsonl"):
        old.unlink()
    t0 = time.perf_counter()
    jobs = [
        (label, tier, int(records * share), duration, str(run_dir), i)
        for i, (label, tier, share) in enumerate(KEYS)
    ]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_generate_key, jobs))
    tiers = {name: Limiter("sliding_log", **t) for name, t in TIERS.items()}
    meta = run_meta(
        tiers,
        [(k, t) for k, t, _ in KEYS],
        run_id="bench",
        duration_s=duration,
        warmup_s=5.0,
        slo={"ttft_ms": {"p99": 800}, "error_rate": 0.05},
        goodput={"ttft_ms": 500, "tpot_ms": 50},
    )
    meta.write(run_dir)
    return time.perf_counter() - t0


def analyse_child(run_dir: str) -> None:
    """Runs in a fresh interpreter so that RSS and imports are the analysis' own."""
    t0 = time.perf_counter()
    from loadkit.analysis.summary import analyze_run

    t_import = time.perf_counter() - t0
    timings: dict[str, float] = {}
    summary = analyze_run(run_dir, charts=True, timings=timings)
    total = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(
        json.dumps(
            {
                "import_s": t_import,
                **timings,
                "wall_s": total,
                "peak_rss_mb": rss_mb,
                "records": summary["run"]["records"],
                "verdict": summary["verdict"],
                "charts": len(summary["charts"]),
            }
        )
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--duration", type=float, default=600.0, help="simulated run length (s)")
    p.add_argument("--dir", default="/tmp/loadkit-analysis-scale", help="run directory")
    p.add_argument("--reuse", action="store_true", help="analyse the existing run directory")
    p.add_argument(
        "--parquet",
        action="store_true",
        help="also write records.parquet (analysis then reads it instead of JSONL)",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        analyse_child(args.dir)
        return 0
    run_dir = Path(args.dir)
    if not args.reuse:
        gen_s = generate(run_dir, args.records, args.duration)
        size = sum(f.stat().st_size for f in run_dir.glob("records-*.jsonl"))
        print(f"generated {args.records:,} records ({size / 1e6:,.0f} MB JSONL) in {gen_s:.1f} s")
    parquet = run_dir / "records.parquet"
    if args.parquet:
        import pyarrow.parquet as pq

        from loadkit.analysis.columns import read_table

        t0 = time.perf_counter()
        pq.write_table(read_table(run_dir), parquet)
        print(
            f"wrote records.parquet ({parquet.stat().st_size / 1e6:,.0f} MB) in "
            f"{time.perf_counter() - t0:.1f} s (not part of the analysis time)"
        )
    elif parquet.exists():
        parquet.unlink()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--dir", str(run_dir)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"command: {' '.join(cmd)}")
    print(f"records analysed: {r['records']:,}   verdict: {r['verdict']}   charts: {r['charts']}")
    print(f"  imports           {r['import_s']:6.2f} s")
    source = "parquet" if args.parquet else "JSONL"
    print(f"  read {source:<12} {r['read_s']:6.2f} s")
    print(f"  metrics+verdicts  {r['analyse_s']:6.2f} s")
    print(f"  charts+report     {r['charts_report_s']:6.2f} s")
    print(f"  summary.json      {r['write_summary_s']:6.2f} s")
    print(f"  total (wall)      {r['wall_s']:6.2f} s   (target <= 10 s)")
    print(f"  peak RSS          {r['peak_rss_mb']:6.0f} MB (target <= 2048 MB)")
    ok = r["wall_s"] <= 10.0 and r["peak_rss_mb"] <= 2048
    print("MEETS TARGET" if ok else "MISSES TARGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
