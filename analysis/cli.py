"""``loadkit analyze``: run the analysis, print a short console table, map the outcome to
an exit status (0 pass or inconclusive, 1 violation or missed SLO, 2 unusable input)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def console_table(summary: dict[str, Any], run_dir: str | None = None) -> str:
    """Verdict per key and kind, key latency percentiles, SLO checks."""
    run = summary["run"]
    lines = [
        f"run {run['run_id']} ({run['engine']}, {run['records']} records"
        + (", INTERRUPTED" if run.get("interrupted") else "")
        + ")"
    ]
    if summary["limits"]:
        lines.append("")
        lines.append(
            f"{'key':<16} {'tier':<10} {'kind':<12} {'promised':>9} {'observed':>9} "
            f"{'possible':>9} {'offered':>8}  {'enforced':<12} {'honoured':<12}"
        )
        for e in summary["limits"]:
            off = e["offered"]["max_in_window" if e["kind"] == "requests" else "max_concurrent"]
            lines.append(
                f"{e['key']:<16} {e['tier']:<10} {e['kind']:<12} {e['promised']:>9} "
                f"{e['observed_max']:>9} {e['observed_max_possible']:>9} {off:>8}  "
                f"{e['enforced']:<12} {e['honoured']:<12}"
            )
            ra = e.get("retry_after")
            if ra and ra["verdict"] != "inconclusive":
                lines.append(
                    f"{'':<16} retry-after: {ra['verdict']} ({ra['checked']} checked, "
                    f"{ra['broken']} broken)"
                )
            rh = e.get("remaining_header")
            if rh and rh["verdict"] == "disagrees":
                lines.append(
                    f"{'':<16} x-ratelimit-remaining: disagrees on "
                    f"{rh['disagreements']}/{rh['checked']}"
                )
    lat = summary["latency"]
    lines.append("")
    lines.append(
        f"{'latency (ms)':<14} {'p50':>9} {'p90':>9} {'p99':>9} {'p99.9':>9} {'max':>9} "
        f"{'count':>9}"
    )
    for m in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "headers_ms"):
        o = lat[m]["overall"]
        lines.append(
            f"{m:<14} {_ms(o['p50']):>9} {_ms(o['p90']):>9} {_ms(o['p99']):>9} "
            f"{_ms(o['p99_9']):>9} {_ms(o['max']):>9} {o['count']:>9}"
        )
    tp = summary["throughput"]
    lines.append(
        f"throughput: {tp['requests_per_s']:.2f} req/s, {tp['output_tokens_per_s']:.1f} "
        f"output tokens/s; errors {summary['errors']['error_rate']:.2%}, "
        f"429s {summary['errors']['throttle_rate']:.2%}"
    )
    err = summary["errors"]
    if err.get("transport"):
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(err["transport"].items()))
        lines.append(f"transport errors: {kinds}")
    for note in summary.get("limit_notes", []):
        lines.append(f"NOTE: {note}")
    if summary["slo"]["checks"]:
        lines.append("")
        for c in summary["slo"]["checks"]:
            obs = "-" if c["observed"] is None else f"{c['observed']:.4g}"
            lines.append(
                f"SLO {c['name']:<22} {c['direction']} {c['threshold']:<10g} "
                f"observed {obs:<10} {c['status'].upper()}"
            )
    lines.append("")
    lines.append(f"VERDICT: {summary['verdict'].upper()}")
    if summary["verdict"] != "pass":
        lines.extend(f"  - {r}" for r in summary["verdict_reasons"])
    if summary.get("report"):
        report = Path(summary["report"])
        if run_dir is not None and not report.is_absolute():
            report = Path(run_dir) / report
        lines.append(f"report: {report}")
    return "\n".join(lines)


def exit_status(summary: dict[str, Any]) -> int:
    return EXIT_FAIL if summary["verdict"] == "fail" else EXIT_OK


def analyze_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Entry point of ``loadkit analyze DIR``."""
    from loadkit.analysis.columns import UnusableInput
    from loadkit.analysis.slo import SloSyntaxError
    from loadkit.analysis.summary import analyze_run

    out = out or sys.stdout
    try:
        summary = analyze_run(
            args.run_dir,
            slo_overrides=list(getattr(args, "slo", []) or []),
            charts=not getattr(args, "no_charts", False),
        )
    except (UnusableInput, SloSyntaxError) as exc:
        print(f"loadkit analyze: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:
        print(f"loadkit analyze: cannot read or write {args.run_dir}: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if not getattr(args, "quiet", False):
        print(console_table(summary, run_dir=args.run_dir), file=out)
    elif summary["verdict"] != "pass":
        print(
            f"loadkit analyze: verdict {summary['verdict']}: "
            + "; ".join(summary["verdict_reasons"][:3]),
            file=sys.stderr,
        )
    return exit_status(summary)
