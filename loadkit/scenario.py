"""The scenario model: what to load, how hard, for how long, and what was promised.

A scenario is a TOML file (see ``docs/scenarios.md``), parsed and validated once into frozen
dataclasses. Every error names the field and the bad value. No secrets live in a scenario:
keys come from environment variables or a keys file. Pure: no sockets, no clocks, no asyncio
(the Locust users import this module too).
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EMBEDDED = "embedded"
PATTERNS = ("constant", "poisson", "burst", "closed")
MIX_KINDS = ("chat_stream", "chat", "completions_stream", "completions", "models")
DISTS = ("fixed", "uniform", "normal", "choice")


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the field and the value."""


@dataclass(frozen=True)
class Dist:
    """A distribution of positive integers (token counts)."""

    kind: str = "fixed"
    value: int = 16
    min: int = 1
    max: int = 16
    mean: float = 16.0
    sd: float = 0.0
    choices: tuple[int, ...] = ()

    def sample(self, rng: Any) -> int:
        """Draw one value with ``rng`` (a ``random.Random``)."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "uniform":
            return rng.randint(self.min, self.max)
        if self.kind == "normal":
            return max(self.min, min(self.max, round(rng.gauss(self.mean, self.sd))))
        return rng.choice(self.choices)

    def mean_value(self) -> float:
        if self.kind == "fixed":
            return float(self.value)
        if self.kind == "uniform":
            return (self.min + self.max) / 2
        if self.kind == "normal":
            return self.mean
        return sum(self.choices) / len(self.choices)


@dataclass(frozen=True)
class TierSpec:
    """A tier's promised limits, and where its keys come from."""

    name: str
    requests: int  # admitted requests per window
    window_s: float
    concurrency: int
    keys_env: str | None = None
    keys_file: str | None = None
    keys: int = 0  # embedded server: how many of its keys of this tier to use (0 = all)

    def promised(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "window_s": self.window_s,
            "concurrency": self.concurrency,
        }


@dataclass(frozen=True)
class LoadSpec:
    """One load phase applied to every key of a tier."""

    tier: str
    pattern: str  # constant | poisson | burst | closed
    rate_per_s: float = 0.0  # open loop, per key
    concurrency: int = 0  # closed loop: users per key
    think_s: float = 0.0  # closed loop: pause between a user's requests
    burst_size: int = 0
    burst_period_s: float = 0.0
    phase_s: float | None = None  # burst phase; None = random in [0, period)
    start_s: float = 0.0
    duration_s: float | None = None  # None = until the run ends
    mix: tuple[tuple[str, float], ...] = (("chat_stream", 1.0),)
    model: str | None = None
    prompt_tokens: Dist = Dist("fixed", 16)
    max_tokens: Dist = Dist("fixed", 16)
    max_in_flight: int = 0  # client-side cap per key (0 = none); waits are recorded
    keys: tuple[int, ...] = ()  # which keys of the tier (1-based); () = every key
    # Closed loop: after a 429 a user pauses this long before its next request; None =
    # the advertised retry-after (capped at 5 s; 1 s if absent). Without a pause, a refused
    # user would spin thousands of 429s per second.
    backoff_429_s: float | None = None

    def pause_after(
        self, status: int, retry_after_s: float | None, transport_error: str | None
    ) -> float:
        """How long a closed-loop user pauses after a request before its next one: its think
        time, or after a 429 the advertised retry-after (capped at 5 s; 1 s if absent; or
        ``backoff_429_s``), or 1 s after a connection that failed outright — without these,
        a refused user would spin thousands of requests per second."""
        pause = self.think_s
        if status == 429:
            if self.backoff_429_s is not None:
                wait = self.backoff_429_s
            else:
                wait = min(5.0, retry_after_s) if retry_after_s is not None else 1.0
            pause = max(pause, wait)
        elif status == 0 and transport_error not in (None, "cancelled"):
            pause = max(pause, 1.0)
        return pause

    def applies_to(self, key_index: int) -> bool:
        """Whether this phase loads the tier's ``key_index``-th key (1-based)."""
        return not self.keys or key_index in self.keys

    def active_until(self, run_duration: float) -> float:
        if self.duration_s is None:
            return run_duration
        return min(run_duration, self.start_s + self.duration_s)


