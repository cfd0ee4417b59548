"""A scenario's work cut into *roles* for the Locust users: one closed-loop user of a key's
load phase, or the scheduler of an open-loop phase. The master hands a key's roles to the
one process that drives the key; they travel as plain lists (``RoleSpec``) and become
``Role`` objects again on the worker, with the worker's own copy of the key."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loadkit.scenario import Key, LoadSpec, Scenario

# (plan position, index of the load phase in scenario.load, "closed" | "open", user)
RoleSpec = tuple[int, int, str, int]


@dataclass(frozen=True)
class Role:
    index: int  # position in the plan: seeds the role's RNG like the asyncio engine
    key: Key
    load: LoadSpec
    kind: str  # "closed" (one user of a closed-loop phase) or "open" (a phase's scheduler)
    user: int = 0


def role_specs(scenario: Scenario, pairs: list[tuple[Key, LoadSpec]]) -> dict[str, list[RoleSpec]]:
    """Every key's roles in plan order (``pairs`` is ``plan(scenario, keys)``)."""
    out: dict[str, list[RoleSpec]] = {}
    for i, (key, load) in enumerate(pairs):
        n = next(j for j, ld in enumerate(scenario.load) if ld is load)
        specs = out.setdefault(key.label, [])
        if load.pattern == "closed":
            specs += [(i, n, "closed", u) for u in range(load.concurrency)]
        else:
            specs.append((i, n, "open", 0))
    return out


def roles_from(specs: Sequence[Sequence[Any]], key: Key, scenario: Scenario) -> list[Role]:
    """The roles a grant names (``RoleSpec``s, as lists after the trip through msgpack),
    for this process's copy of ``key``."""
    return [Role(int(i), key, scenario.load[int(n)], str(kind), int(u)) for i, n, kind, u in specs]


def weight(kind: str, default: int) -> int:
    """Plain mode task weights: LOADKIT_MIX="chat_stream=2,chat=1,models=0"."""
    mix = os.environ.get("LOADKIT_MIX", "")
    for part in mix.split(","):
        name, _, value = part.partition("=")
        if name.strip() == kind and value.strip():
            return int(float(value))
    return 0 if mix else default
