"""The nightly CI recipe cannot rot: its loadkit commands parse with the real CLI, the
scenario files it names exist, it stores every run and gates on ``history check``, and the
database URL never appears on a command line."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from loadkit.cli import _build_parser

ROOT = Path(__file__).resolve().parents[2]
RECIPE = (ROOT / "examples" / "ci" / "nightly.yml").read_text(encoding="utf-8")


def loadkit_commands() -> list[list[str]]:
    out = []
    for line in RECIPE.splitlines():
        text = re.sub(r"^\s*(- )?(run: )?", "", line)
        if text.startswith("loadkit "):
            text = re.sub(r"\$\{\{[^}]*\}\}", "https://staging.example/api/v1", text)
            out.append(shlex.split(text)[1:])
    return out


def test_every_loadkit_command_parses():
    parser = _build_parser()
    seen = set()
    for words in loadkit_commands():
        args = parser.parse_args(words)
        seen.add((args.command, getattr(args, "history_command", None)))
        if args.command == "run":
            assert args.history == "", "runs are stored in the history ($LOADKIT_HISTORY_DB)"
            assert (ROOT / args.scenario).exists(), args.scenario
        if args.command == "history":
            assert getattr(args, "db", None) is None, "the URL stays in the environment"
    assert {("run", None), ("history", "check"), ("history", "report")} <= seen


def test_the_database_is_kept_between_nights():
    assert "LOADKIT_HISTORY_DB: ${{ secrets.HISTORY_DB_URL || 'loadkit-history.db' }}" in RECIPE
    assert "actions/cache/restore@v4" in RECIPE and "actions/cache/save@v4" in RECIPE
    assert RECIPE.count("path: loadkit-history.db") == 2
    assert "history check --junit" in RECIPE