@dataclass(frozen=True)
class TargetSpec:
    base_url: str = EMBEDDED  # "embedded" = start loadkit's reference server
    model: str = "loadkit-small"
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 600.0  # whole request, long streams included
    read_timeout_s: float = 120.0  # longest silence between bytes
    server_config: str | None = None  # embedded: a server TOML (faults, limiter modes)


@dataclass(frozen=True)
class Scenario:
    name: str
    target: TargetSpec
    tiers: dict[str, TierSpec]
    load: tuple[LoadSpec, ...]
    duration_s: float = 60.0
    max_requests: int = 0  # 0 = no count limit
    warmup_s: float = 0.0
    drain_s: float = 30.0  # after the end, how long in-flight requests may finish
    seed: int = 1
    engine: str | None = None
    honour_retry_after: bool = False
    max_retries: int = 3
    slo: dict[str, Any] = field(default_factory=dict)
    goodput: dict[str, float] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)
    source: str = "<built-in>"

    def with_overrides(
        self, *, duration_s: float | None = None, base_url: str | None = None
    ) -> Scenario:
        from dataclasses import replace

        s = self
        if duration_s is not None:
            _positive("--duration", duration_s)
            s = replace(s, duration_s=float(duration_s))
        if base_url is not None:
            s = replace(s, target=replace(s.target, base_url=base_url))
        return s

    def to_dict(self) -> dict[str, Any]:
        """The resolved scenario for run.json (no secrets: it never holds any)."""
        from dataclasses import asdict

        return asdict(self)


# ---------------------------------------------------------------------------------------
# Parsing


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read scenario ({exc.strerror})") from None
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ScenarioError(
            f"{p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'} ({exc})"
        ) from None
    return scenario_from_dict(data, source=str(p), base_dir=p.parent)


