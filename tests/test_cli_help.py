"""What `loadkit --help` and each command's --help tell a user: every argument and option
described with its default, the exit status, the environment read; `loadkit --version`."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version

import pytest

from loadkit.cli import _build_parser, main


def commands(
    parser: argparse.ArgumentParser, path: str = "loadkit"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, f"{path} {name}")


ALL = list(commands(_build_parser()))


def test_every_command_is_covered():
    names = {path for path, _ in ALL}
    expected = {"run", "serve", "analyze", "compare", "sweep", "locustfile", "history"}
    assert {f"loadkit {c}" for c in expected} <= names
    assert {"loadkit history add", "loadkit history check"} <= names


@pytest.mark.parametrize(("path", "parser"), ALL, ids=[p for p, _ in ALL])
def test_help_describes_every_argument_its_default_and_the_exit_status(path, parser):
    text = " ".join(parser.format_help().split())  # unwrapped
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            undescribed = [a.dest for a in action._choices_actions if not a.help]
            assert not undescribed, f"{path}: subcommands without help: {undescribed}"
            continue
        assert action.help and action.help != argparse.SUPPRESS, f"{path}: {action.dest}"
        default = action.default
        if default not in (None, False, "", [], argparse.SUPPRESS) and action.nargs != 0:
            shown = {str(default), f"{default:g}" if isinstance(default, float) else ""}
            assert any(f"default {d}" in text or f"default: {d}" in text for d in shown if d), (
                f"{path}: {action.dest}'s default {default!r} is not shown"
            )
    assert "exit status:" in text, f"{path}: no exit status"


def test_help_names_the_environment_it_reads(capsys):
    def help_of(*argv: str) -> str:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--help"])
        assert exc.value.code == 0
        return " ".join(capsys.readouterr().out.split())

    run = help_of("run")
    assert "LOADKIT_FREE_KEYS=k1,k2" in run and "LOADKIT_HISTORY_DB" in run
    assert "3 incomplete" in run and "130 when interrupted" in run
    assert "LOADKIT_HISTORY_DB" in help_of("history", "check")
    assert "(default: 8080)" in help_of("serve")
    top = help_of()
    assert "keys_env" in top and "loadkit COMMAND --help" in top


def test_version_is_the_installed_package_version():
    out = subprocess.run(
        [sys.executable, "-m", "loadkit", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    assert out.stdout.strip() == f"loadkit {version('loadkit')}"
