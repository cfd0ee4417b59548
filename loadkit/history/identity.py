"""Where a run came from, read from flags, the CI environment or the git checkout: the
commit and branch under test and free-form tags (``--tag env=staging``,
``LOADKIT_TAGS="env=staging,region=eu"``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence

from loadkit.history.ingest import Identity

TAGS_ENV = "LOADKIT_TAGS"
# first set wins: loadkit's own, then GitHub Actions, GitLab CI, Jenkins
COMMIT_ENVS = ("LOADKIT_GIT_COMMIT", "GITHUB_SHA", "CI_COMMIT_SHA", "GIT_COMMIT")
BRANCH_ENVS = ("LOADKIT_GIT_BRANCH", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME", "GIT_BRANCH")
GIT_TIMEOUT_S = 5.0


class TagSyntaxError(ValueError):
    pass


def parse_tags(items: Sequence[str], env_value: str | None = None) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` items (flags override the environment's comma-separated list)."""
    tags: dict[str, str] = {}
    env_items = [t for t in (env_value or "").split(",") if t.strip()]
    for source, seq in ((TAGS_ENV, env_items), ("--tag", list(items))):
        for item in seq:
            name, sep, value = item.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not name:
                raise TagSyntaxError(f"{source} {item!r}: expected NAME=VALUE")
            if len(name) > 100 or len(value) > 500:
                raise TagSyntaxError(f"{source} {item!r}: name over 100 or value over 500 chars")
            tags[name] = value
    return tuple(sorted(tags.items()))


def _git(args: Sequence[str], cwd: str | None) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None


def detect_identity(
    commit: str | None = None,
    branch: str | None = None,
    tags: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    use_git: bool = True,
) -> Identity:
    """Flags first, then the CI's environment, then ``git`` in ``cwd`` (the checkout the
    job runs in)."""
    env = os.environ if env is None else env
    commit = commit or next((env[e] for e in COMMIT_ENVS if env.get(e)), None)
    branch = branch or next((env[e] for e in BRANCH_ENVS if env.get(e)), None)
    if use_git and commit is None:
        commit = _git(["rev-parse", "HEAD"], cwd)
    if use_git and branch is None and commit is not None:
        b = _git(["rev-parse", "--abbrev-ref", "HEAD"], cwd)
        branch = b if b != "HEAD" else None
    return Identity(
        git_commit=commit[:64] if commit else None,
        git_branch=branch[:200] if branch else None,
        tags=parse_tags(tags, env.get(TAGS_ENV)),
    )