def scenario_from_dict(
    data: dict[str, Any], source: str = "<dict>", base_dir: Path | None = None
) -> Scenario:
    where = _Where(source)
    _only(
        data,
        {"name", "description", "target", "run", "tiers", "load", "slo", "goodput", "sweep"},
        where,
        "",
    )
    target_d = _table(data, "target", where)
    _only(
        target_d,
        {
            "base_url",
            "model",
            "connect_timeout_s",
            "request_timeout_s",
            "read_timeout_s",
            "server_config",
        },
        where,
        "target",
    )
    server_config = _opt_str(target_d, "server_config", where, "target")
    if server_config and base_dir is not None and not Path(server_config).is_absolute():
        server_config = str(base_dir / server_config)
    if server_config and not Path(server_config).is_file():
        raise ScenarioError(
            f"{where}: target.server_config: cannot read {server_config!r} (no such file)"
        )
    target = TargetSpec(
        base_url=_str(target_d, "base_url", where, "target", EMBEDDED).rstrip("/"),
        model=_str(target_d, "model", where, "target", "loadkit-small"),
        connect_timeout_s=_pos(target_d, "connect_timeout_s", where, "target", 10.0),
        request_timeout_s=_pos(target_d, "request_timeout_s", where, "target", 600.0),
        read_timeout_s=_pos(target_d, "read_timeout_s", where, "target", 120.0),
        server_config=server_config,
    )
    if target.base_url != EMBEDDED and not target.base_url.startswith(("http://", "https://")):
        raise ScenarioError(
            f"{where}: target.base_url: expected 'embedded' or an http(s) URL, "
            f"got {target.base_url!r}"
        )

    run_d = _table(data, "run", where)
    _only(
        run_d,
        {
            "duration_s",
            "max_requests",
            "warmup_s",
            "drain_s",
            "seed",
            "engine",
            "honour_retry_after",
            "max_retries",
        },
        where,
        "run",
    )
    duration = _num(run_d, "duration_s", where, "run", 0.0)
    max_requests = _int(run_d, "max_requests", where, "run", 0, minimum=0)
    if duration <= 0 and max_requests <= 0:
        raise ScenarioError(
            f"{where}: run: set duration_s > 0 or max_requests > 0; every run must be bounded"
        )
    if duration < 0:
        raise ScenarioError(f"{where}: run.duration_s: must be >= 0, got {duration!r}")
    if duration == 0:
        duration = math.inf  # bounded by the count; the drain still bounds the tail
    engine = _opt_str(run_d, "engine", where, "run")
    if engine is not None and engine not in ("async", "locust"):
        raise ScenarioError(f"{where}: run.engine: expected 'async' or 'locust', got {engine!r}")

    tiers_d = _table(data, "tiers", where)
    if not tiers_d:
        raise ScenarioError(f"{where}: tiers: at least one tier is required")
    tiers = {name: _tier(name, t, where, base_dir) for name, t in tiers_d.items()}

    loads_raw = data.get("load", [])
    if isinstance(loads_raw, dict):
        loads_raw = [loads_raw]
    if not isinstance(loads_raw, list) or not loads_raw:
        raise ScenarioError(f"{where}: load: at least one [[load]] table is required")
    loads = tuple(_load(i, ld, where, tiers) for i, ld in enumerate(loads_raw))

    slo = data.get("slo", {})
    goodput = data.get("goodput", {})
    if not isinstance(slo, dict):
        raise ScenarioError(f"{where}: slo: expected a table, got {slo!r}")
    if not isinstance(goodput, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in goodput.values()
    ):
        raise ScenarioError(
            f"{where}: goodput: expected a table of positive thresholds "
            f"(e.g. ttft_ms = 500), got {goodput!r}"
        )
    sweep = data.get("sweep", {})
    if not isinstance(sweep, dict):
        raise ScenarioError(f"{where}: sweep: expected a table, got {sweep!r}")
    return Scenario(
        name=_str(data, "name", where, "", Path(source).stem if source else "scenario"),
        target=target,
        tiers=tiers,
        load=loads,
        duration_s=duration,
        max_requests=max_requests,
        warmup_s=_num(run_d, "warmup_s", where, "run", 0.0, minimum=0.0),
        drain_s=_num(run_d, "drain_s", where, "run", 30.0, minimum=0.0),
        seed=_int(run_d, "seed", where, "run", 1),
        engine=engine,
        honour_retry_after=_bool(run_d, "honour_retry_after", where, "run", False),
        max_retries=_int(run_d, "max_retries", where, "run", 3, minimum=0),
        slo=slo,
        goodput={k: float(v) for k, v in goodput.items()},
        sweep=sweep,
        source=source,
    )


def _tier(name: str, d: Any, where: _Where, base_dir: Path | None) -> TierSpec:
    ctx = f"tiers.{name}"
    if not isinstance(d, dict):
        raise ScenarioError(f"{where}: {ctx}: expected a table, got {d!r}")
    _only(d, {"requests", "window_s", "concurrency", "keys_env", "keys_file", "keys"}, where, ctx)
    if "requests" not in d:
        raise ScenarioError(f"{where}: {ctx}.requests: required (the promised requests per window)")
    if "concurrency" not in d:
        raise ScenarioError(
            f"{where}: {ctx}.concurrency: required (the promised concurrent requests)"
        )
    keys_file = _opt_str(d, "keys_file", where, ctx)
    if keys_file and base_dir is not None and not Path(keys_file).is_absolute():
        keys_file = str(base_dir / keys_file)
    return TierSpec(
        name=name,
        requests=_int(d, "requests", where, ctx, 0, minimum=1),
        window_s=_pos(d, "window_s", where, ctx, 60.0),
        concurrency=_int(d, "concurrency", where, ctx, 0, minimum=1),
        keys_env=_opt_str(d, "keys_env", where, ctx),
        keys_file=keys_file,
        keys=_int(d, "keys", where, ctx, 0, minimum=0),
    )


