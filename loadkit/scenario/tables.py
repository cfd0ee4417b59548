"""The scenario file's schema: each table, its fields' types, defaults and meaning, the rules
that span fields, and the conversion into the model. Pure: the path of the scenario's
folder is given, never looked at.

``[target]`` and ``[tiers.NAME]`` are validated as the model's dataclasses themselves;
``[run]``, ``[[load]]`` and token distributions have a file shape of their own, declared
here. To add a field to one of those: one annotated line (and a docstring) in its table
below, and the same name in the model's dataclass; ``to_model`` copies it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from loadkit.scenario.model import (
    DISTS,
    Dist,
    LoadSpec,
    MixKind,
    Pattern,
    Scenario,
    TargetSpec,
    TierSpec,
    check_tier_tables,
)
from loadkit.schema import (
    Count,
    Flag,
    Int,
    NonNegative,
    NonNegativeInt,
    Positive,
    Table,
    Text,
    invalid,
    problem,
)

# ---------------------------------------------------------------------------------------
# Token counts: a number, or a distribution table


class FixedDist(Table):
    dist: Literal["fixed"] = "fixed"
    value: Count = 16

    def to_model(self) -> Dist:
        return Dist("fixed", self.value)


class UniformDist(Table):
    dist: Literal["uniform"]
    min: Count = 1
    max: Count | None = None
    """Default: ``min``."""

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max is not None and self.max < self.min:
            raise invalid(f"must be >= min ({self.min})", self.max, at="max")
        return self

    def to_model(self) -> Dist:
        return Dist("uniform", min=self.min, max=self.min if self.max is None else self.max)


class NormalDist(Table):
    dist: Literal["normal"]
    mean: Positive = 16.0
    sd: NonNegative = 0.0
    min: Count = 1
    max: Count | None = None
    """Default: ``mean + 4 sd``, at least ``min``."""

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max is not None and self.max < self.min:
            raise invalid(f"must be >= min ({self.min})", self.max, at="max")
        return self

    def to_model(self) -> Dist:
        hi = max(self.min, round(self.mean + 4 * self.sd)) if self.max is None else self.max
        return Dist("normal", mean=self.mean, sd=self.sd, min=self.min, max=hi)


class ChoiceDist(Table):
    dist: Literal["choice"]
    values: Annotated[list[Count], Field(min_length=1)]
    """The counts to draw from, equally likely."""

    def to_model(self) -> Dist:
        return Dist("choice", choices=tuple(self.values))


def _count_or_table(v: Any) -> Any:
    """A bare count is a fixed distribution; a table names its ``dist`` (default fixed)."""
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 1:
            raise invalid("must be >= 1", v)
        return {"dist": "fixed", "value": v}
    if not isinstance(v, dict):
        raise invalid(
            "expected a count or a table such as {dist = 'uniform', min = 10, max = 50}", v
        )
    kind = v.get("dist", "fixed")
    if kind not in DISTS:
        raise invalid(f"expected one of {', '.join(DISTS)}", kind, at="dist")
    return {"dist": kind, **v}


TokenCount = Annotated[
    FixedDist | UniformDist | NormalDist | ChoiceDist,
    Field(discriminator="dist"),
    BeforeValidator(_count_or_table),
]

# ---------------------------------------------------------------------------------------
# [[load]]

_RATES = ("rate_per_s", "rate_per_min", "rate_factor")
_ONLY_CHAT_STREAM: dict[MixKind, float] = {"chat_stream": 1.0}


def _some_weight(mix: dict[str, float]) -> dict[str, float]:
    if not mix:
        raise invalid("expected a table of weights such as {chat_stream = 1}", mix)
    if not any(mix.values()):
        raise invalid("expected a weight > 0 (every weight is 0)", mix)
    return mix


def _word_or_seconds(word: str) -> BeforeValidator:
    """``word`` (read as None) or a number of seconds >= 0."""

    def check(v: Any) -> float | None:
        if v == word:
            return None
        if isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < float("inf"):
            return float(v)
        raise invalid(f"expected {word!r} or seconds >= 0", v)

    return BeforeValidator(check)


class LoadTable(Table):
    """``[[load]]``: one load phase, applied to every key of its tier."""

    tier: Text
    """The tier whose keys this phase loads."""
    pattern: Pattern = "poisson"
    rate_per_s: Positive | None = None
    """Open loop: requests per second per key (or ``rate_per_min``, or ``rate_factor``)."""
    rate_per_min: Positive | None = None
    rate_factor: Positive | None = None
    """A multiple of the tier's promised ``requests / window_s``."""
    token_factor: Positive | None = None
    """Sizes each request from the token promise (the phase's model's, else the tier's):
    the phase offers this multiple of the promised tokens per token window, per key."""
    token_side: Literal["prompt", "completion"] | None = None
    """Where ``token_factor`` puts the size: "prompt" (``prompt_tokens``) or "completion"
    (``max_tokens``); default "completion" when the promise counts output, else "prompt"."""
    concurrency: NonNegativeInt = LoadSpec.concurrency
    """Closed loop: users per key."""
    think_s: NonNegative = LoadSpec.think_s
    burst_size: NonNegativeInt = LoadSpec.burst_size
    burst_period_s: NonNegative = LoadSpec.burst_period_s
    phase_s: Annotated[float | None, _word_or_seconds("random")] = None
    """First burst at this second; "random": uniform in the first period."""
    start_s: NonNegative = LoadSpec.start_s
    duration_s: Positive | None = None
    """Default: until the run ends."""
    mix: Annotated[dict[MixKind, NonNegative], AfterValidator(_some_weight)] = Field(
        default_factory=lambda: _ONLY_CHAT_STREAM.copy()
    )
    """Weights of the request kinds."""
    model: Text | None = None
    """Overrides ``target.model``."""
    prompt_tokens: TokenCount = Field(default_factory=FixedDist)
    max_tokens: TokenCount = Field(default_factory=FixedDist)
    max_in_flight: NonNegativeInt = LoadSpec.max_in_flight
    """A client-side cap per key: arrivals beyond it wait (recorded), never dropped."""
    keys: list[Count] = Field(default_factory=list)
    """Which keys of the tier, 1-based; default every key."""
    backoff_429_s: Annotated[float | None, _word_or_seconds("retry-after")] = None
    """Closed loop, after a 429: "retry-after" (the advertised delay, capped) or seconds."""

    @model_validator(mode="after")
    def _one_rate_if_open(self) -> Self:
        rates = [r for r in _RATES if getattr(self, r) is not None]
        if self.pattern not in ("constant", "poisson"):
            if rates:
                raise problem(f"only for constant/poisson loads, not {self.pattern!r}", rates[0])
        elif len(rates) != 1:
            raise problem(
                f"a {self.pattern} load needs exactly one of {', '.join(_RATES)} "
                f"(got {', '.join(rates) or 'none'})"
            )
        return self

    @model_validator(mode="after")
    def _users_or_bursts(self) -> Self:
        if self.pattern == "closed" and self.concurrency < 1:
            raise invalid("a closed load needs users per key >= 1", self.concurrency, "concurrency")
        if self.pattern == "burst" and (self.burst_size < 1 or self.burst_period_s <= 0):
            raise problem(
                "a burst load needs burst_size >= 1 and burst_period_s > 0 "
                f"(got {self.burst_size!r}, {self.burst_period_s!r})"
            )
        return self

    def rate_per_s_for(self, tier: TierSpec) -> float:
        if self.rate_per_s is not None:
            return self.rate_per_s
        if self.rate_per_min is not None:
            return self.rate_per_min / 60.0
        if self.rate_factor is not None:
            return self.rate_factor * tier.requests / tier.window_s
        return 0.0

    @model_validator(mode="after")
    def _token_side_needs_factor(self) -> Self:
        if self.token_side is not None and self.token_factor is None:
            raise problem("only with token_factor (it says where the size goes)", "token_side")
        return self

    def token_sizes(self, tier: TierSpec, model: str, at: str = "") -> tuple[Dist, Dist]:
        """``prompt_tokens`` and ``max_tokens``, one of them sized by ``token_factor`` from
        the token promise of ``model`` (else the tier's); the other as written. An error
        names its field under ``at`` (the phase's path)."""
        prompt, completion = self.prompt_tokens.to_model(), self.max_tokens.to_model()
        if self.token_factor is None:
            return prompt, completion
        promise = tier.token_promise(model)
        if promise is None:
            raise problem(
                f"needs a tokens promise in tiers.{tier.name} (or in "
                f"tiers.{tier.name}.models.{model})",
                f"{at}.token_factor".lstrip("."),
            )
        tokens, window_s, counts = promise
        side = self.token_side or ("completion" if counts == "output" else "prompt")
        if counts != "total" and side != {"input": "prompt", "output": "completion"}[counts]:
            raise problem(
                f"the promise counts {counts} tokens only: a {side} sized by token_factor "
                "would not count",
                f"{at}.token_side".lstrip("."),
            )
        sized = "prompt_tokens" if side == "prompt" else "max_tokens"
        if sized in self.model_fields_set:
            raise problem(
                f"give {sized} or token_factor for the {side}, not both (the {side} "
                "is where token_factor puts the size)",
                f"{at}.{sized}".lstrip("."),
            )
        per_request = self.token_factor * tokens * self._share_of_window(tier, window_s)
        if counts == "total":  # the other side counts too: the sized one gets the rest
            per_request -= typical(completion if side == "prompt" else prompt)
        size = round(per_request)
        if size < 1:
            raise problem(
                f"sizes each request's {side} at {per_request:.3g} tokens: raise "
                "token_factor, or send fewer requests per token window",
                f"{at}.token_factor".lstrip("."),
            )
        fixed = Dist("fixed", size)
        return (fixed, completion) if side == "prompt" else (prompt, fixed)

    def _share_of_window(self, tier: TierSpec, window_s: float) -> float:
        """One request's share of what the phase sends a key in one token window: 1 /
        (requests per window) for open loops; for bursts, a burst carries the window's
        whole share when bursts come less often than windows; for closed loops, the
        users' requests in flight at once share it."""
        if self.pattern == "burst":
            return min(1.0, self.burst_period_s / window_s) / self.burst_size
        if self.pattern == "closed":
            return 1.0 / self.concurrency
        return 1.0 / (self.rate_per_s_for(tier) * window_s)

    def to_model(self, tier: TierSpec, model: str) -> LoadSpec:
        rate = self.rate_per_s_for(tier)
        prompt, completion = self.token_sizes(tier, model)
        return LoadSpec(
            **{k: getattr(self, k) for k in _COPIED},
            rate_per_s=rate,
            mix=tuple((k, float(w)) for k, w in self.mix.items() if w > 0),
            prompt_tokens=prompt,
            max_tokens=completion,
            keys=tuple(self.keys),
        )


