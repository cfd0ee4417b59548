"""The README cannot rot: its commands parse with the real CLI, the files they name exist
and parse, and CI runs the README's own test command."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from loadkit.cli import _build_parser
from loadkit.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, flags=re.S)


def commands() -> list[list[str]]:
    """Every simple command in the README's shell blocks (split on && and ;)."""
    out = []
    for block in shell_blocks():
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            for part in re.split(r"&&|;", line):
                words = shlex.split(part.strip().rstrip("&").strip())
                while words and "=" in words[0] and not words[0].startswith("-"):
                    words = words[1:]  # VAR=value prefixes
                if words:
                    out.append(words)
    return out


def test_two_command_setup():
    first, second = shell_blocks()[0].strip().splitlines()
    assert "pip install -e '.[test]'" in first and first.rstrip().endswith("loadkit run")
    assert second.strip() == "python -m pytest -q -n 2"
    ci = (ROOT / ".ci" / "run").read_text()
    # CI installs what the README's first command installs (and may add its static tools).
    readme_extras = set(re.search(r"'\.\[([^\]]*)\]'", first).group(1).split(","))
    ci_install = re.search(r"pip install -q -e '\.\[([^\]]*)\]'", ci)
    assert ci_install is not None, ".ci/run installs the project"
    assert readme_extras <= set(ci_install.group(1).split(","))
    assert ci.strip().splitlines()[-1] == second.strip(), "CI runs the README's test command"


def test_every_loadkit_command_parses():
    parser = _build_parser()
    seen = set()
    for words in commands():
        if words[0] != "loadkit":
            continue
        args = parser.parse_args(words[1:])
        seen.add(args.command)
        for attr in ("scenario",):
            path = getattr(args, attr, None)
            if path:
                assert (ROOT / path).exists(), f"README names {path}, which does not exist"
                load_scenario(ROOT / path)
    assert {"run", "serve", "analyze", "compare", "sweep"} <= seen


@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.toml"))
)
def test_example_scenarios_parse(path):
    assert load_scenario(ROOT / path).load


def test_linked_files_exist():
    for link in re.findall(r"\]\(((?:docs|examples|locustfiles|benchmarks)/[^)#]*)\)", README):
        assert (ROOT / link).exists(), f"README links to missing {link}"


def test_locust_commands_name_real_files():
    from loadkit.locust_engine import locustfile

    seen = 0
    for words in commands():
        if words[0] == "locust":
            f = words[words.index("-f") + 1]
            if f == "$(loadkit":  # `locust -f $(loadkit locustfile)`: the installed file
                assert words[words.index("-f") + 2] == "locustfile)"
                f = str(locustfile())
            assert (ROOT / f).exists(), f
            seen += 1
    assert seen, "the README shows how to run Locust directly"
