"""Scale benchmark of the analysis (issue 16): a realistic synthetic run is written as a
run directory -- 90 % streams of 16 to 32 content chunks, a non-streamed key, ~4 % 429s
(two free-tier keys far over 60 a minute), 9 keys in 2 tiers, 3,000 records a second of
simulated run -- with the Parquet twins the record writer leaves beside its files
(``loadkit.parquet_twin``, told of the same writes; ``--no-twins``: none), then analysed twice,
each in a fresh process (every metric, verdict, chart and the report) while its wall time,
CPU time and peak RSS are measured: first from the twins (or the JSONL; it writes the column
cache, ``loadkit.analysis.column_cache``), then again from that cache. Targets (issue 16):
1 M records <= 5 s and <= 1 GB peak; 10 M records <= 60 s with peak memory independent of
the record count (<= 1.5 GB).

    .venv/bin/python benchmarks/analysis_scale.py                      # 1 M: generate + analyse
    .venv/bin/python benchmarks/analysis_scale.py --records 10000000 --dir /tmp/lk-10m
    .venv/bin/python benchmarks/analysis_scale.py --reuse --dir /tmp/loadkit-analysis-scale

The free keys' server counts in fixed windows against a promised sliding window, so the
run's verdict is fail (2 limits not enforced): the analysis has violations to find.

Generation (parallel by key and time slice) is timed apart: 1 M records, 921 MB of JSONL
and 195 MB of twins, in 10-17 s on the 2-core machine; the twins' conversion is reported as
the CPU it would cost a run (6.5-7.9 s per million records, on the writer's own thread).

Measured 2026-12-01 with the columns mapped from the cache, the ITL read in blocks
(``analysis/pooled.py``) and two malloc arenas, load average 1.2-2.6: 1 M first analysis
4.01-4.12 s, 447-451 MB anonymous, from the cache 3.34-3.36 s, 349 MB; 10 M first
31.1-32.8 s, 987-1,021 MB anonymous (3.8 GB RSS with the mapped cache), from the cache
25.0-27.2 s, 896-906 MB; inside a 1,536 MB memory cgroup (``--cgroup-mb 1536``, root: the
run's pages are evicted first, so its mapped cache is charged to the cgroup) 35.4 s and
29.3 s; 10 M from the JSONL (no twins) 59.1 s, 917 MB: both targets met. Peak anonymous
memory is the target's measure; the RSS counts file pages the kernel drops.

Measured 2026-12-01 with the twins (load average 0.2-1.1, two repetitions of ``--reuse``):
1 M first analysis 4.32-4.59 s wall, 5.0-5.5 s CPU, 927-954 MB (reading 0.87-0.92 s); again
from the cache 3.63-3.66 s, 872 MB; the same run without twins (``--no-twins``) 7.84 s
(reading 4.36 s). 10 M (9,993,790 records, ``--records 10000000``): first 37 s (reading
10.5 s), from the cache 28 s, 7.2-7.5 GB peak -- the time target met, the memory target not.

Measured 2026-12-01 on the 2-core machine at load average 1.0-1.1, 1 M records (998,034;
921 MB JSONL), two interleaved repetitions of ``--reuse`` (charts and report included) with
the code of commit 9d5dd75 (before the verdict, chart and reading passes) and of main:

    before: first analysis (JSONL)   17.3-18.6 s wall, 19.6-21.7 s CPU, 1,147-1,150 MB
            again (column cache)     11.0-11.1 s wall, 11.1-11.2 s CPU, 1,026 MB
    after:  first analysis (JSONL)    9.1-9.6 s wall, 12.9-13.3 s CPU,   986-998 MB
            again (column cache)      4.2-4.7 s wall,  4.4-4.8 s CPU,   928 MB

The summary is byte-identical. From the cache the 1 M target is met on an idle machine;
from the JSONL parsing alone is ~5.5 s of CPU. 10 M records (9,993,790; 9.2 GB JSONL), with
charts: first analysis 85 s at 7.45 GB peak, from the cache 25-34 s at 7.15-7.23 GB; memory
grows ~0.7 GB per million records (see the README): the 10 M target is not met.

Reading the JSONL (issue 16.1), measured 2026-12-01 on the same machine, load average
1.5-4.4 (other helpers' work: rarely a core free), interleaved fresh processes, the code
of commit 9d5dd75 (before) and of this one (after: ranges split at newlines, parsed by one
thread per core, ``loadkit.analysis.jsonl_ranges``; each field's parts freed as they are
joined), medians (ranges):

    1 M, first analysis (4 reps)   before 14.8 s (12.4-15.2) wall, 12.9 s CPU, 1,123 MB
    (this script, --no-charts)     after  16.9 s (13.1-19.1) wall, 13.5 s CPU, 1,081 MB
                                   of which reading the JSONL: 8.8 s (7.7-10.1) / 11.3 s
                                   (8.1-12.9)
    1 M, read_reduced only (11)    before  9.8 s (7.3-13.9) wall, 8.4 s CPU, 623 MB
                                   after  10.8 s (5.7-18.7) wall, 9.2 s CPU, 594 MB
    10 M, read_reduced only (2)    before 106.8 / 123.7 s, 84.8 / 88.1 s CPU, 4.90 GB
                                   after   94.2 / 112.3 s, 91.3 / 95.6 s CPU, 3.76 GB
    a torn 145 MB file (160 k)     before 18.2 s, 704 MB (the line reader, whole file)
                                   after   1.05 s, 264 MB (only the torn line apart)

The columns are byte-for-byte the same (a digest of every array, code and name at 1 M, 10 M
and on the torn file). On this machine the threads show no speed-up -- the baseline's
arrow reader already used its own threads and a core was rarely idle -- and parsing JSON is
~5.5 s of CPU per million of these records (~180 MB/s a core, half of it arrow converting
the 35 fields read): the 5 s target needs the records as columns before the analysis
starts (records.parquet written by the engine as it runs) or more free cores. What
improved: the peak while reading (10 M: -1.1 GB, the columns' joining no longer holds
them twice) and a torn last line no longer sends its whole file to the line reader.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# A realistic mix (issue 16): (key label, tier, share of all records, stream, tokens).
# Paid keys stay under their limits (a few 429s at most); the free keys offer far more
# than 60 a minute, so nearly all of theirs are 429s: ~4 % of the run. Streams with 16+
# content chunks: ~90 % of all records.
KEYS = [
    ("paid-0", "paid", 0.16, True, 16),
    ("paid-1", "paid", 0.16, True, 16),
    ("paid-2", "paid", 0.16, True, 16),
    ("paid-3", "paid", 0.16, True, 16),
    ("paid-4", "paid", 0.13, True, 24),
    ("paid-5", "paid", 0.13, True, 32),
    ("paid-batch", "paid", 0.06, False, 64),
    ("free-0", "free", 0.02, True, 16),
    ("free-1", "free", 0.02, True, 16),
]
# ``--keys one``: every record through one paid key, the case where a key's own verdicts,
# not the run, set the analysis' peak memory
ONE_KEY = [("paid-0", "paid", 1.0, True, 16)]
RATE = 3000.0  # records per second of simulated run: the one-hour soak
TTFT_S, ITL_S = 0.08, 0.012


def tiers_for(
    records: int, duration: float, keys: list[tuple[str, str, float, bool, int]]
) -> dict[str, dict[str, float]]:
    """Tier limits for a run of ``records``: paid keys' limits 30 % above the busiest paid
    key's mean rate, concurrency well above its mean in-flight count; free: 60 a minute."""
    busiest = max(share for _, tier, share, _, _ in keys if tier == "paid") * records / duration
    service = TTFT_S + ITL_S * max(t for *_, t in keys)
    return {
        "paid": dict(
            requests=math.ceil(busiest * 60.0 * 1.3),
            window_s=60.0,
            concurrency=math.ceil(busiest * service * 2) + 50,
        ),
        "free": dict(requests=60, window_s=60.0, concurrency=3),
    }


