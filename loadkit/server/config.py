"""Configuration of the reference server: frozen dataclasses, built from a TOML-shaped
dict (``config_from_dict``), a TOML or JSON file (``load_config``) or the defaults
(``default_config``), validated once by ``loadkit.schema``. Every error names the field,
what was expected and the value (never a key's value).

Sections with the file's shape (``[tiers.NAME]``, ``[[keys]]``, ``[admin]``, ``[limiter]``,
``[faults]``, ``[billing]``) are validated as their dataclasses: a field's type is its rule,
its docstring its meaning, so a new field is one annotated line. ``[server]`` and
``[[models]]`` have a file shape of their own (``ServerTable``, ``ModelTable``)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Self, get_args

from annotated_types import Ge, Gt, Le, MinLen
from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, model_validator

from loadkit.scenario.model import DAY_S, ModelPromise, TokenCounts, check_tier_tables
from loadkit.schema import (
    DERIVED,
    Count,
    Flag,
    Int,
    Invalid,
    Label,
    Name,
    NonNegative,
    NonNegativeInt,
    Number,
    Positive,
    SecretKey,
    Share,
    Table,
    invalid,
    problem,
    validate,
)
from loadkit.server.limits import RequestLimits
from loadkit.server.token_limiter import TokenMode

ApiLayout = Literal["seed", "openai"]  # paths under /api/v1/ai (API.md), or OpenAI's /v1
API_LAYOUTS: tuple[str, ...] = get_args(ApiLayout)
LimiterMode = Literal[
    "exact",
    "fixed_window",
    "fixed_window_anchored",
    "token_bucket",
    "concurrency_off_by_one",
    "late_release",
    "under_admit",
    "off",
]
Capability = Literal["chat", "completion"]
CAPABILITIES: tuple[str, ...] = get_args(Capability)

# name -> (requests, window_s, concurrency, generated keys)
DEFAULT_TIERS: dict[str, tuple[int, float, int, int]] = {
    "free": (60, 60.0, 3, 5),  # one key per probe of the built-in scenario
    "pro": (1_000, 60.0, 10, 2),
    "enterprise": (10_000, 60.0, 100, 1),
}


class ConfigError(ValueError):
    """A bad configuration value; the message names the field and the value."""


@dataclass(frozen=True)
class LatencyProfile:
    """Per-model timing. TTFT = ttft_ms + prefill_ms_per_token * prompt tokens + U(0,
    ttft_jitter_ms); ITL = itl_ms + U(-itl_jitter_ms, +itl_jitter_ms), at least
    active sequences / decode_capacity_tps when that capacity is set (0 = unlimited)."""

    ttft_ms: float = 0.0
    prefill_ms_per_token: float = 0.0
    ttft_jitter_ms: float = 0.0
    itl_ms: float = 0.0
    itl_jitter_ms: float = 0.0
    decode_capacity_tps: float = 0.0

    @property
    def is_zero(self) -> bool:
        return all(getattr(self, f.name) == 0 for f in fields(self))


@dataclass(frozen=True)
class ModelConfig:
    id: str
    context_length: int = 4096
    chat: bool = True
    completion: bool = True
    latency: LatencyProfile = field(default_factory=LatencyProfile)
    owned_by: str = "loadkit"
    created: int = 1_700_000_000

    def to_api(self) -> dict[str, Any]:
        """The OpenAI model object, with loadkit's extra fields."""
        caps = [c for c in CAPABILITIES if getattr(self, c)]
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
            "context_length": self.context_length,
            "capabilities": caps,
            "latency": {f.name: getattr(self.latency, f.name) for f in fields(self.latency)},
        }


@dataclass(frozen=True)
class TierConfig:
    """``[tiers.NAME]``: a tier's limits and generated keys (free, pro and enterprise
    default to ``DEFAULT_TIERS``; other tiers give requests and concurrency)."""

    name: Label = field(metadata=DERIVED)
    requests: Count
    """Admitted requests in any span of window_s."""
    window_s: Positive
    concurrency: Count
    """Admitted requests in flight at any instant."""
    keys: NonNegativeInt = 1
    """Generated keys, labelled NAME-1, NAME-2, ..."""
    balance: NonNegative | None = None
    """Per key; None: unlimited."""
    # Token, per-day and per-model limits (``loadkit.server.token_limiter``): the same
    # fields, meanings and defaults as a scenario's tier (``loadkit.scenario.model``).
    tokens: Count | None = None
    """Admitted tokens in any span of token_window_s."""
    token_window_s: Positive = 60.0
    token_counts: TokenCounts = "total"
    """Which tokens count: "input" (the prompt), "output" (max_tokens x sequences,
    reserved at admission) or "total"."""
    requests_per_day: Count | None = None
    """Admitted requests in any span of day_window_s."""
    day_window_s: Positive = DAY_S
    models: dict[Name, ModelPromise] = field(default_factory=dict)
    """``[tiers.NAME.models.MODEL]``: limits per (key, model); a window or token_counts
    left out is the tier's."""


