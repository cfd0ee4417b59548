"""How the asyncio engine scales with ``loadkit run --workers N``: aggregate streams per
second of N worker processes against N times one process, on the streaming C target.

Each arm is a whole ``loadkit run --engine async --workers K`` (K = 1, then K = N) in its
own process tree, closed loop at its ceiling: ``--keys`` keys with ``--concurrency``
streams in all (split evenly over the keys, so N workers own equal shares), 16 content
chunks per stream each in its own write, ``--gap-ms`` apart. Arms are interleaved (1 N,
then N 1, ...); each repetition's ratio is ``rate(N) / (N × rate(1))`` from the two runs
next to each other, reported as the median and range (min–max), ratios first. Rates are
completions per second over each run's own measured span (after ``--warmup``), from the
records of every worker. A run with any status but 200 or any transport error is invalid
and stops the benchmark. Beside the rates: CPU milliseconds per stream of every process of
each run (``loadkit run`` and its workers), which does not depend on how many free cores
the machine had; marginal = (CPU of the run − CPU of a ``--short-seconds`` run of the same
arm) / (its requests − the short run's), so each process's start-up cancels out. Their
ratio says whether a worker costs per stream what one process does, the condition for N
free cores to give N times the rate.

The target is single-threaded C (``targets/sse_target.c``); by default it is not pinned,
so on a machine with fewer than N + 1 cores it shares cores with the workers, and the
ratio is then a lower bound of what N free cores give. ``--target-cpu`` pins it.

    python benchmarks/workers_scaling.py                  # N = the cores available
    python benchmarks/workers_scaling.py --workers 2 --reps 5 --seconds 8

Not a test: figures go to the README. Needs gcc.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (  # noqa: E402
    PY,
    interleaved,
    loadavg_text,
    machine,
    med_range,
    raise_fd_limit,
    rate_over_span,
    sse_target,
)


class Invalid(RuntimeError):
    """A run that saw errors: its rate would not mean what it says."""


def scenario(url: str, keys: int, concurrency: int, seconds: float) -> dict[str, Any]:
    per_key = max(1, concurrency // keys)
    return {
        "name": "workers-scaling",
        "target": {"base_url": url, "model": "m"},
        "run": {"duration_s": seconds, "drain_s": 30},
        "tiers": {
            "bench": {
                "requests": 10**9,
                "window_s": 60,
                "concurrency": 10**7,
                "keys_env": "BENCH_KEYS",
            }
        },
        "load": [
            {
                "tier": "bench",
                "pattern": "closed",
                "concurrency": per_key,
                "mix": {"chat_stream": 1},
                "max_tokens": 16,
            }
        ],
    }


def run_arm(
    workers: int, url: str, a: argparse.Namespace, tmp: Path, tag: str, seconds: float
) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix=f"w{workers}-{tag}-", dir=tmp))
    spec = d / "scenario.json"
    spec.write_text(json.dumps(scenario(url, a.keys, a.concurrency, seconds)))
    out = d / "run"
    load = loadavg_text()
    cmd = [
        PY, "-m", "loadkit", "run", str(spec), "--engine", "async",
        "--workers", str(workers), "--out", str(out),
        "--no-preflight", "--no-analyze", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "BENCH_KEYS": ",".join(f"bench-key-{i}" for i in range(a.keys))}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise Invalid(
            f"--workers {workers} run {tag}: exit {proc.returncode}: {proc.stderr[-2000:]}"
        )
    # Every process of the run (loadkit run, its workers) ended and was waited for.
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    recs = [
        json.loads(line)
        for f in sorted(out.glob("records-*.jsonl"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]
    meta = json.loads((out / "run.json").read_text())
    bad = [r for r in recs if r["status"] != 200 or r["transport_error"]]
    if bad or not recs:
        raise Invalid(
            f"--workers {workers} run {tag}: {len(bad)} of {len(recs)} requests failed "
            f"(first: status {bad[0]['status']}, {bad[0]['transport_error']})"
            if bad
            else f"--workers {workers} run {tag}: no records"
        )
    return {
        "workers": len(meta["workers"]),
        "requests": len(recs),
        "rate": rate_over_span([r["send_s"] for r in recs], [r["end_s"] for r in recs], a.warmup),
        "load": load,
        "cpu_s": cpu,
        "cpu_ms_per_req": cpu * 1e3 / len(recs),
    }


def main() -> int:
    cores = len(os.sched_getaffinity(0))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=cores, help="N (default: the cores available)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved pairs")
    ap.add_argument("--seconds", type=float, default=8.0, help="duration of each run")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured start of each run")
    ap.add_argument(
        "--short-seconds", type=float, default=4.0, help="the short run of the CPU difference"
    )
    ap.add_argument("--keys", type=int, default=0, help="keys (default: 2 per worker)")
    ap.add_argument("--concurrency", type=int, default=256, help="streams in all")
    ap.add_argument("--gap-ms", type=float, default=2.0, help="the target's inter-chunk gap")
    ap.add_argument("--target-cpu", type=int, default=None, help="pin the target to this CPU")
    a = ap.parse_args()
    if a.workers < 2:
        ap.error("--workers: at least 2 (a ratio against one process)")
    a.keys = a.keys or 2 * a.workers
    raise_fd_limit(4 * a.concurrency + 4096)
    lines = [f"# loadkit run --workers {a.workers} vs --workers 1 (asyncio engine)", ""]
    lines += machine()
    lines.append(
        f"setup: {a.keys} keys, {a.concurrency} streams in all (closed loop), 16 chunks "
        f"{a.gap_ms:g} ms apart, {a.seconds:g} s runs ({a.warmup:g} s warm-up), "
        f"{a.reps} interleaved pairs; target "
        + (f"pinned to CPU {a.target_cpu}" if a.target_cpu is not None else "not pinned")
    )
    print("\n".join(lines), flush=True)
    arms = ("1", str(a.workers))
    with (
        tempfile.TemporaryDirectory(prefix="loadkit-workers-") as tmp,
        sse_target(a.target_cpu, gap_ms=a.gap_ms) as tgt,
    ):
        url = f"{tgt.base}/v1"

        def run(arm: str, rep: int) -> dict[str, Any]:
            res = run_arm(int(arm), url, a, Path(tmp), f"r{rep}", a.seconds)
            short = run_arm(int(arm), url, a, Path(tmp), f"r{rep}s", a.short_seconds)
            # Start-up (imports, one per process) cancels out of the difference.
            res["marginal_cpu_ms"] = (
                (res["cpu_s"] - short["cpu_s"]) * 1e3 / (res["requests"] - short["requests"])
            )
            print(
                f"  rep {rep}: --workers {arm}: {res['workers']} process(es), "
                f"{res['rate']:,.0f} streams/s ({res['requests']:,} requests, "
                f"{res['cpu_ms_per_req']:.2f} CPU ms each, {res['marginal_cpu_ms']:.3f} "
                f"marginal; load average before {res['load']})",
                flush=True,
            )
            return res

        got = interleaved(arms, a.reps, run)
    one = [r["rate"] for r in got["1"]]
    many = [r["rate"] for r in got[arms[1]]]
    speedups = [m / o for m, o in zip(many, one, strict=True)]
    ratios = [s / a.workers for s in speedups]
    out = [
        "",
        f"scaling efficiency rate(N) / (N × rate(1)), N = {a.workers}: "
        f"{med_range(ratios, '{:.2f}')} (target ≥ 0.85)",
        f"speed-up rate(N) / rate(1): {med_range(speedups, '{:.2f}')}",
        f"streams/s, --workers 1: {med_range(one, '{:,.0f}')}",
        f"streams/s, --workers {a.workers}: {med_range(many, '{:,.0f}')}",
        "marginal CPU per stream, --workers 1 / --workers N (1.00: a worker costs per "
        "stream what one process does, so N free cores give N times the rate): "
        + med_range(
            [
                o["marginal_cpu_ms"] / m["marginal_cpu_ms"]
                for o, m in zip(got["1"], got[arms[1]], strict=True)
            ],
            "{:.2f}",
        ),
        f"marginal CPU ms per stream (long run − short run, every process), --workers 1: "
        f"{med_range([r['marginal_cpu_ms'] for r in got['1']], '{:.3f}')}; --workers "
        f"{a.workers}: {med_range([r['marginal_cpu_ms'] for r in got[arms[1]]], '{:.3f}')}",
        f"CPU ms per stream, start-up included, --workers 1: "
        f"{med_range([r['cpu_ms_per_req'] for r in got['1']], '{:.3f}')}; --workers "
        f"{a.workers}: {med_range([r['cpu_ms_per_req'] for r in got[arms[1]]], '{:.3f}')}",
        f"load average at the end: {loadavg_text()}",
    ]
    print("\n".join(out))
    return 0 if statistics.median(ratios) >= 0.85 else 1


if __name__ == "__main__":
    sys.exit(main())