def _generate_part(
    job: tuple[list[tuple[str, str, float, bool, int]], int, int, int, float, str, int, bool],
) -> tuple[int, int, int, float]:
    """One key's records (or one time slice of them), written as its own JSONL file and,
    with ``twins``, the Parquet twin the engine's record writer leaves beside it
    (``loadkit.parquet_twin``, told of the same writes in the same way); returns its CPU
    cost with the counts."""
    import numpy as np

    from loadkit.parquet_twin import ParquetTwin
    from tests.analysis.synthetic import (
        Limiter,
        Timing,
        key_run_lines,
        poisson_sends,
        simulate_key,
    )

    keys, key_i, part, records, duration, out_dir, seed, twins = job
    label, tier, share, stream, tokens = keys[key_i]
    rng = np.random.default_rng(seed * 1000 + part)
    n = int(records * share)
    t = tiers_for(records, duration, keys)[tier]
    kind = "sliding_log" if tier == "paid" else "fixed_window"
    lim = Limiter(
        kind, requests=int(t["requests"]), window_s=t["window_s"], concurrency=int(t["concurrency"])
    )
    timing = Timing(
        upload_s=0.001,
        download_s=0.001,
        ttft_s=TTFT_S,
        itl_s=ITL_S,
        tokens=tokens,
        stream=stream,
        jitter=0.6,
    )
    # a paid key far from its limit is simulated in time slices (in parallel); slices of a
    # key whose limit refuses would each start with a fresh window, so those stay whole
    parts = PARTS if tier == "paid" else 1
    span = duration / parts
    sends = poisson_sends(n / duration, span, rng, start=part * span)
    kr = simulate_key(label, tier, lim, sends, timing, rng)
    kr.scheduled = kr.send - rng.uniform(0, 0.002, kr.send.size)
    path = Path(out_dir) / f"records-{label}-{part}.jsonl"
    twin = ParquetTwin(path) if twins else None
    with open(path, "wb", buffering=1 << 22) as fh:
        batch: list[str] = []

        def write() -> None:
            data = "".join(batch).encode()
            fh.write(data)
            if twin is not None:
                fh.flush()  # as the record writer does: the twin reads the file back
                twin.feed(len(data))
            batch.clear()

        for line in key_run_lines(kr, "bench", start_index=part * 10**9):
            batch.append(line)
            if len(batch) >= 1000:
                write()
        write()
    twin_cpu = 0.0
    if twin is not None:
        twin.close(path.stat().st_size)
        twin_cpu = twin.cpu_s
    streams16 = int(((kr.status == 200) & stream & (tokens >= 16)).sum())
    return kr.send.size, int((kr.status == 429).sum()), streams16, twin_cpu