@dataclass(frozen=True)
class KeyConfig:
    """An explicit key from ``[[keys]]``; ``key`` None means generate a random one."""

    label: Label
    """The key's label in records and the truth log."""
    tier: Name
    """One of the config's tiers."""
    key: SecretKey | None = field(default=None, repr=False)
    balance: NonNegative | None = None
    """None: the tier's balance."""


@dataclass(frozen=True)
class AdminConfig:
    label: Label = "admin"
    key: SecretKey | None = field(default=None, repr=False)
    requests: Count = 1_000_000
    window_s: Positive = 60.0
    concurrency: Count = 10_000


@dataclass(frozen=True)
class LimiterConfig:
    mode: LimiterMode = "exact"
    token_mode: TokenMode = "exact"
    """Token, per-day and per-model limits: "exact", or wrong on purpose: "output_only"
    (counts output tokens whatever the tier's token_counts says), "fixed_window" (windows
    aligned to the clock), "models_per_key" (a model's requests window and concurrency
    count the key's requests to every model), "models_off" (a model's requests window and
    concurrency are not enforced)."""

    burst_factor: Annotated[Number, Gt(1)] = 2.0
    """token_bucket: capacity = ceil(requests * burst_factor)."""
    under_admit_fraction: Annotated[Number, Gt(0), Le(1)] = 0.8
    """under_admit: refuses at this share of the limit."""
    release_delay_s: Positive = 0.02
    """late_release: a request's concurrency slot is freed this long after it ended."""


@dataclass(frozen=True)
class FaultsConfig:
    seed: Int = 0
    error_rate: Share = 0.0
    """500 internal_error before the response starts."""
    midstream_error_rate: Share = 0.0
    """An error event after some tokens, then the end."""
    midstream_error_after_tokens: NonNegativeInt = 3
    disconnect_rate: Share = 0.0
    """Streams: the server closes the connection mid-stream."""
    disconnect_after_tokens: NonNegativeInt = 3
    stall_rate: Share = 0.0
    """The stream (or non-stream delay) pauses for stall_s."""
    stall_s: NonNegative = 1.0
    stall_after_tokens: NonNegativeInt = 1


@dataclass(frozen=True)
class BillingConfig:
    prompt_per_1k: NonNegative = 0.0
    completion_per_1k: NonNegative = 0.0


