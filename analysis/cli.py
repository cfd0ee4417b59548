"""``loadkit analyze``: run the analysis, print a short console table, map the outcome to
an exit status (0 pass or inconclusive, 1 violation or missed SLO, 2 unusable input)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from loadkit.analysis.outcome import HeaderAgreement, RunVerdict, Verdict

if TYPE_CHECKING:
    from loadkit.analysis.summary import Summary

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2
EXIT_STATUS: dict[RunVerdict, int] = {
    RunVerdict.PASS: EXIT_OK,
    RunVerdict.INCONCLUSIVE: EXIT_OK,
    RunVerdict.FAIL: EXIT_FAIL,
}
CONSOLE_METRICS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "headers_ms")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def console_table(summary: Summary, run_dir: str | os.PathLike[str] | None = None) -> str:
    """Verdict per key and kind, key latency percentiles, SLO checks."""
    from loadkit.analysis.limits import RequestsLimit

    run = summary.run
    lines = [
        f"run {run.run_id} ({run.engine}, {run.records} records"
        + (", INTERRUPTED" if run.interrupted else "")
        + ")"
    ]
    if summary.limits:
        lines.append("")
        lines.append(
            f"{'key':<16} {'tier':<10} {'kind':<12} {'promised':>9} {'observed':>9} "
            f"{'possible':>9} {'offered':>8}  {'enforced':<12} {'honoured':<12}"
        )
        for e in summary.limits:
            v = e.verdict
            lines.append(
                f"{e.key:<16} {e.tier:<10} {e.kind:<12} {v.promised:>9} "
                f"{v.observed_max:>9} {v.observed_max_possible:>9} {v.offered_max:>8}  "
                f"{v.enforced:<12} {v.honoured:<12}"
            )
            if not isinstance(e, RequestsLimit):
                continue
            ra = e.retry_after
            if ra.verdict != Verdict.INCONCLUSIVE:
                lines.append(
                    f"{'':<16} retry-after: {ra.verdict} ({ra.checked} checked, {ra.broken} broken)"
                )
            rh = e.remaining_header
            if rh.verdict == HeaderAgreement.DISAGREES:
                lines.append(
                    f"{'':<16} x-ratelimit-remaining: disagrees on {rh.disagreements}/{rh.checked}"
                )
    lines.append("")
    lines.append(
        f"{'latency (ms)':<14} {'p50':>9} {'p90':>9} {'p99':>9} {'p99.9':>9} {'max':>9} "
        f"{'count':>9}"
    )
    for m in CONSOLE_METRICS:
        o = summary.latency.table(m).overall
        lines.append(
            f"{m:<14} {_ms(o.p50):>9} {_ms(o.p90):>9} {_ms(o.p99):>9} "
            f"{_ms(o.p99_9):>9} {_ms(o.max):>9} {o.count:>9}"
        )
    tp, err = summary.throughput, summary.errors
    lines.append(
        f"throughput: {tp.requests_per_s:.2f} req/s, {tp.output_tokens_per_s:.1f} "
        f"output tokens/s; errors {err.error_rate:.2%}, "
        f"429s {err.throttle_rate:.2%}"
    )
    if err.transport:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(err.transport.items()))
        lines.append(f"transport errors: {kinds}")
    for note in summary.limit_notes:
        lines.append(f"NOTE: {note}")
    if summary.slo.checks:
        lines.append("")
        for c in summary.slo.checks:
            obs = "-" if c.observed is None else f"{c.observed:.4g}"
            lines.append(
                f"SLO {c.name:<22} {c.direction} {c.threshold:<10g} "
                f"observed {obs:<10} {c.status.upper()}"
            )
    lines.append("")
    lines.append(f"VERDICT: {summary.verdict.upper()}")
    if summary.verdict != RunVerdict.PASS:
        lines.extend(f"  - {r}" for r in summary.verdict_reasons)
    if summary.report:
        report = Path(summary.report)
        if run_dir is not None and not report.is_absolute():
            report = Path(run_dir) / report
        lines.append(f"report: {report}")
    return "\n".join(lines)


def exit_status(summary: Summary) -> int:
    return EXIT_STATUS[summary.verdict]


def analyze_and_report(
    run_dir: str | os.PathLike[str],
    slo_overrides: Iterable[str] = (),
    charts: bool = True,
    quiet: bool = False,
    out: TextIO | None = None,
) -> int:
    """Analyse ``run_dir`` (writing summary.json, and with ``charts`` the charts and
    report.html), print the console table to ``out`` (stdout) unless ``quiet``, and return
    the exit status of ``loadkit analyze``. Unusable input is reported on stderr (exit 2)."""
    from loadkit.analysis.columns import UnusableInput
    from loadkit.analysis.slo import SloSyntaxError
    from loadkit.analysis.summary import summarize_run

    out = out or sys.stdout
    try:
        summary = summarize_run(run_dir, slo_overrides=list(slo_overrides), charts=charts)
    except (UnusableInput, SloSyntaxError) as exc:
        print(f"loadkit analyze: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:
        print(f"loadkit analyze: cannot read or write {run_dir}: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if not quiet:
        print(console_table(summary, run_dir=run_dir), file=out)
    elif summary.verdict != RunVerdict.PASS:
        print(
            f"loadkit analyze: verdict {summary.verdict}: "
            + "; ".join(summary.verdict_reasons[:3]),
            file=sys.stderr,
        )
    return exit_status(summary)


def analyze_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Entry point of ``loadkit analyze DIR``."""
    return analyze_and_report(
        args.run_dir,
        slo_overrides=getattr(args, "slo", None) or (),
        charts=not getattr(args, "no_charts", False),
        quiet=getattr(args, "quiet", False),
        out=out,
    )