def _load(i: int, d: Any, where: _Where, tiers: dict[str, TierSpec]) -> LoadSpec:
    ctx = f"load[{i}]"
    if not isinstance(d, dict):
        raise ScenarioError(f"{where}: {ctx}: expected a table, got {d!r}")
    _only(
        d,
        {
            "tier",
            "pattern",
            "rate_per_s",
            "rate_per_min",
            "rate_factor",
            "concurrency",
            "think_s",
            "burst_size",
            "burst_period_s",
            "phase_s",
            "start_s",
            "duration_s",
            "mix",
            "model",
            "prompt_tokens",
            "max_tokens",
            "max_in_flight",
            "keys",
            "backoff_429_s",
        },
        where,
        ctx,
    )
    tier = _str(d, "tier", where, ctx, "")
    if tier not in tiers:
        raise ScenarioError(
            f"{where}: {ctx}.tier: {tier!r} is not a tier of this scenario "
            f"(tiers: {', '.join(sorted(tiers))})"
        )
    pattern = _str(d, "pattern", where, ctx, "poisson")
    if pattern not in PATTERNS:
        raise ScenarioError(
            f"{where}: {ctx}.pattern: expected one of {', '.join(PATTERNS)}, got {pattern!r}"
        )
    rates = [k for k in ("rate_per_s", "rate_per_min", "rate_factor") if k in d]
    rate = 0.0
    if pattern in ("constant", "poisson"):
        if len(rates) != 1:
            raise ScenarioError(
                f"{where}: {ctx}: a {pattern} load needs exactly one of "
                f"rate_per_s, rate_per_min, rate_factor (got {rates or 'none'})"
            )
        if "rate_per_s" in d:
            rate = _pos(d, "rate_per_s", where, ctx, 1.0)
        elif "rate_per_min" in d:
            rate = _pos(d, "rate_per_min", where, ctx, 60.0) / 60.0
        else:
            t = tiers[tier]
            rate = _pos(d, "rate_factor", where, ctx, 1.0) * t.requests / t.window_s
    elif rates:
        raise ScenarioError(
            f"{where}: {ctx}.{rates[0]}: only for constant/poisson loads, not {pattern!r}"
        )
    concurrency = _int(d, "concurrency", where, ctx, 0, minimum=0)
    if pattern == "closed" and concurrency < 1:
        raise ScenarioError(
            f"{where}: {ctx}.concurrency: a closed load needs users per key "
            f">= 1, got {d.get('concurrency')!r}"
        )
    burst_size = _int(d, "burst_size", where, ctx, 0, minimum=0)
    burst_period = _num(d, "burst_period_s", where, ctx, 0.0, minimum=0.0)
    if pattern == "burst" and (burst_size < 1 or burst_period <= 0):
        raise ScenarioError(
            f"{where}: {ctx}: a burst load needs burst_size >= 1 and "
            f"burst_period_s > 0 (got {burst_size!r}, {burst_period!r})"
        )
    phase = d.get("phase_s", "random")
    if phase == "random":
        phase_s = None
    elif isinstance(phase, int | float) and not isinstance(phase, bool) and phase >= 0:
        phase_s = float(phase)
    else:
        raise ScenarioError(
            f"{where}: {ctx}.phase_s: expected 'random' or seconds >= 0, got {phase!r}"
        )
    duration = d.get("duration_s")
    if duration is not None:
        duration = _pos(d, "duration_s", where, ctx, 1.0)
    return LoadSpec(
        tier=tier,
        pattern=pattern,
        rate_per_s=rate,
        concurrency=concurrency,
        think_s=_num(d, "think_s", where, ctx, 0.0, minimum=0.0),
        burst_size=burst_size,
        burst_period_s=burst_period,
        phase_s=phase_s,
        start_s=_num(d, "start_s", where, ctx, 0.0, minimum=0.0),
        duration_s=duration,
        mix=_mix(d.get("mix", {"chat_stream": 1}), where, ctx),
        model=_opt_str(d, "model", where, ctx),
        prompt_tokens=_dist(d.get("prompt_tokens", 16), where, f"{ctx}.prompt_tokens"),
        max_tokens=_dist(d.get("max_tokens", 16), where, f"{ctx}.max_tokens"),
        max_in_flight=_int(d, "max_in_flight", where, ctx, 0, minimum=0),
        keys=_key_indexes(d.get("keys", []), where, ctx),
        backoff_429_s=_backoff(d.get("backoff_429_s", "retry-after"), where, ctx),
    )


