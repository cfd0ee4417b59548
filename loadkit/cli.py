"""The ``loadkit`` command line: parse, call the library, print. Heavy imports (pandas,
matplotlib, aiohttp, locust) happen inside the command that needs them."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

from loadkit.stop_signals import stop_signals

# What each command's --help says about its exit status and the environment it reads.
ANALYSIS_EXIT = (
    "0 pass (or inconclusive: the load never provoked a limit), 1 a limit violated or an "
    "SLO missed, 2 error (a key's answers are not the API's: wrong URL or layout, refused "
    "key, no answer) or input that cannot be analysed, 3 incomplete (interrupted, killed, "
    "a worker lost, or records missing)"
)
EPILOGS = {
    "": "exit status: each command's --help says; 2 for a command line that does not "
    "parse.\n\nenvironment: keys come from the variables a scenario's tiers name "
    "(keys_env, e.g. LOADKIT_FREE_KEYS=k1,k2), never from the command line; "
    "LOADKIT_HISTORY_DB is the history database. `loadkit COMMAND --help` for the rest.",
    "serve": "exit status: 0 stopped (Ctrl-C, SIGTERM, its parent gone), 1 cannot listen on "
    "the address, 2 a config that does not load.\n\nThe keys it accepts are written to "
    "--keys-file (mode 0600), never printed.",
    "run": f"exit status: {ANALYSIS_EXIT}; 2 also for a scenario that does not load or a "
    "pre-flight check that fails (nothing sent), and when --history cannot store the run; "
    "with --no-analyze 0, or 130 when interrupted.\n\nenvironment: each tier's keys "
    "from the variable its keys_env names (e.g. LOADKIT_FREE_KEYS=k1,k2) or its "
    "keys_file; ${VAR} in [target] headers is read "
    "from the environment; --history's database defaults to LOADKIT_HISTORY_DB. Ctrl-C "
    "stops gracefully (open requests get the drain, every record is kept); a second "
    "Ctrl-C stops at once.",
    "analyze": f"exit status: {ANALYSIS_EXIT}",
    "compare": "exit status: 0 no regression, 1 a regression (worse beyond its threshold "
    "and statistically significant, or a limit that held in BASE violated in NEW), 2 input "
    "that cannot be compared (a run incomplete or an error without --allow-incomplete, a "
    "bad --threshold, a folder that is not an analysable run). Runs that differ in "
    "scenario, target, engine or completeness are compared with a warning.",
    "sweep": "exit status: 0 the sweep ran (its capacity report says where the SLO broke), "
    "2 a scenario that does not load or has no [sweep] table.",
    "locustfile": "exit status: 0.\n\nThe locustfile reads keys from LOADKIT_<TIER>_KEYS "
    "or --loadkit-keys-file; `locust -f $(loadkit locustfile) --help` lists its options.",
    "history": "exit status: 0 done, 1 (check) a regression or a broken limit, 2 bad input "
    "or an unreachable database.\n\nenvironment: LOADKIT_HISTORY_DB (the database), "
    "LOADKIT_TAGS (tags for add), LOADKIT_GIT_COMMIT / LOADKIT_GIT_BRANCH and CI "
    "variables (the commit and branch under test).",
}


class _Help(argparse.HelpFormatter):
    """Every option's default shown where it has one (not for flags, unset options or help
    that already names it); descriptions and epilogs wrapped paragraph by paragraph."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(
            textwrap.fill(para, width, initial_indent=indent, subsequent_indent=indent)
            for para in text.split("\n\n")
        )

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default in (None, False, "", [], argparse.SUPPRESS)
            or action.nargs == 0
        ):
            return text
        return f"{text} (default: %(default)s)"