@dataclass(frozen=True)
class ServerConfig:
    tiers: tuple[TierConfig, ...]
    keys: tuple[KeyConfig, ...] = ()
    admin: AdminConfig = field(default_factory=AdminConfig)
    models: tuple[ModelConfig, ...] = ()
    limiter: LimiterConfig = field(default_factory=LimiterConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    billing: BillingConfig = field(default_factory=BillingConfig)
    max_body_bytes: int = 1_048_576
    default_chat_max_tokens: int = 64
    default_completion_max_tokens: int = 16
    max_choices: int = 128
    seed: int = 0
    lateness_samples: int = 2_000_000
    access_log: bool = False
    api: str = "seed"  # one of API_LAYOUTS
    limits: RequestLimits = field(default_factory=RequestLimits)

    def tier(self, name: str) -> TierConfig:
        for t in self.tiers:
            if t.name == name:
                return t
        raise KeyError(name)


def default_models() -> tuple[ModelConfig, ...]:
    return (
        ModelConfig(
            "loadkit-small",
            context_length=4096,
            latency=LatencyProfile(50.0, 0.05, 10.0, 20.0, 5.0, 2000.0),
        ),
        ModelConfig(
            "loadkit-chat",
            context_length=8192,
            completion=False,
            latency=LatencyProfile(80.0, 0.05, 20.0, 25.0, 5.0, 2000.0),
        ),
        ModelConfig(
            "loadkit-instruct",
            context_length=2048,
            chat=False,
            latency=LatencyProfile(40.0, 0.05, 10.0, 15.0, 3.0, 2000.0),
        ),
        ModelConfig("loadkit-instant", context_length=8192),
    )


def default_config() -> ServerConfig:
    tiers = tuple(TierConfig(n, r, w, c, k) for n, (r, w, c, k) in DEFAULT_TIERS.items())
    return ServerConfig(tiers=tiers, models=default_models())


def load_config(path: str | Path) -> ServerConfig:
    """Read a TOML (or, by suffix, JSON) config file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"config: cannot read {str(p)!r}: {e.strerror or e}") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"config: {str(p)!r} is not valid TOML/JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {str(p)!r} must hold a table at top level")
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def config_from_dict(data: Mapping[str, Any]) -> ServerConfig:
    """Build and validate a ``ServerConfig`` from the TOML-shaped dict; missing parts
    keep the defaults (tiers given replace the default tiers; models given are added to,
    or by id replace, the default models)."""
    try:
        return validate(ConfigFile, data).to_model()
    except Invalid as e:
        raise ConfigError(str(e)) from None


def model_from_dict(
    d: Mapping[str, Any], where: str, base: ModelConfig | None = None
) -> ModelConfig:
    """A model from its flat dict (also the body of the admin create/update paths);
    with ``base`` the missing fields keep their current values. Errors start with the
    field's path under ``where``."""
    try:
        return validate(ModelTable, d, root=where, context={"base": base}).to_model(base)
    except Invalid as e:
        raise ConfigError(str(e)) from None


# --- the file's own shapes -------------------------------------------------------------


class LatencyPatch(Table):
    """A model's timing (``LatencyProfile``); a field left out keeps its value."""

    ttft_ms: NonNegative | None = None
    prefill_ms_per_token: NonNegative | None = None
    ttft_jitter_ms: NonNegative | None = None
    itl_ms: NonNegative | None = None
    itl_jitter_ms: NonNegative | None = None
    decode_capacity_tps: NonNegative | None = None


def _capabilities(caps: list[Any]) -> list[Any]:
    if not caps or any(c not in CAPABILITIES for c in caps):
        raise invalid(f"expected a non-empty list of {list(CAPABILITIES)}", caps)
    return caps


class ModelTable(LatencyPatch):
    """``[[models]]`` (or ``[models.ID]``), and the body of the admin create/update paths:
    latency fields flat or in a ``latency`` table. Validated with ``{"base": ModelConfig}``
    as context when it updates a model."""

    id: Name | None = None
    """The model's id (required to create one; cannot change)."""
    context_length: Count | None = None
    capabilities: Annotated[list[Any], AfterValidator(_capabilities)] | None = None
    """Which of chat, completion the model serves (the whole list is the parameter)."""
    owned_by: Name | None = None
    created: NonNegativeInt | None = None
    latency: LatencyPatch | None = None

    @model_validator(mode="after")
    def _id(self, info: ValidationInfo) -> Self:
        base: ModelConfig | None = (info.context or {}).get("base")
        if base is None and self.id is None:
            raise problem("required (the model's id)", at="id")
        if base is not None and self.id not in (None, base.id):
            raise invalid(f"cannot be changed (it is {base.id!r})", self.id, "id")
        return self

    def to_model(self, base: ModelConfig | None) -> ModelConfig:
        cur = base if base is not None else ModelConfig(str(self.id))
        latency = {
            **self.model_dump(include=set(LatencyPatch.model_fields), exclude_none=True),
            **(self.latency.model_dump(exclude_none=True) if self.latency else {}),
        }
        caps = self.capabilities
        return replace(
            cur,
            **self.model_dump(include={"context_length", "owned_by", "created"}, exclude_none=True),
            chat=cur.chat if caps is None else "chat" in caps,
            completion=cur.completion if caps is None else "completion" in caps,
            latency=replace(cur.latency, **latency),
        )


class ServerTable(Table):
    """``[server]``: request handling and bookkeeping (``ServerConfig``'s own fields, with
    its defaults)."""

    max_body_bytes: Annotated[Int, Ge(1024)] = ServerConfig.max_body_bytes
    default_chat_max_tokens: Count = ServerConfig.default_chat_max_tokens
    default_completion_max_tokens: Count = ServerConfig.default_completion_max_tokens
    max_choices: Count = ServerConfig.max_choices
    """Cap on n, best_of, prompts x best_of."""
    seed: Int = ServerConfig.seed
    """Generation seed and latency jitter."""
    lateness_samples: Annotated[Int, Ge(1000)] = ServerConfig.lateness_samples
    access_log: Flag = ServerConfig.access_log
    api: ApiLayout = "seed"
    """The path layout served: "seed" or "openai" (``/v1/chat/completions``, ...)."""


def _tier_defaults(tiers: Any) -> Any:
    """Each tier table named by its key, missing fields from ``DEFAULT_TIERS``."""
    if not isinstance(tiers, Mapping):
        return tiers
    out = {}
    for name, t in tiers.items():
        if isinstance(t, Mapping):
            t = {**_defaults(str(name), t), **t, "name": name}
        out[name] = t
    return out


def _defaults(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    if "name" in given:
        raise problem("unknown field (a tier's name is its table's name)", at=f"{name}.name")
    check_tier_tables(name, given)
    if name in DEFAULT_TIERS:
        r, w, c, k = DEFAULT_TIERS[name]
        return {"requests": r, "window_s": w, "concurrency": c, "keys": k}
    for req in ("requests", "concurrency"):
        if req not in given:
            raise problem("required (the tier is not free/pro/enterprise)", at=f"{name}.{req}")
    return {"window_s": 60.0}


def _models_by_id(raw: Any) -> Any:
    """``[models.ID]`` tables as ``[[models]]`` entries."""
    if isinstance(raw, Mapping):
        return [{"id": k, **v} if isinstance(v, Mapping) else v for k, v in raw.items()]
    return raw


class ConfigFile(Table):
    """A reference-server config file (TOML, or JSON by suffix). Every section is
    optional."""

    tiers: Annotated[dict[Label, TierConfig], BeforeValidator(_tier_defaults), MinLen(1)] | None = (
        None
    )
    """Given tiers replace the default ones (free, pro, enterprise)."""
    keys: list[KeyConfig] = Field(default_factory=list)
    """Explicit keys, in addition to the generated ones."""
    admin: AdminConfig = AdminConfig()
    models: Annotated[list[ModelTable], BeforeValidator(_models_by_id)] = Field(
        default_factory=list
    )
    """Added to the default models, or replacing one with the same id."""
    limiter: LimiterConfig = LimiterConfig()
    faults: FaultsConfig = FaultsConfig()
    billing: BillingConfig = BillingConfig()
    limits: RequestLimits = RequestLimits()
    """Per-request work and timeout bounds (``loadkit.server.limits``)."""
    server: ServerTable = Field(default_factory=ServerTable)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        tiers = self.tier_configs()
        names = sorted(t.name for t in tiers)
        for i, k in enumerate(self.keys):
            if k.tier not in names:
                raise problem(f"unknown tier {k.tier!r} (tiers: {names})", at=f"keys[{i}].tier")
        _check_unique(self.admin, tiers, self.keys)
        return self

    def tier_configs(self) -> tuple[TierConfig, ...]:
        if self.tiers is None:
            return default_config().tiers
        return tuple(self.tiers.values())

    def to_model(self) -> ServerConfig:
        models = {m.id: m for m in default_models()}
        for table in self.models:
            m = table.to_model(None)
            models[m.id] = m
        return ServerConfig(
            tiers=self.tier_configs(),
            keys=tuple(self.keys),
            admin=self.admin,
            models=tuple(models.values()),
            limiter=self.limiter,
            faults=self.faults,
            billing=self.billing,
            limits=self.limits,
            **self.server.model_dump(),
        )


def _check_unique(admin: AdminConfig, tiers: tuple[TierConfig, ...], keys: list[KeyConfig]) -> None:
    """Every label names one key, and no key is given twice."""
    labels: dict[str, str] = {admin.label: "admin.label"}
    for t in tiers:
        for i in range(1, t.keys + 1):
            labels.setdefault(f"{t.name}-{i}", f"tiers.{t.name}.keys")
    secrets_seen: set[str] = {admin.key} if admin.key else set()
    for i, k in enumerate(keys):
        if k.label in labels:
            raise problem(f"{k.label!r} is already used (by {labels[k.label]})", f"keys[{i}].label")
        labels[k.label] = f"keys[{i}]"
        if k.key is not None:
            if k.key in secrets_seen:
                raise problem("the same key is given twice", f"keys[{i}].key")
            secrets_seen.add(k.key)