def _backoff(v: Any, where: _Where, ctx: str) -> float | None:
    if v == "retry-after":
        return None
    if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0:
        return float(v)
    raise ScenarioError(
        f"{where}: {ctx}.backoff_429_s: expected 'retry-after' or seconds >= 0, got {v!r}"
    )


def _key_indexes(v: Any, where: _Where, ctx: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in v
    ):
        raise ScenarioError(
            f"{where}: {ctx}.keys: expected a list of key numbers within the "
            f"tier (1 = its first key), got {v!r}"
        )
    return tuple(v)


def _mix(d: Any, where: _Where, ctx: str) -> tuple[tuple[str, float], ...]:
    if not isinstance(d, dict) or not d:
        raise ScenarioError(
            f"{where}: {ctx}.mix: expected a table of weights such as "
            f"{{chat_stream = 1}}, got {d!r}"
        )
    out = []
    for k, v in d.items():
        if k not in MIX_KINDS:
            raise ScenarioError(
                f"{where}: {ctx}.mix.{k}: unknown request kind (kinds: {', '.join(MIX_KINDS)})"
            )
        if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
            raise ScenarioError(f"{where}: {ctx}.mix.{k}: weight must be >= 0, got {v!r}")
        if v > 0:
            out.append((k, float(v)))
    if not out:
        raise ScenarioError(f"{where}: {ctx}.mix: every weight is 0")
    return tuple(out)


def _dist(v: Any, where: _Where, ctx: str) -> Dist:
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 1:
            raise ScenarioError(f"{where}: {ctx}: must be >= 1, got {v!r}")
        return Dist("fixed", v)
    if not isinstance(v, dict):
        raise ScenarioError(
            f"{where}: {ctx}: expected a count or a table such as "
            f"{{dist = 'uniform', min = 10, max = 50}}, got {v!r}"
        )
    kind = v.get("dist", "fixed")
    if kind not in DISTS:
        raise ScenarioError(
            f"{where}: {ctx}.dist: expected one of {', '.join(DISTS)}, got {kind!r}"
        )
    if kind == "fixed":
        return Dist("fixed", _int(v, "value", where, ctx, 16, minimum=1))
    if kind == "uniform":
        lo = _int(v, "min", where, ctx, 1, minimum=1)
        hi = _int(v, "max", where, ctx, lo, minimum=1)
        if hi < lo:
            raise ScenarioError(f"{where}: {ctx}.max: must be >= min ({lo}), got {hi}")
        return Dist("uniform", min=lo, max=hi)
    if kind == "normal":
        mean = _pos(v, "mean", where, ctx, 16.0)
        sd = _num(v, "sd", where, ctx, 0.0, minimum=0.0)
        lo = _int(v, "min", where, ctx, 1, minimum=1)
        hi = _int(v, "max", where, ctx, max(lo, round(mean + 4 * sd)), minimum=lo)
        return Dist("normal", mean=mean, sd=sd, min=lo, max=hi)
    choices = v.get("values")
    if (
        not isinstance(choices, list)
        or not choices
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in choices)
    ):
        raise ScenarioError(
            f"{where}: {ctx}.values: expected a list of counts >= 1, got {choices!r}"
        )
    return Dist("choice", choices=tuple(choices))


# ---------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True)
class Key:
    label: str
    tier: str
    secret: str = field(repr=False)