PARTS = 4  # time slices of each paid key


def generate(
    run_dir: Path,
    records: int,
    duration: float,
    workers: int,
    twins: bool,
    keys: list[tuple[str, str, float, bool, int]] = KEYS,
) -> tuple[float, str]:
    from tests.analysis.synthetic import Limiter, run_meta

    run_dir.mkdir(parents=True, exist_ok=True)
    for old in [*run_dir.glob("records-*.jsonl"), *run_dir.glob("records-*.parquet")]:
        old.unlink()
    t0 = time.perf_counter()
    jobs = [
        (keys, i, part, records, duration, str(run_dir), i, twins)
        for i, (_, tier, *_) in enumerate(keys)
        for part in range(PARTS if tier == "paid" else 1)
    ]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        counts = list(pool.map(_generate_part, jobs))
    total = sum(c[0] for c in counts)
    refused = sum(c[1] for c in counts)
    streams16 = sum(c[2] for c in counts)
    twin_cpu = sum(c[3] for c in counts)
    tiers = {
        name: Limiter("sliding_log", **t)  # type: ignore[arg-type]
        for name, t in tiers_for(records, duration, keys).items()
    }
    meta = run_meta(
        tiers,
        [(k, t) for k, t, *_ in keys],
        run_id="bench",
        duration_s=duration,
        warmup_s=5.0,
        slo={"ttft_ms": {"p99": 800}, "error_rate": 0.05},
        goodput={"ttft_ms": 500, "tpot_ms": 50},
    )
    meta.write(run_dir)
    mix = (
        f"{total:,} records: {streams16 / total:.1%} streams with 16+ chunks, "
        f"{refused / total:.1%} 429s, {len(keys)} keys in {len({k[1] for k in keys})} tier(s)"
    )
    if twins:
        mix += (
            f"; the Parquet twins cost the run {twin_cpu:.1f} s of a background thread's "
            f"CPU ({twin_cpu / (total / 1e6):.1f} s per million records)"
        )
    return time.perf_counter() - t0, mix


