"""``loadkit analyze``: run the analysis, print a short console table, map the outcome to
an exit status: 0 pass or inconclusive, 1 violation or missed SLO, 2 error (a key's answers
are not the API's) or input that cannot be analysed, 3 incomplete (records are missing)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from loadkit.analysis.outcome import HeaderAgreement, RunVerdict, Verdict

if TYPE_CHECKING:
    from loadkit.analysis.summary import Summary
    from loadkit.analysis.token_verdicts import TokenLimit

EXIT_OK, EXIT_FAIL, EXIT_INPUT, EXIT_INCOMPLETE = 0, 1, 2, 3
EXIT_STATUS: dict[RunVerdict, int] = {
    RunVerdict.PASS: EXIT_OK,
    RunVerdict.INCONCLUSIVE: EXIT_OK,
    RunVerdict.FAIL: EXIT_FAIL,
    RunVerdict.ERROR: EXIT_INPUT,
    RunVerdict.INCOMPLETE: EXIT_INCOMPLETE,
}
#: What ``loadkit analyze --help`` says about its exit status.
EXIT_HELP = (
    "exit status: 0 pass (or inconclusive: the load never provoked a limit), 1 a limit "
    "violated or an SLO missed, 2 error (a key's answers are not the API's: wrong URL or "
    "layout, refused key, no answer) or input that cannot be analysed, 3 incomplete "
    "(interrupted, killed, a worker lost, or records missing)"
)
CONSOLE_METRICS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "headers_ms")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _problems(summary: Summary) -> list[str]:
    """The lines that go above everything: why the run is an error or incomplete."""
    lines = [f"ERROR: {k.problem}" for k in summary.keys or () if k.problem]
    if summary.completeness is not None:
        lines += [f"INCOMPLETE: {r}" for r in summary.completeness.reasons]
    return lines


def status_table(summary: Summary) -> list[str]:
    """Each key's inference requests by answer: 2xx, 429 by the limit that refused them,
    other 4xx, 5xx, no response (and, where there were any, other statuses and cancelled)."""
    keys = summary.keys or ()
    if not keys:
        return []
    other = any(k.other_status for k in keys)
    cancelled = any(k.cancelled for k in keys)
    models = any(k.limited.models for k in keys)
    head = (
        f"{'requests by key':<16} {'tier':<10} {'2xx':>8} {'429 req':>8} {'429 conc':>9} "
        f"{'429 tok':>8}"
        + (f" {'429 model':>9}" if models else "")
        + f" {'429 ?':>7} {'4xx':>8} {'5xx':>7} {'no resp':>8}"
        + (f" {'other':>7}" if other else "")
        + (f" {'cancelled':>9}" if cancelled else "")
    )
    lines = [head]
    for k in keys:
        lim = k.limited
        row = (
            f"{k.key:<16} {k.tier or '-':<10} {k.ok:>8} {lim.requests:>8} "
            f"{lim.concurrency:>9} {lim.tokens:>8}"
            + (f" {lim.models or 0:>9}" if models else "")
            + f" {lim.unattributed:>7} "
            f"{k.client_error:>8} {k.server_error:>7} {k.no_response:>8}"
            + (f" {k.other_status:>7}" if other else "")
            + (f" {k.cancelled:>9}" if cancelled else "")
            + ("  UNUSABLE" if not k.usable else "")
        )
        lines.append(row)
    return lines


def _volume(x: float) -> str:
    """A token volume as the table shows it: whole, or to one decimal when a bound is not."""
    return f"{x:.0f}" if x == int(x) else f"{x:.1f}"


def token_rows(tokens: Sequence[TokenLimit], width: int = 12) -> list[str]:
    """The verdict table's rows of the token and per-day promises (summary.json
    ``tokens``), in the request rows' columns, each followed by what the service
    advertised where it broke its word (a reset that did not come, remaining tokens that
    disagree) and, for a promise the run could not reach, why."""
    lines = []
    for t in tokens:
        v = t.verdict
        lines.append(
            f"{t.key:<16} {t.tier:<10} {t.kind:<{width}} {v.promise.limit:>9} "
            f"{_volume(v.observed_max):>9} {_volume(v.observed_max_possible):>9} "
            f"{_volume(v.offered_max):>8}  {v.enforced:<12} {v.honoured:<12}"
        )
        r = t.reset
        if r.verdict not in (Verdict.INCONCLUSIVE, Verdict.UNUSABLE):
            lines.append(f"{'':<16} reset: {r.verdict} ({r.checked} checked, {r.broken} broken)")
        rh = t.remaining_header
        if rh is not None and rh.verdict == HeaderAgreement.DISAGREES:
            lines.append(
                f"{'':<16} x-ratelimit-remaining-tokens: disagrees on "
                f"{rh.disagreements}/{rh.checked}"
            )
        if v.reach and v.enforced is not Verdict.UNUSABLE:
            lines.append(f"{'':<16} {v.reach}")
    return lines


def console_table(summary: Summary, run_dir: str | os.PathLike[str] | None = None) -> str:
    """What went wrong first (an unusable key, missing records), then the requests by key
    and status, the verdict per key and kind, key latency percentiles, SLO checks and the
    verdict with its reasons."""
    from loadkit.analysis.limits import RequestsLimit

    run = summary.run
    lines = _problems(summary)
    lines.append(
        f"run {run.run_id} ({run.engine}, {run.records} records"
        + (", INTERRUPTED" if run.interrupted else "")
        + ")"
    )
    table = status_table(summary)
    if table:
        lines.append("")
        lines.extend(table)
    tokens = summary.tokens or ()
    if summary.limits or tokens:
        names = [e.kind for e in summary.limits] + [t.kind for t in tokens]
        width = max(12, *(len(k) for k in names))
        lines.append("")
        lines.append(
            f"{'key':<16} {'tier':<10} {'kind':<{width}} {'promised':>9} {'observed':>9} "
            f"{'possible':>9} {'offered':>8}  {'enforced':<12} {'honoured':<12}"
        )
        for e in summary.limits:
            v = e.verdict
            lines.append(
                f"{e.key:<16} {e.tier:<10} {e.kind:<{width}} {v.promised:>9} "
                f"{v.observed_max:>9} {v.observed_max_possible:>9} {v.offered_max:>8}  "
                f"{v.enforced:<12} {v.honoured:<12}"
            )
            if not isinstance(e, RequestsLimit):
                continue
            ra = e.retry_after
            if ra.verdict not in (Verdict.INCONCLUSIVE, Verdict.UNUSABLE):
                lines.append(
                    f"{'':<16} retry-after: {ra.verdict} ({ra.checked} checked, {ra.broken} broken)"
                )
            rh = e.remaining_header
            if rh is not None and rh.verdict == HeaderAgreement.DISAGREES:
                lines.append(
                    f"{'':<16} x-ratelimit-remaining: disagrees on {rh.disagreements}/{rh.checked}"
                )
        lines.extend(token_rows(tokens, width))
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
    lines.append(f"VERDICT: {summary.headline or summary.verdict.upper()}")
    if summary.verdict != RunVerdict.PASS:
        lines.extend(f"  - {r}" for r in summary.verdict_reasons)
    if summary.report:
        report = Path(summary.report)
        if run_dir is not None and not report.is_absolute():
            report = Path(run_dir) / report
        lines.append(f"report: {report}")
    return "\n".join(lines)


QUIET_REASONS = 3  # verdict reasons ``--quiet`` prints


def quiet_line(summary: Summary, run_dir: str | os.PathLike[str] | None = None) -> str:
    """``--quiet``'s one line for a run that did not pass: the verdict, its first reasons,
    and how many it left out (and where they are)."""
    from loadkit.analysis.overall import UNTESTED

    # A group's heading is not a reason of its own.
    reasons = [r for r in summary.verdict_reasons if r != UNTESTED]
    line = f"loadkit analyze: {summary.headline or summary.verdict}"
    if reasons:
        line += ": " + "; ".join(reasons[:QUIET_REASONS])
    left = len(reasons) - QUIET_REASONS
    if left > 0:
        where = f"{Path(run_dir) / 'summary.json'}" if run_dir is not None else "summary.json"
        line += (
            f" (and {left} more reason{'s' if left > 1 else ''}: in {where}, "
            "or run without --quiet)"
        )
    return line


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
        print(quiet_line(summary, run_dir), file=sys.stderr)
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