def plan(scenario: Scenario, keys: list[Key]) -> list[tuple[Key, LoadSpec]]:
    """Every (key, load phase) pair the scenario asks for, in a stable order. Both engines
    drive exactly these pairs."""
    out = []
    for n, load in enumerate(scenario.load):
        tier_keys = [k for k in keys if k.tier == load.tier]
        missing = [i for i in load.keys if i > len(tier_keys)]
        if missing:
            raise ScenarioError(
                f"load[{n}].keys: asks for key {missing[0]} of tier "
                f"{load.tier!r}, which has {len(tier_keys)} key(s)"
            )
        out += [(k, load) for i, k in enumerate(tier_keys, 1) if load.applies_to(i)]
    return out


def resolve_keys(scenario: Scenario, environ: dict[str, str] | None = None) -> list[Key]:
    """Keys for a non-embedded target, from each tier's ``keys_env`` and/or ``keys_file``.
    A keys file holds one key per line, optionally ``label key``; ``#`` starts a comment."""
    env = os.environ if environ is None else environ
    out: list[Key] = []
    for tier in scenario.tiers.values():
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
        for i, (label, secret) in enumerate(secrets, 1):
            out.append(Key(label or f"{tier.name}-{i}", tier.name, secret))
    labels = [k.label for k in out]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise ScenarioError(f"key labels are not unique: {', '.join(sorted(dup))}")
    return out


def _read_keys_file(path: str, tier: str) -> list[tuple[str | None, str]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ScenarioError(
            f"tiers.{tier}.keys_file: cannot read {path} ({exc.strerror})"
        ) from None
    out: list[tuple[str | None, str]] = []
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) == 1:
            out.append((None, parts[0]))
        elif len(parts) == 2:
            out.append((parts[0], parts[1]))
        else:
            raise ScenarioError(
                f"tiers.{tier}.keys_file: {path}:{n}: expected 'KEY' or 'LABEL KEY'"
            )
    return out


# ---------------------------------------------------------------------------------------
# Small validators


class _Where(str):
    pass


def _only(d: dict[str, Any], allowed: set[str], where: _Where, ctx: str) -> None:
    for k in d:
        if k not in allowed:
            name = f"{ctx}.{k}" if ctx else k
            raise ScenarioError(
                f"{where}: {name}: unknown field (expected one of {', '.join(sorted(allowed))})"
            )


def _table(d: dict[str, Any], name: str, where: _Where) -> dict[str, Any]:
    v = d.get(name, {})
    if not isinstance(v, dict):
        raise ScenarioError(f"{where}: {name}: expected a table, got {v!r}")
    return v


def _name(ctx: str, key: str) -> str:
    return f"{ctx}.{key}" if ctx else key


def _str(d: dict[str, Any], key: str, where: _Where, ctx: str, default: str) -> str:
    v = d.get(key, default)
    if not isinstance(v, str) or (key in ("tier",) and not v):
        raise ScenarioError(f"{where}: {_name(ctx, key)}: expected a string, got {v!r}")
    return v