def _anon_mb() -> float:
    """The process's anonymous memory (heap, arrays), without mapped file pages."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def analyse_child(run_dir: str, charts: bool) -> None:
    """Runs in a fresh interpreter so that RSS and imports are the analysis' own. Peak
    RSS counts the column cache's mapped pages, which the kernel drops under pressure;
    the peak of anonymous memory (sampled every 5 ms) is what the analysis needs."""
    import threading

    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _anon_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0, c0 = time.perf_counter(), time.process_time()
    from loadkit.analysis.summary import analyze_run

    t_import = time.perf_counter() - t0
    timings: dict[str, float] = {}
    summary = analyze_run(run_dir, charts=charts, timings=timings)
    total = time.perf_counter() - t0
    done.set()
    sampler.join()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(
        json.dumps(
            {
                "import_s": t_import,
                **timings,
                "wall_s": total,
                "cpu_s": time.process_time() - c0,
                "peak_rss_mb": rss_mb,
                "peak_anon_mb": max(peak[0], _anon_mb()),
                "records": summary["run"]["records"],
                "verdict": summary["verdict"],
                "charts": len(summary["charts"]),
            }
        )
    )


def evict(run_dir: Path) -> None:
    """Drop the run's files (records, twins, column cache) from the page cache, so that a
    child in a memory cgroup reads them afresh and is charged for the pages it maps."""
    os.sync()
    for f in run_dir.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def memory_cgroup(limit_mb: int) -> Path:
    """A cgroup (v2, else v1's memory controller) limited to ``limit_mb``; needs root."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists():
        cg = Path("/sys/fs/cgroup/loadkit-analysis-scale")
        cg.mkdir(exist_ok=True)
        (cg / "memory.max").write_text(str(limit_mb << 20))
        (cg / "memory.swap.max").write_text("0")
        return cg
    cg = Path("/sys/fs/cgroup/memory/loadkit-analysis-scale")
    cg.mkdir(exist_ok=True)
    (cg / "memory.limit_in_bytes").write_text(str(limit_mb << 20))
    return cg


def run_child(run_dir: Path, charts: bool, cgroup: Path | None = None) -> dict[str, Any] | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--dir", str(run_dir)]
    if not charts:
        cmd.append("--no-charts")
    enter = None
    if cgroup is not None:
        evict(run_dir)
        procs = cgroup / "cgroup.procs"

        def enter() -> None:  # in the child, before it starts the analysis
            procs.write_text(str(os.getpid()))

    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=enter,
    )
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        if proc.returncode < 0:
            print(f"the analysis was killed by signal {-proc.returncode}", file=sys.stderr)
        return None
    r: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return r


def targets(records: int) -> tuple[float, int, str]:
    """Issue 16's targets for a run of this size: (seconds, MB, label)."""
    if records > 3_000_000:
        return 60.0, 1536, "10 M"
    return 5.0, 1024, "1 M"


