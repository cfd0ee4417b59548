"""How often ``loadkit history check`` cries wolf, and how fast it sees a real shift:
simulated nightly series of one metric (Gaussian noise, coefficient of variation CV),
the gate run after every night as CI would.

* false alarms: series with no change at all; the share of metric-nights that fail;
* detection: a step of +S % after night 30; the share of series in which the gate fails
  within 10 nights of the step, and the median number of nights until it does.

    .venv/bin/python benchmarks/history_gate.py                 # the table in docs/history.md
    .venv/bin/python benchmarks/history_gate.py --series 100 --cv 0.05

Nothing here touches a database: the gate's pure core is fed directly.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from loadkit.history.gate import GateSettings, judge_metric  # noqa: E402
from loadkit.history.stored import StoredRun  # noqa: E402
from loadkit.history.trends import Detection, metric_spec  # noqa: E402

WARMUP = 30  # nights of history before the gate is scored
NIGHTS_AFTER = 10


def _run(i: int) -> StoredRun:
    return StoredRun(
        id=i, run_key=str(i), run_id=f"n{i}", started_unix=i * 86400.0, started_at="",
        scenario="s", scenario_hash="", target="t", engine="async", verdict="pass",
        duration_s=None, records=None, interrupted=False, loadkit_version="",
        summary_schema="loadkit.summary/1", git_commit=None, git_branch=None, complete=None,
        completeness=None, source="", added_unix=0.0,
    )  # fmt: skip


def nightly_failures(values: np.ndarray, settings: GateSettings, start: int) -> list[int]:
    """Nights (indexes) from ``start`` on whose check fails."""
    spec = metric_spec("ttft_ms.p99")
    runs = [_run(i) for i in range(len(values))]
    failed = []
    for n in range(start, len(values)):
        series = runs[: n + 1]
        vals = {r.id: float(values[r.id]) for r in series}
        if judge_metric(spec, series, vals, settings).failed:
            failed.append(n)
    return failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=60, help="simulated series per cell")
    ap.add_argument("--cv", type=float, default=0.03, help="night-to-night noise (default 3 %%)")
    ap.add_argument("--pvalues", default="0.01,0.001,0.0001")
    ap.add_argument("--steps", default="5,10,20", help="step sizes in percent ('' for none)")
    ap.add_argument("--confirm", type=int, default=1, help="as history check --confirm")
    args = ap.parse_args()
    rng = np.random.default_rng(2026)
    pvalues = [float(p) for p in args.pvalues.split(",")]
    steps = [float(s) for s in args.steps.split(",") if s.strip()]
    print(
        f"CV {100 * args.cv:g} %, {args.series} series per cell, {WARMUP} nights of history, "
        f"--confirm {args.confirm}"
    )
    header = ["p-value", "false alarms / metric-night"]
    header += [f"+{s:g} %: found in 10 nights (median nights)" for s in steps]
    print(" | ".join(header))
    for p in pvalues:
        settings = GateSettings(detection=Detection(max_pvalue=p), confirm=args.confirm)
        alarms = nights = 0
        for _ in range(args.series):
            noise = 100 * (1 + args.cv * rng.standard_normal(WARMUP + NIGHTS_AFTER))
            alarms += len(nightly_failures(noise, settings, WARMUP))
            nights += NIGHTS_AFTER
        cells = [f"{p:g}", f"{alarms / nights:.4f}"]
        for s in steps:
            delays = []
            for _ in range(args.series):
                v = 100 * (1 + args.cv * rng.standard_normal(WARMUP + NIGHTS_AFTER))
                v[WARMUP:] *= 1 + s / 100
                failed = nightly_failures(v, settings, WARMUP)
                if failed:
                    delays.append(failed[0] - WARMUP + 1)
            found = len(delays) / args.series
            median = statistics.median(delays) if delays else float("nan")
            cells.append(f"{100 * found:.0f} % ({median:g})")
        print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
