"""``loadkit history add|report|show|check``: parse, call the history library, print.
SQLAlchemy, scipy and matplotlib are imported inside the commands, so building this
parser costs nothing at ``loadkit --help``."""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from loadkit.history.gate import GateSettings, SeriesVerdict
    from loadkit.history.trends import Detection

EXIT_OK, EXIT_REGRESSION, EXIT_INPUT = 0, 1, 2
STALE_AFTER_H = 36.0  # check skips series whose latest run is this much older than the newest
DB_HELP = (
    "history database: a SQLite file or a postgresql:// URL "
    "(default: $LOADKIT_HISTORY_DB, else loadkit-history.db)"
)


def _detection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pvalue",
        type=float,
        default=0.001,
        help="significance level of a change point (default 0.001; higher finds more, "
        "and more false ones)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=50,
        metavar="RUNS",
        help="runs per detection window (default 50)",
    )
    p.add_argument(
        "--min-magnitude",
        type=float,
        default=5.0,
        metavar="PCT",
        help="smallest relative change that counts as a regression, in percent (default 5)",
    )
    p.add_argument(
        "--min-rate-change",
        type=float,
        default=1.0,
        metavar="PP",
        help="same for error and 429 rates, in percentage points (default 1)",
    )


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", help=DB_HELP)
    p.add_argument("--scenario", metavar="NAME", help="only this scenario's runs")
    p.add_argument(
        "--since",
        metavar="AGE",
        help="only runs started since: 30d, 12h, 2w or a date (2026-11-01)",
    )


def add_history_parser(sub: Any) -> None:
    """Add ``history`` and its subcommands to the loadkit parser's subparsers."""
    h = sub.add_parser("history", help="nightly history: store runs, trends, regression gate")
    hs = h.add_subparsers(dest="history_command", metavar="SUBCOMMAND")

    a = hs.add_parser("add", help="store analysed run folders (the same run twice: no-op)")
    a.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="analysed run folders")
    a.add_argument("--db", metavar="URL", help=DB_HELP)
    a.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a tag for the run (repeatable; also $LOADKIT_TAGS=a=1,b=2)",
    )
    a.add_argument("--commit", help="git commit under test (default: CI environment, else git)")
    a.add_argument("--branch", help="git branch under test (default: CI environment, else git)")

    r = hs.add_parser("report", help="HTML page and PNG charts of the trends")
    _selection_args(r)
    r.add_argument("--tier", default="", help="chart this tier's figures instead of overall")
    r.add_argument(
        "--out",
        metavar="DIR",
        default="history-report",
        help="output folder (default history-report)",
    )
    _detection_args(r)

    s = hs.add_parser("show", help="the trends as text tables")
    _selection_args(s)
    s.add_argument("--tier", default="", help="this tier's figures instead of overall")
    s.add_argument("--last", type=int, default=20, metavar="N", help="runs per series (default 20)")
    _detection_args(s)

    c = hs.add_parser(
        "check", help="exit 1 if the latest run starts a regression or breaks a limit"
    )
    _selection_args(c)
    c.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME",
        help="metric to gate on (repeatable; default: TTFT/ITL/e2e p50 and p99, throughput, "
        "error and 429 rates)",
    )
    c.add_argument(
        "--recent",
        type=int,
        default=5,
        metavar="N",
        help="a regression must start within the last N runs (default 5)",
    )
    c.add_argument(
        "--confirm",
        type=int,
        default=1,
        metavar="N",
        help="runs at the new level before a regression counts (default 1: the latest run "
        "alone; 2 ignores one-night outliers)",
    )
    c.add_argument(
        "--held-nights",
        type=int,
        default=3,
        metavar="K",
        help="fail when a limit verdict that held the K nights before is violated now (default 3)",
    )
    c.add_argument(
        "--repeat",
        action="store_true",
        help="fail every night while a regression is recent, not only the night it is found",
    )
    c.add_argument("--junit", metavar="FILE", help="write JUnit XML (one test case per check)")
    _detection_args(c)


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """``30d``/``12h``/``2w``/``90m`` ago, or an ISO date or time (UTC unless it says)."""
    if not text:
        return None
    now = time.time() if now is None else now
    m = _AGE.match(text)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: expected 30d, 12h, 2w, 90m or a date") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _detection(args: argparse.Namespace) -> Detection:
    from loadkit.history.trends import Detection

    return Detection(
        max_pvalue=args.pvalue,
        window=args.window,
        min_magnitude=args.min_magnitude / 100.0,
        min_rate_change=args.min_rate_change / 100.0,
    )