def _opt_str(d: dict[str, Any], key: str, where: _Where, ctx: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise ScenarioError(f"{where}: {_name(ctx, key)}: expected a string, got {v!r}")
    return v


def _bool(d: dict[str, Any], key: str, where: _Where, ctx: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise ScenarioError(f"{where}: {_name(ctx, key)}: expected true or false, got {v!r}")
    return v


def _num(
    d: dict[str, Any],
    key: str,
    where: _Where,
    ctx: str,
    default: float,
    minimum: float | None = None,
) -> float:
    v = d.get(key, default)
    if not isinstance(v, int | float) or isinstance(v, bool) or math.isnan(v):
        raise ScenarioError(f"{where}: {_name(ctx, key)}: expected a number, got {v!r}")
    if minimum is not None and v < minimum:
        raise ScenarioError(f"{where}: {_name(ctx, key)}: must be >= {minimum:g}, got {v!r}")
    return float(v)


def _pos(d: dict[str, Any], key: str, where: _Where, ctx: str, default: float) -> float:
    v = _num(d, key, where, ctx, default)
    if v <= 0 or math.isinf(v):
        raise ScenarioError(
            f"{where}: {_name(ctx, key)}: must be a positive number, got {d.get(key)!r}"
        )
    return v


def _positive(name: str, v: float) -> None:
    if not isinstance(v, int | float) or v <= 0:
        raise ScenarioError(f"{name}: must be a positive number of seconds, got {v!r}")


def _int(
    d: dict[str, Any], key: str, where: _Where, ctx: str, default: int, minimum: int | None = None
) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ScenarioError(f"{where}: {_name(ctx, key)}: expected an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise ScenarioError(f"{where}: {_name(ctx, key)}: must be >= {minimum}, got {v!r}")
    return v


def scenario_to_dict(s: Scenario) -> dict[str, Any]:
    """The scenario in its file shape (JSON-able; ``scenario_from_dict`` reads it back to an
    equal scenario). Used to hand a resolved scenario, overrides included, to another
    process. Key sources are left out: keys travel separately, never in a scenario."""
    t = s.target
    target: dict[str, Any] = {
        "base_url": t.base_url,
        "model": t.model,
        "connect_timeout_s": t.connect_timeout_s,
        "request_timeout_s": t.request_timeout_s,
        "read_timeout_s": t.read_timeout_s,
    }
    if t.server_config:
        target["server_config"] = t.server_config
    run: dict[str, Any] = {
        "duration_s": 0 if math.isinf(s.duration_s) else s.duration_s,
        "max_requests": s.max_requests,
        "warmup_s": s.warmup_s,
        "drain_s": s.drain_s,
        "seed": s.seed,
        "honour_retry_after": s.honour_retry_after,
        "max_retries": s.max_retries,
    }
    if s.engine:
        run["engine"] = s.engine
    tiers = {
        n: {
            "requests": x.requests,
            "window_s": x.window_s,
            "concurrency": x.concurrency,
            "keys": x.keys,
        }
        for n, x in s.tiers.items()
    }
    return {
        "name": s.name,
        "target": target,
        "run": run,
        "tiers": tiers,
        "load": [_load_to_dict(ld) for ld in s.load],
        "slo": s.slo,
        "goodput": s.goodput,
        "sweep": s.sweep,
    }


def _load_to_dict(ld: LoadSpec) -> dict[str, Any]:
    d: dict[str, Any] = {
        "tier": ld.tier,
        "pattern": ld.pattern,
        "start_s": ld.start_s,
        "mix": dict(ld.mix),
        "prompt_tokens": _dist_to_dict(ld.prompt_tokens),
        "max_tokens": _dist_to_dict(ld.max_tokens),
        "max_in_flight": ld.max_in_flight,
        "keys": list(ld.keys),
        "think_s": ld.think_s,
        "backoff_429_s": "retry-after" if ld.backoff_429_s is None else ld.backoff_429_s,
    }
    if ld.pattern in ("constant", "poisson"):
        d["rate_per_s"] = ld.rate_per_s
    if ld.pattern == "closed":
        d["concurrency"] = ld.concurrency
    if ld.pattern == "burst":
        d.update(
            burst_size=ld.burst_size,
            burst_period_s=ld.burst_period_s,
            phase_s="random" if ld.phase_s is None else ld.phase_s,
        )
    if ld.duration_s is not None:
        d["duration_s"] = ld.duration_s
    if ld.model:
        d["model"] = ld.model
    return d


def _dist_to_dict(x: Dist) -> dict[str, Any]:
    if x.kind == "fixed":
        return {"dist": "fixed", "value": x.value}
    if x.kind == "uniform":
        return {"dist": "uniform", "min": x.min, "max": x.max}
    if x.kind == "normal":
        return {"dist": "normal", "mean": x.mean, "sd": x.sd, "min": x.min, "max": x.max}
    return {"dist": "choice", "values": list(x.choices)}
