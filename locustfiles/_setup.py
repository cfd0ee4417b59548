"""Everything the Locust users need to know before they send anything: keys, the run's clock,
which keys this process drives, the roles a scenario asks for, the plain-mode task weights.

Pure Python (no locust, no gevent), so the runner and pytest can import it. Values come from
``LOADKIT_*`` environment variables (see ``docs/locust.md``); errors name the variable.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadkit.scenario import (
    MIX_KINDS,
    Dist,
    Key,
    LoadSpec,
    Scenario,
    ScenarioError,
    TargetSpec,
    TierSpec,
    load_scenario,
    plan,
)

FREE_TIER = "free"
DEFAULT_PAID_TIER = "pro"
DEFAULT_WEIGHTS = "chat_stream=4,chat=2,completions_stream=1,completions=1,models=1"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
FREE_USER = "FreeTierUser"
PAID_USER = "PaidTierUser"


class SetupError(ValueError):
    """A Locust run that cannot start; the message names the variable or option."""


# ---------------------------------------------------------------------------------------
# Keys


def read_keys_file(path: str | os.PathLike[str]) -> list[Key]:
    """Keys from a JSON keys file as the reference server writes it:
    ``{"keys": [{"label", "tier", "key"}, ...]}`` (an ``admin`` entry is ignored)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SetupError(f"LOADKIT_KEYS_FILE: cannot read {p} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise SetupError(f"LOADKIT_KEYS_FILE: {p} is not JSON ({exc.msg})") from None
    rows = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise SetupError(f'LOADKIT_KEYS_FILE: {p}: expected {{"keys": [{{label, tier, key}}]}}')
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(
            isinstance(row.get(f), str) and row.get(f) for f in ("label", "tier", "key")
        ):
            raise SetupError(
                f"LOADKIT_KEYS_FILE: {p}: keys[{i}]: expected label, tier and key strings"
            )
        out.append(Key(row["label"], row["tier"], row["key"]))
    return out


def keys_from_env(environ: Mapping[str, str]) -> list[Key]:
    """Keys for plain mode: ``LOADKIT_KEYS_FILE`` and/or ``LOADKIT_KEYS_<TIER>=k1,k2``
    (labels ``<tier>-1``, ``<tier>-2``, ...). Labels must be unique."""
    out: list[Key] = []
    if environ.get("LOADKIT_KEYS_FILE"):
        out += read_keys_file(environ["LOADKIT_KEYS_FILE"])
    for name in sorted(environ):
        if not name.startswith("LOADKIT_KEYS_") or name == "LOADKIT_KEYS_FILE":
            continue
        tier = name.removeprefix("LOADKIT_KEYS_").lower()
        secrets = [s.strip() for s in environ[name].split(",") if s.strip()]
        out += [Key(f"{tier}-{i}", tier, s) for i, s in enumerate(secrets, 1)]
    labels = [k.label for k in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise SetupError(f"LOADKIT_KEYS_*: key labels are not unique: {', '.join(dup)}")
    return out


def scenario_keys(scenario: Scenario, keys: list[Key] | None) -> list[Key]:
    """The keys a scenario run drives: from a keys file (the runner's, or the reference
    server's), trimmed to each tier's ``keys`` count; else the scenario's own
    ``keys_env`` / ``keys_file``."""
    from loadkit.scenario import resolve_keys

    if not keys:
        return resolve_keys(scenario)
    out: list[Key] = []
    for tier in scenario.tiers.values():
        mine = [k for k in keys if k.tier == tier.name]
        if not mine:
            raise SetupError(
                f"tiers.{tier.name}: no key of this tier in LOADKIT_KEYS_FILE "
                f"(its tiers: {', '.join(sorted({k.tier for k in keys}))})"
            )
        out += mine[: tier.keys] if tier.keys else mine
    return out


# ---------------------------------------------------------------------------------------
# The run's clock


def boot_id() -> str:
    try:
        return Path(BOOT_ID_PATH).read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class RunClock:
    """Seconds since the run's start, from ``time.perf_counter_ns`` (CLOCK_MONOTONIC on
    Linux, shared by every process of a machine). ``origin_ns`` is the perf counter value at
    the run's t=0: the run's own anchor on the same machine, else mapped once from the wall
    clock (``mode == "wall"``: then clocks of two machines agree only as well as NTP does)."""

    origin_ns: int
    wall_anchor: float
    mode: str  # "mono" | "wall" | "local"

    def now(self) -> float:
        return (time.perf_counter_ns() - self.origin_ns) / 1e9


def clock_from_env(environ: Mapping[str, str]) -> RunClock:
    mono = environ.get("LOADKIT_MONO_ANCHOR_NS")
    wall = environ.get("LOADKIT_WALL_ANCHOR")
    run_boot = environ.get("LOADKIT_BOOT_ID")
    try:
        wall_anchor = float(wall) if wall else None
    except ValueError:
        raise SetupError(f"LOADKIT_WALL_ANCHOR: expected unix seconds, got {wall!r}") from None
    if mono:
        try:
            mono_ns = int(mono)
        except ValueError:
            raise SetupError(f"LOADKIT_MONO_ANCHOR_NS: expected an integer, got {mono!r}") from None
        if run_boot and run_boot == boot_id():
            return RunClock(mono_ns, wall_anchor if wall_anchor is not None else time.time(), "mono")
        if wall_anchor is None and not run_boot:
            # No boot id to compare: trust the anchor (same machine is the only sane use).
            return RunClock(mono_ns, time.time() - (time.perf_counter_ns() - mono_ns) / 1e9, "mono")
    if wall_anchor is not None:
        origin = time.perf_counter_ns() - round((time.time() - wall_anchor) * 1e9)
        return RunClock(origin, wall_anchor, "wall")
    return RunClock(time.perf_counter_ns(), time.time(), "local")


# ---------------------------------------------------------------------------------------
# Scenarios passed by the runner (already resolved: overrides applied, no secrets)


def scenario_from_resolved(d: dict[str, Any]) -> Scenario:
    """Rebuild a Scenario from ``Scenario.to_dict()`` (JSON round trip)."""

    def dist(x: dict[str, Any]) -> Dist:
        return Dist(**{**x, "choices": tuple(x.get("choices", ()))})

    loads = []
    for ld in d["load"]:
        ld = dict(ld)
        ld["mix"] = tuple((str(k), float(w)) for k, w in ld["mix"])
        ld["keys"] = tuple(ld.get("keys", ()))
        ld["prompt_tokens"] = dist(ld["prompt_tokens"])
        ld["max_tokens"] = dist(ld["max_tokens"])
        loads.append(LoadSpec(**ld))
    rest = {k: v for k, v in d.items() if k not in ("target", "tiers", "load")}
    if rest.get("duration_s") is None:
        rest["duration_s"] = math.inf
    return Scenario(
        target=TargetSpec(**d["target"]),
        tiers={n: TierSpec(**t) for n, t in d["tiers"].items()},
        load=tuple(loads),
        **rest,
    )


def scenario_to_json(scenario: Scenario) -> str:
    d = scenario.to_dict()
    if d.get("duration_s") == math.inf:
        d["duration_s"] = None
    return json.dumps(d)


def read_scenario(path: str) -> Scenario:
    """A scenario TOML, or the runner's resolved JSON."""
    if path.endswith(".json"):
        try:
            return scenario_from_resolved(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SetupError(f"LOADKIT_SCENARIO: cannot read {path}: {exc}") from None
    try:
        return load_scenario(path)
    except ScenarioError as exc:
        raise SetupError(f"LOADKIT_SCENARIO: {exc}") from None


# ---------------------------------------------------------------------------------------
# Sharing keys and roles out


def my_keys(keys: list[Key], worker_index: int, worker_count: int) -> list[Key]:
    """The keys one process drives: every ``worker_count``-th key starting at its index,
    so each key is driven by exactly one process (its records share one clock and one
    in-flight count)."""
    if worker_count < 1:
        raise SetupError(f"worker count must be >= 1, got {worker_count}")
    return [k for i, k in enumerate(keys) if i % worker_count == worker_index]


@dataclass(frozen=True)
class Role:
    """One (key, load phase) pair of ``plan()``; ``index`` is its position in the plan (the
    asyncio engine seeds its RNG with the same index, so both engines draw the same
    schedule)."""

    index: int
    key: Key
    load: LoadSpec
    user_class: str  # FREE_USER or PAID_USER

    @property
    def closed(self) -> bool:
        return self.load.pattern == "closed"


def roles_for(
    scenario: Scenario, keys: list[Key], mine: list[Key], free_tier: str = FREE_TIER
) -> list[Role]:
    """The roles of ``plan(scenario, keys)`` whose key is one of ``mine``."""
    labels = {k.label for k in mine}
    return [
        Role(i, key, load, FREE_USER if key.tier == free_tier else PAID_USER)
        for i, (key, load) in enumerate(plan(scenario, keys))
        if key.label in labels
    ]


def users_needed(roles: list[Role]) -> dict[str, int]:
    """Locust users a scenario needs per user class: ``concurrency`` per closed-loop
    role, one scheduler per open-loop role."""
    out = {FREE_USER: 0, PAID_USER: 0}
    for r in roles:
        out[r.user_class] += r.load.concurrency if r.closed else 1
    return out


def request_cap(max_requests: int, worker_index: int, worker_count: int) -> int:
    """This process's share of a scenario's ``max_requests`` (0 = no cap)."""
    if not max_requests:
        return 0
    share, extra = divmod(max_requests, worker_count)
    return share + (1 if worker_index < extra else 0)


# ---------------------------------------------------------------------------------------
# Plain mode


def parse_weights(text: str) -> tuple[tuple[str, float], ...]:
    """``chat_stream=3,chat=1,models=1`` → ((kind, weight), ...), zero weights dropped."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in MIX_KINDS:
            raise SetupError(
                f"LOADKIT_WEIGHTS: expected kind=weight with kinds {', '.join(MIX_KINDS)}, "
                f"got {part!r}"
            )
        try:
            w = float(value)
        except ValueError:
            raise SetupError(f"LOADKIT_WEIGHTS: {name}: weight must be a number, got {value!r}")
        if w < 0 or math.isnan(w):
            raise SetupError(f"LOADKIT_WEIGHTS: {name}: weight must be >= 0, got {value!r}")
        if w > 0:
            out.append((name, w))
    if not out:
        raise SetupError(f"LOADKIT_WEIGHTS: every weight is 0 in {text!r}")
    return tuple(out)


def parse_wait(text: str) -> tuple[float, float]:
    """``1`` (constant) or ``0.5,2`` (uniform between) seconds between a user's tasks."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise SetupError(f"LOADKIT_WAIT: expected seconds or min,max; got {text!r}") from None
    if len(nums) == 1:
        nums *= 2
    if len(nums) != 2 or nums[0] < 0 or nums[1] < nums[0]:
        raise SetupError(f"LOADKIT_WAIT: expected seconds or min,max (min <= max); got {text!r}")
    return nums[0], nums[1]


@dataclass
class DoneMarker:
    """Written by each Locust process that generates load when it quits normally; a
    process without one died (or was killed) and the runner says so."""

    worker: str
    records: int
    cancelled: int = 0
    pid: int = 0
    status: str = "ok"
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        path = Path(out_dir) / done_marker_name(self.worker)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path


def done_marker_name(worker: str) -> str:
    return f"worker-{worker}.done.json"


def records_name(worker: str) -> str:
    return f"records-{worker}.jsonl"


def worker_label(index: int) -> str:
    return f"locust-{index}"