def history_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from loadkit.history.identity import TagSyntaxError
    from loadkit.history.ingest import IngestError
    from loadkit.history.store import StoreError

    out = out or sys.stdout
    command = getattr(args, "history_command", None)
    if command is None:
        print(
            "loadkit history: add, report, show or check (see loadkit history --help)",
            file=sys.stderr,
        )
        return EXIT_INPUT
    try:
        if command == "add":
            return cmd_add(args, out)
        if command == "report":
            return cmd_report(args, out)
        if command == "show":
            return cmd_show(args, out)
        if command == "check":
            return cmd_check(args, out)
    except (StoreError, IngestError, TagSyntaxError, ValueError) as exc:
        print(f"loadkit history {command}: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(f"loadkit history: unknown subcommand {command!r}", file=sys.stderr)
    return EXIT_INPUT


def cmd_add(args: argparse.Namespace, out: TextIO) -> int:
    from loadkit.history.identity import detect_identity
    from loadkit.history.ingest import IngestError, read_run_dir
    from loadkit.history.store import open_store

    identity = detect_identity(args.commit, args.branch, args.tag)
    status = EXIT_OK
    with open_store(args.db) as store:
        for run_dir in args.run_dirs:
            try:
                item = read_run_dir(run_dir, identity)
            except IngestError as exc:
                print(f"loadkit history add: {exc}", file=sys.stderr)
                status = EXIT_INPUT
                continue
            for w in item.warnings:
                print(f"loadkit history add: {run_dir}: {w}", file=sys.stderr)
            rid, added = store.add(item)
            what = "added" if added else "already in the history"
            print(
                f"{run_dir}: {what} as run #{rid} ({item.run.scenario}, {item.run.started_at}, "
                f"verdict {item.run.verdict}) in {store.name}",
                file=out,
            )
    return status


def add_after_run(run_dir: str | Path, db: str | None) -> int:
    """``loadkit run --history``: store the run just analysed. 0 on success, else 2 (with
    the reason on stderr)."""
    ns = argparse.Namespace(
        history_command="add",
        run_dirs=[str(run_dir)],
        db=db or None,
        tag=[],
        commit=None,
        branch=None,
    )
    return history_main(ns, out=sys.stderr)


def cmd_report(args: argparse.Namespace, out: TextIO) -> int:
    from loadkit.history.report import write_report
    from loadkit.history.store import open_store

    det = _detection(args)
    since = parse_since(args.since)
    with open_store(args.db) as store:
        page, views = write_report(store, Path(args.out), det, args.scenario, since, args.tier)
    runs = sum(len(v.runs) for v in views)
    print(f"history report: {page} ({len(views)} series, {runs} runs)", file=out)
    return EXIT_OK


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    from loadkit.history.report import collect, render_text
    from loadkit.history.store import open_store

    if args.last < 1:
        raise ValueError(f"--last: must be >= 1, got {args.last}")
    det = _detection(args)
    with open_store(args.db) as store:
        views = collect(store, det, args.scenario, parse_since(args.since), args.tier)
    out.write(render_text(views, args.last))
    return EXIT_OK


def _gate_settings(args: argparse.Namespace) -> GateSettings:
    from loadkit.history.gate import GateSettings

    return GateSettings(
        detection=_detection(args),
        recent=args.recent,
        held_nights=args.held_nights,
        repeat=args.repeat,
        confirm=args.confirm,
    )


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    from loadkit.history.gate import judge_series
    from loadkit.history.store import open_store
    from loadkit.history.trends import GATE_METRICS, group_series, metric_spec

    settings = _gate_settings(args)
    specs = [metric_spec(m) for m in (args.metric or GATE_METRICS)]
    with open_store(args.db) as store:
        runs = store.runs(scenario=args.scenario, since_unix=parse_since(args.since))
        if not runs:
            print(
                "loadkit history check: no runs in the history for this selection", file=sys.stderr
            )
            return EXIT_INPUT
        series = group_series(runs)
        newest = max(r.started_unix for r in runs)
        judged: list[SeriesVerdict] = []
        seen: set[str] = set()
        for key, series_runs in series.items():
            age_h = (newest - series_runs[-1].started_unix) / 3600
            if args.scenario is None and age_h > STALE_AFTER_H:
                print(
                    f"skipped {key.label}: its latest run is {age_h:.0f} h older than the newest",
                    file=out,
                )
                continue
            ids = [r.id for r in series_runs]
            values = store.metric_values(ids, [s.name for s in specs])
            seen.update(name for name, by_run in values.items() if by_run)
            points = store.verdict_points(ids)
            judged.append(judge_series(key, series_runs, values, points, specs, settings))
    unknown = [m for m in args.metric if m not in seen]
    if unknown and judged:
        print(
            f"loadkit history check: --metric {', '.join(unknown)}: no such figure in these "
            "runs (names as in summary.json: ttft_ms.p99, itl_ms.p50, requests_per_s, "
            "error_rate, …)",
            file=sys.stderr,
        )
        return EXIT_INPUT
    print(render_check(judged), file=out, end="")
    if args.junit:
        _write_junit(args.junit, judged)
    failed = [v for v in judged if v.failed]
    if failed:
        what = [f"{m.metric.name}" for v in failed for m in v.metrics if m.failed]
        what += [f"{lf.label}" for v in failed for lf in v.limits if lf.failed]
        print("REGRESSION: " + ", ".join(what), file=out)
        return EXIT_REGRESSION
    if any(not v.measured_latest for v in judged):
        print("NOT JUDGED: the latest run could not be measured (see above)", file=out)
        return EXIT_INPUT
    print("no regression", file=out)
    return EXIT_OK


def render_check(judged: list[SeriesVerdict]) -> str:
    lines = []
    for v in judged:
        lines.append(
            f"== {v.key.label}: latest run {v.latest.run_id} ({v.latest.started_at}), "
            f"{v.runs_in_epoch} comparable runs"
        )
        lines += [f"  note: {n}" for n in v.notes]
        for m in v.metrics:
            tag = {"regression": "REGRESSION", "improvement": "better"}.get(m.status, m.status)
            lines.append(f"  {tag:<12} {m.metric.name:<20} {m.message}")
        for lf in v.limits:
            if lf.failed or lf.latest == "violated":
                tag = "BROKEN" if lf.failed else "violated"
                lines.append(f"  {tag:<12} {lf.label}: {lf.message}")
        ok = sum(1 for lf in v.limits if not lf.failed and lf.latest != "violated")
        if v.limits:
            lines.append(f"  limits: {ok} of {len(v.limits)} verdicts not violated")
    return "\n".join(lines) + ("\n" if lines else "")


def _write_junit(path: str, judged: list[SeriesVerdict]) -> None:
    from loadkit.analysis.junit import Case, junit_xml

    cases = []
    for v in judged:
        suite = f"loadkit history: {v.key.label}"
        for m in v.metrics:
            cases.append(
                Case(
                    suite,
                    "history.metrics",
                    m.metric.name,
                    failure=m.message if m.failed else None,
                    kind="regression",
                    detail=f"{m.status}: {m.message}",
                )
            )
        for lf in v.limits:
            cases.append(
                Case(
                    suite,
                    "history.limits",
                    lf.label,
                    failure=lf.message if lf.failed else None,
                    kind="limit broken",
                    detail=lf.message,
                )
            )
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(junit_xml(cases, name="loadkit history check"))
    except OSError as exc:
        raise ValueError(f"--junit: cannot write {path}: {exc}") from None