def show(title: str, r: dict[str, Any], source: str) -> bool:
    print(f"{title}: {r['records']:,} records, verdict {r['verdict']}, {r['charts']} charts")
    print(f"  imports           {r['import_s']:6.2f} s")
    print(f"  read {source:<12} {r['read_s']:6.2f} s")
    print(f"  metrics+verdicts  {r['analyse_s']:6.2f} s")
    print(f"  charts+report     {r['charts_report_s']:6.2f} s")
    print(f"  summary.json      {r['write_summary_s']:6.2f} s")
    limit_s, limit_mb, size = targets(r["records"])
    print(f"  total (wall)      {r['wall_s']:6.2f} s   (target <= {limit_s:g} s for {size})")
    print(f"  CPU (process)     {r['cpu_s']:6.2f} s")
    print(f"  peak anonymous    {r['peak_anon_mb']:6.0f} MB (target <= {limit_mb} MB for {size})")
    print(f"  peak RSS          {r['peak_rss_mb']:6.0f} MB (with the mapped column cache)")
    ok = bool(r["wall_s"] <= limit_s and r["peak_anon_mb"] <= limit_mb)
    print("  MEETS TARGET" if ok else "  MISSES TARGET")
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="simulated run length in s (default: records / 3000, the issue's soak rate)",
    )
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="generation")
    p.add_argument("--dir", default="/tmp/loadkit-analysis-scale", help="run directory")
    p.add_argument("--reuse", action="store_true", help="analyse the existing run directory")
    p.add_argument(
        "--keys",
        choices=("mix", "one"),
        default="mix",
        help="mix: 9 keys in 2 tiers (default); one: every record through one paid key",
    )
    p.add_argument("--no-charts", action="store_true", help="summary.json only")
    p.add_argument(
        "--no-twins",
        action="store_true",
        help="no Parquet twins (generation writes none; --reuse removes them): the first "
        "analysis parses the JSONL",
    )
    p.add_argument(
        "--cgroup-mb",
        type=int,
        default=None,
        help="run each analysis in a memory cgroup of this many MB (root; the run's pages "
        "are dropped from the page cache first, so its mapped files are charged to it)",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    charts = not args.no_charts
    if args.child:
        analyse_child(args.dir, charts)
        return 0
    run_dir = Path(args.dir)
    if not args.reuse:
        duration = args.duration or max(60.0, args.records / RATE)
        keys = ONE_KEY if args.keys == "one" else KEYS
        gen_s, mix = generate(
            run_dir, args.records, duration, args.workers, not args.no_twins, keys
        )
        size = sum(f.stat().st_size for f in run_dir.glob("records-*.jsonl"))
        print(
            f"generated {mix} ({size / 1e6:,.0f} MB JSONL, {duration:.0f} s run) in {gen_s:.1f} s"
        )
    from loadkit.analysis.column_cache import CACHE_DIR, CACHE_MIN_RECORDS
    from loadkit.parquet_twin import valid_twin

    shutil.rmtree(run_dir / CACHE_DIR, ignore_errors=True)
    (run_dir / "records.parquet").unlink(missing_ok=True)
    jsonl = sorted(run_dir.glob("records-*.jsonl"))
    if args.no_twins:
        for f in jsonl:
            f.with_suffix(".parquet").unlink(missing_ok=True)
    twinned = sum(valid_twin(f) is not None for f in jsonl)
    print(f"command: {sys.executable} {' '.join(sys.argv)}")
    cgroup = None
    if args.cgroup_mb:
        cgroup = memory_cgroup(args.cgroup_mb)
        print(f"each analysis in a memory cgroup of {args.cgroup_mb} MB ({cgroup})")
    first = run_child(run_dir, charts, cgroup)
    if first is None:
        return 1
    cached = first["records"] >= CACHE_MIN_RECORDS
    note = ", writes the column cache" if cached else ""
    if twinned == len(jsonl):
        what, source = "reads the Parquet twins", "twins"
    elif twinned:
        what, source = f"reads {twinned} of {len(jsonl)} files' Parquet twins", "twins+JSONL"
    else:
        what, source = "parses the JSONL", "JSONL"
    ok = show(f"first analysis ({what}{note})", first, source)
    again = run_child(run_dir, charts, cgroup)
    if again is None:
        return 1
    again_title = "reads the column cache" if cached else "parses the JSONL again"
    ok = show(f"analysis again ({again_title})", again, "cache" if cached else "JSONL") and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