def _document(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give ``parser`` and every subcommand under it the help formatter and their epilog
    (a subcommand without one of its own says its command's)."""
    parser.formatter_class = _Help
    if parser.epilog is None:
        parser.epilog = EPILOGS.get(path) or EPILOGS.get(path.split(" ")[0])
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None and helps.get(name):
                    sub.description = f"{name}: {helps[name]}"
                _document(sub, f"{path} {name}".strip())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loadkit")
    except PackageNotFoundError:
        from loadkit import __version__

        return __version__


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loadkit",
        description="Load-test OpenAI-compatible AI APIs and prove whether their rate limits hold.",
    )
    p.add_argument("--version", action="version", version=f"loadkit {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser(
        "serve", help="run the reference server (implements API.md, limits included)"
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    s.add_argument(
        "--config", metavar="FILE", help="server TOML config (tiers, keys, models, faults)"
    )
    s.add_argument(
        "--truth", metavar="FILE", help="append one JSON line per request (ground truth)"
    )
    s.add_argument(
        "--keys-file",
        metavar="FILE",
        help="write the access keys here (mode 0600); default: a file in a temp folder",
    )
    s.add_argument(
        "--ready-file",
        metavar="FILE",
        help="when listening, write {host, port, base_url, keys_file} here as JSON",
    )
    s.add_argument(
        "--api",
        choices=("seed", "openai"),
        help="path layout: seed (/api/v1/ai/..., the default) or openai (/v1/...); "
        "overrides [server] api",
    )
    s.add_argument("--quiet", action="store_true", help="print nothing at start-up")
    s.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: auto (uvloop when installed, else asyncio), asyncio or uvloop",
    )
    s.add_argument(
        "--parent-pid",
        type=int,
        metavar="PID",
        help="stop when process PID is no longer this server's parent (it died)",
    )
    s.add_argument(
        "--cleanup-dir",
        metavar="DIR",
        help="with --parent-pid: delete DIR (keys, ready file) if the parent dies",
    )

    r = sub.add_parser(
        "run", help="run a scenario (default: the built-in one on the embedded server)"
    )
    r.add_argument(
        "scenario",
        nargs="?",
        help="scenario TOML file; omit for the built-in default (the embedded reference "
        "server, every limit probed)",
    )
    r.add_argument(
        "--engine",
        choices=("async", "locust"),
        default=None,
        help="load engine (default: the scenario's, else locust)",
    )
    r.add_argument("--out", metavar="DIR", help="output directory (default: runs/<run id>)")
    r.add_argument("--duration", type=float, metavar="SECONDS", help="override the run duration")
    r.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="async engine: worker processes, each owning whole keys (default: one per "
        "available core; 0 or 1: one process); locust engine: local worker processes "
        "(default 0: one local process)",
    )
    r.add_argument("--target", metavar="URL", help="override the scenario's target base URL")
    r.add_argument(
        "--no-preflight",
        action="store_true",
        help="skip the pre-flight check of the target (models, every key, a stream)",
    )
    r.add_argument("--no-analyze", action="store_true", help="only write records, no analysis")
    r.add_argument(
        "--no-charts",
        action="store_true",
        help="analyse (summary.json, verdicts, exit status) without PNG charts and the HTML "
        "report, as loadkit analyze --no-charts",
    )
    r.add_argument(
        "--parquet",
        action="store_true",
        help="also write the records as records.parquet at the end",
    )
    r.add_argument(
        "--no-twins",
        action="store_true",
        help="no Parquet twins beside the record files (the scenario's [run] "
        "parquet_twins = false): a large run's analysis then parses the JSONL",
    )
    r.add_argument(
        "--quiet",
        action="store_true",
        help="no progress line and no console table; a run that did not pass still gets "
        "one line with its first reasons and how many more there are",
    )
    r.add_argument(
        "--history",
        nargs="?",
        const="",
        metavar="URL",
        help="after the analysis, add the run to a history database (default: "
        "$LOADKIT_HISTORY_DB, else loadkit-history.db)",
    )

    a = sub.add_parser(
        "analyze",
        help="metrics, limit verdicts, charts and report for a run",
        epilog="exit status: 0 pass (or inconclusive: the load never provoked a limit), "
        "1 a limit violated or an SLO missed, 2 error (a key's answers are not the API's: "
        "wrong URL or layout, refused key, no answer) or input that cannot be analysed, "
        "3 incomplete (interrupted, killed, a worker lost, or records missing)",
    )
    a.add_argument("run_dir", metavar="DIR", help="a run folder (run.json and records)")
    a.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="METRIC.STAT=VALUE",
        help="an SLO such as ttft_ms.p99=800 or error_rate=0.01 (repeatable)",
    )
    a.add_argument("--no-charts", action="store_true", help="skip PNG charts and the HTML report")
    a.add_argument(
        "--quiet",
        action="store_true",
        help="no console table; a run that did not pass gets one line on stderr with its "
        "first reasons and how many more there are",
    )

    c = sub.add_parser("compare", help="compare two analysed runs; exit 1 on a regression")
    c.add_argument("base", metavar="BASE", help="the reference run's folder")
    c.add_argument("new", metavar="NEW", help="the run to judge against BASE")
    c.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="METRIC.STAT=PCT",
        help="allowed worsening in percent, e.g. ttft_ms.p99=10 or default=15 "
        "(repeatable; 10 for every metric not named)",
    )
    c.add_argument("--junit", metavar="FILE", help="write JUnit XML (one test case per check)")
    c.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="compare even when a run is incomplete or an error (warned, and a failing "
        "JUnit case); without it such a run is refused with exit 2",
    )

    w = sub.add_parser("sweep", help="capacity sweep: step the offered load until an SLO fails")
    w.add_argument(
        "scenario", nargs="?", help="scenario TOML with a [sweep] table; omit for a demo"
    )
    w.add_argument("--out", metavar="DIR", help="output folder (default: runs/sweep-<run id>)")
    w.add_argument("--engine", choices=("async",), default="async", help="load engine")
    w.add_argument("--quiet", action="store_true", help="no progress line")

    from loadkit.history.cli import add_history_parser

    add_history_parser(sub)

    sub.add_parser(
        "locustfile",
        help="print the path of the installed locustfile (for `locust -f $(loadkit locustfile)`)",
    )
    _document(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "serve":
            from loadkit.server.main import serve_main

            return serve_main(args)
        if args.command == "run":
            from loadkit.run import run_main

            return run_main(args)
        if args.command == "analyze":
            from loadkit.analysis.cli import analyze_main

            with stop_signals():  # an unfinished column cache is removed on these too
                return analyze_main(args)
        if args.command == "compare":
            from loadkit.analysis.compare import compare_main

            with stop_signals():
                return compare_main(args)
        if args.command == "locustfile":
            from loadkit.locust_engine import locustfile

            print(locustfile())
            return 0
        if args.command == "sweep":
            from loadkit.sweep import sweep_main

            return sweep_main(args)
        if args.command == "history":
            from loadkit.history.cli import history_main

            return history_main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