def typical(d: Dist) -> float:
    """A distribution's central value: what sizing by ``token_factor`` allows for the side
    it does not size."""
    if d.kind == "fixed":
        return float(d.value)
    if d.kind == "uniform":
        return (d.min + d.max) / 2
    if d.kind == "normal":
        return d.mean
    return sum(d.choices) / len(d.choices)


# Every other field means the same in the file and in the model, and is copied by name.
_FILE_ONLY = {"rate_per_min", "rate_factor", "token_factor", "token_side"}
_CONVERTED = {"rate_per_s", "mix", "prompt_tokens", "max_tokens", "keys"}
_COPIED = set(LoadTable.model_fields) - _FILE_ONLY - _CONVERTED

# ---------------------------------------------------------------------------------------
# [run] and the whole file


class RunTable(Table):
    """``[run]``: how long, how many, and how the client behaves."""

    duration_s: NonNegative = 0.0
    """Seconds of load; 0: bounded by ``max_requests`` alone (one of them must bound it)."""
    max_requests: NonNegativeInt = Scenario.max_requests
    """Stop after this many requests (0 = no count limit)."""
    warmup_s: NonNegative = Scenario.warmup_s
    """Excluded from latency figures, never from limit verdicts."""
    drain_s: NonNegative = Scenario.drain_s
    """After the end, how long in-flight requests may finish."""
    seed: Int = Scenario.seed
    """Arrivals, mixes and prompts are reproducible."""
    engine: Literal["async", "locust"] | None = None
    """Default engine (``--engine`` overrides it)."""
    honour_retry_after: Flag = Scenario.honour_retry_after
    """True: sleep Retry-After and retry (each retry its own record)."""
    max_retries: NonNegativeInt = Scenario.max_retries
    parquet_twins: Flag = Scenario.parquet_twins
    """Record files of 4 MB or more get a Parquet twin, written as the run goes, that a
    large run's analysis reads instead of parsing the JSON (``--no-twins``: none)."""


