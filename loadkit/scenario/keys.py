"""Access keys for a scenario's tiers, from environment variables and keys files: the only
place a secret enters loadkit's client side. Keys never live in a scenario, and an error
names the variable, file and line, never a key."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from loadkit.scenario.model import Key, Scenario, ScenarioError, TierSpec


def resolve_keys(scenario: Scenario, environ: Mapping[str, str] | None = None) -> list[Key]:
    """Keys for a non-embedded target, from each tier's ``keys_env`` and/or ``keys_file``.
    A keys file holds one key per line, optionally ``label key``; ``#`` starts a comment."""
    env = os.environ if environ is None else environ
    out = [key for tier in scenario.tiers.values() for key in _tier_keys(tier, env)]
    labels = [k.label for k in out]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise ScenarioError(f"key labels are not unique: {', '.join(sorted(dup))}")
    return out


def _tier_keys(tier: TierSpec, env: Mapping[str, str]) -> list[Key]:
    secrets: list[tuple[str | None, str]] = []
    if tier.keys_env:
        raw = env.get(tier.keys_env, "")
        if not raw.strip():
            raise ScenarioError(
                f"tiers.{tier.name}.keys_env: environment variable "
                f"{tier.keys_env} is empty or not set"
            )
        secrets += [(None, s.strip()) for s in raw.split(",") if s.strip()]
    if tier.keys_file:
        secrets += _read_keys_file(tier.keys_file, tier.name)
    if not secrets:
        raise ScenarioError(
            f"tiers.{tier.name}: no keys: set keys_env or keys_file "
            "(keys are never written in a scenario)"
        )
    if tier.keys:
        secrets = secrets[: tier.keys]
    return [
        Key(label or f"{tier.name}-{i}", tier.name, secret)
        for i, (label, secret) in enumerate(secrets, 1)
    ]


def _read_keys_file(path: str, tier: str) -> list[tuple[str | None, str]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ScenarioError(
            f"tiers.{tier}.keys_file: cannot read {path} ({exc.strerror})"
        ) from None
    out: list[tuple[str | None, str]] = []
    for n, line in enumerate(lines, 1):
        parts = line.split("#", 1)[0].split()
        if len(parts) == 1:
            out.append((None, parts[0]))
        elif len(parts) == 2:
            out.append((parts[0], parts[1]))
        elif parts:
            raise ScenarioError(
                f"tiers.{tier}.keys_file: {path}:{n}: expected 'KEY' or 'LABEL KEY'"
            )
    return out