def _one_or_many(v: Any) -> Any:
    return [v] if isinstance(v, dict) else v


def _named(tiers: Any) -> Any:
    """Each tier table gets its name from its key (a ``name`` written in it is unknown);
    a window or ``token_counts`` is refused without the promise it qualifies."""
    if not isinstance(tiers, dict):
        return tiers
    for name, t in tiers.items():
        if not isinstance(t, dict):
            continue
        if "name" in t:
            raise problem("unknown field (a tier's name is its table's name)", at=f"{name}.name")
        check_tier_tables(str(name), t)
    return {name: {**t, "name": name} if isinstance(t, dict) else t for name, t in tiers.items()}


class ScenarioFile(Table):
    """A scenario file (TOML, or JSON by suffix)."""

    target: TargetSpec = TargetSpec()
    run: RunTable = Field(default_factory=RunTable)
    tiers: Annotated[dict[str, TierSpec], BeforeValidator(_named), Field(min_length=1)]
    """At least one ``[tiers.NAME]`` table: what the service promises."""
    load: Annotated[list[LoadTable], BeforeValidator(_one_or_many), Field(min_length=1)]
    """At least one ``[[load]]`` table."""
    slo: dict[str, Any] = Field(default_factory=dict)
    """Checked by ``loadkit analyze`` (see ``loadkit.analysis.slo``)."""
    goodput: dict[str, Positive] = Field(default_factory=dict)
    """Per-request thresholds (e.g. ``ttft_ms = 500``): goodput counts requests meeting all."""
    sweep: dict[str, Any] = Field(default_factory=dict)
    """For ``loadkit sweep`` (validated there, see ``loadkit.sweep``)."""
    name: Text | None = None
    """Default: the file's name without its suffix."""
    description: Text | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.run.duration_s <= 0 and self.run.max_requests <= 0:
            raise problem(
                "set duration_s > 0 or max_requests > 0; every run must be bounded", at="run"
            )
        for i, ld in enumerate(self.load):
            if ld.tier not in self.tiers:
                raise problem(
                    f"{ld.tier!r} is not a tier of this scenario "
                    f"(tiers: {', '.join(sorted(self.tiers))})",
                    at=f"load[{i}].tier",
                )
            ld.token_sizes(self.tiers[ld.tier], ld.model or self.target.model, f"load[{i}]")
        return self

    def to_model(self, source: str, base_dir: Path | None) -> Scenario:
        """The scenario; relative paths are made relative to ``base_dir``."""
        target = self.target
        if target.server_config:
            target = replace(target, server_config=_beside(target.server_config, base_dir))
        tiers = {
            n: replace(t, keys_file=_beside(t.keys_file, base_dir)) if t.keys_file else t
            for n, t in self.tiers.items()
        }
        tiers = {n: t.with_model_defaults() for n, t in tiers.items()}
        run = self.run.model_dump(exclude={"duration_s"})
        return Scenario(
            name=self.name if self.name is not None else Path(source).stem or "scenario",
            target=target,
            tiers=tiers,
            load=tuple(ld.to_model(tiers[ld.tier], ld.model or target.model) for ld in self.load),
            duration_s=self.run.duration_s or float("inf"),
            slo=self.slo,
            goodput=dict(self.goodput),
            sweep=self.sweep,
            source=source,
            **run,
        )


def _beside(path: str, base_dir: Path | None) -> str:
    if base_dir is None or Path(path).is_absolute():
        return path
    return str(base_dir / path)
