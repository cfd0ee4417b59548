"""Configuration of the reference server: frozen dataclasses, built from a TOML-shaped
dict (``config_from_dict``), a TOML or JSON file (``load_config``) or the defaults
(``default_config``). Validated once here; every error names the field and the value."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from loadkit.server.limits import RequestLimits, limits_from_dict

LIMITER_MODES = (
    "exact",
    "fixed_window",
    "token_bucket",
    "concurrency_off_by_one",
    "under_admit",
    "off",
)
CAPABILITIES = ("chat", "completion")
API_LAYOUTS = ("seed", "openai")  # paths under /api/v1/ai (API.md) or OpenAI's /v1

# name -> (requests, window_s, concurrency, generated keys)
DEFAULT_TIERS: dict[str, tuple[int, float, int, int]] = {
    "free": (60, 60.0, 3, 3),
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
    name: str
    requests: int
    window_s: float
    concurrency: int
    keys: int = 1
    balance: float | None = None  # None: unlimited


@dataclass(frozen=True)
class KeyConfig:
    """An explicit key from ``[[keys]]``; ``key`` None means generate a random one."""

    label: str
    tier: str
    key: str | None = None
    balance: float | None = None  # None: the tier's balance


@dataclass(frozen=True)
class AdminConfig:
    label: str = "admin"
    key: str | None = None
    requests: int = 1_000_000
    window_s: float = 60.0
    concurrency: int = 10_000


@dataclass(frozen=True)
class LimiterConfig:
    mode: str = "exact"
    burst_factor: float = 2.0  # token_bucket capacity = ceil(requests * burst_factor)
    under_admit_fraction: float = 0.8  # under_admit refuses at this share of the limit


@dataclass(frozen=True)
class FaultsConfig:
    seed: int = 0
    error_rate: float = 0.0  # 500 internal_error before the response starts
    midstream_error_rate: float = 0.0  # an error event after some tokens, then the end
    midstream_error_after_tokens: int = 3
    disconnect_rate: float = 0.0  # streams: the server closes the connection mid-stream
    disconnect_after_tokens: int = 3
    stall_rate: float = 0.0  # the stream (or non-stream delay) pauses for stall_s
    stall_s: float = 1.0
    stall_after_tokens: int = 1


@dataclass(frozen=True)
class BillingConfig:
    prompt_per_1k: float = 0.0
    completion_per_1k: float = 0.0


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
    return config_from_dict(data)


# --- validation helpers --------------------------------------------------------------


def _check_keys(d: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected a table, got {d!r}")
    for k in d:
        if k not in allowed:
            raise ConfigError(
                f"{_join(where, str(k))}: unknown field (allowed: {', '.join(sorted(allowed))})"
            )


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _int(d: Mapping[str, Any], name: str, where: str, default: int, lo: int | None = None) -> int:
    v = d.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{_join(where, name)}: expected an integer, got {v!r}")
    if lo is not None and v < lo:
        raise ConfigError(f"{_join(where, name)}: must be >= {lo}, got {v!r}")
    return v


def _num(
    d: Mapping[str, Any],
    name: str,
    where: str,
    default: float,
    lo: float | None = 0.0,
    hi: float | None = None,
    lo_open: bool = False,
) -> float:
    v = d.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or math.isinf(v):
        raise ConfigError(f"{_join(where, name)}: expected a finite number, got {v!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        op = ">" if lo_open else ">="
        raise ConfigError(f"{_join(where, name)}: must be {op} {lo}, got {v!r}")
    if hi is not None and v > hi:
        raise ConfigError(f"{_join(where, name)}: must be <= {hi}, got {v!r}")
    return float(v)


def _str(d: Mapping[str, Any], name: str, where: str, default: str | None) -> str | None:
    v = d.get(name, default)
    if v is None:
        return None
    if not isinstance(v, str) or not v or v != v.strip():
        raise ConfigError(
            f"{_join(where, name)}: expected a non-empty string without surrounding "
            f"spaces, got {v!r}"
        )
    return v


def _bool(d: Mapping[str, Any], name: str, where: str, default: bool) -> bool:
    v = d.get(name, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{_join(where, name)}: expected true or false, got {v!r}")
    return v


def _balance(d: Mapping[str, Any], where: str) -> float | None:
    if d.get("balance") is None:
        return None
    return _num(d, "balance", where, 0.0)


def _label_ok(label: str, where: str) -> str:
    if any(c.isspace() for c in label) or len(label) > 64:
        raise ConfigError(f"{where}: a label has no spaces and <= 64 characters, got {label!r}")
    return label


# --- sections -------------------------------------------------------------------------


def latency_from_dict(d: Mapping[str, Any], where: str, base: LatencyProfile) -> LatencyProfile:
    vals = {f.name: _num(d, f.name, where, getattr(base, f.name)) for f in fields(LatencyProfile)}
    return LatencyProfile(**vals)


_MODEL_FIELDS = {"id", "context_length", "capabilities", "owned_by", "created"} | {
    f.name for f in fields(LatencyProfile)
}


def model_from_dict(
    d: Mapping[str, Any], where: str, base: ModelConfig | None = None
) -> ModelConfig:
    """A model from its flat dict (also the body of the admin create/update paths);
    with ``base`` the missing fields keep their current values."""
    _check_keys(d, where, _MODEL_FIELDS | {"latency"})
    if base is None:
        mid = _str(d, "id", where, None)
        if mid is None:
            raise ConfigError(f"{_join(where, 'id')}: required")
        base = ModelConfig(mid)
    elif "id" in d and d["id"] != base.id:
        raise ConfigError(f"{_join(where, 'id')}: cannot be changed, got {d['id']!r}")
    ctx = _int(d, "context_length", where, base.context_length, lo=1)
    chat, completion = base.chat, base.completion
    if "capabilities" in d:
        caps = d["capabilities"]
        if (
            not isinstance(caps, list)
            or not caps
            or any(not isinstance(c, str) or c not in CAPABILITIES for c in caps)
        ):
            raise ConfigError(
                f"{_join(where, 'capabilities')}: expected a non-empty list of "
                f"{list(CAPABILITIES)}, got {caps!r}"
            )
        chat, completion = "chat" in caps, "completion" in caps
    lat_src: Mapping[str, Any] = {k: v for k, v in d.items() if k in _MODEL_FIELDS}
    if "latency" in d:
        _check_keys(d["latency"], _join(where, "latency"), {f.name for f in fields(LatencyProfile)})
        lat_src = {**lat_src, **d["latency"]}
    latency = latency_from_dict(lat_src, where, base.latency)
    owned_by = _str(d, "owned_by", where, base.owned_by) or base.owned_by
    created = _int(d, "created", where, base.created, lo=0)
    return ModelConfig(base.id, ctx, chat, completion, latency, owned_by, created)


def _tiers(raw: Any) -> tuple[TierConfig, ...]:
    if raw is None:
        return default_config().tiers
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"tiers: expected a non-empty table of tiers, got {raw!r}")
    out = []
    for name, t in raw.items():
        where = f"tiers.{name}"
        _label_ok(str(name), where)
        _check_keys(t, where, {"requests", "window_s", "concurrency", "keys", "balance"})
        dr, dw, dc, dk = DEFAULT_TIERS.get(name, (None, 60.0, None, 1))
        for req in ("requests", "concurrency"):
            if req not in t and (dr if req == "requests" else dc) is None:
                raise ConfigError(f"{where}.{req}: required (the tier is not free/pro/enterprise)")
        out.append(
            TierConfig(
                name=str(name),
                requests=_int(t, "requests", where, dr or 0, lo=1),
                window_s=_num(t, "window_s", where, dw, lo=0.0, lo_open=True),
                concurrency=_int(t, "concurrency", where, dc or 0, lo=1),
                keys=_int(t, "keys", where, dk, lo=0),
                balance=_balance(t, where),
            )
        )
    return tuple(out)


def _explicit_keys(raw: Any, tiers: tuple[TierConfig, ...]) -> tuple[KeyConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"keys: expected an array of tables ([[keys]]), got {raw!r}")
    names = {t.name for t in tiers}
    out = []
    for i, k in enumerate(raw):
        where = f"keys[{i}]"
        _check_keys(k, where, {"label", "tier", "key", "balance"})
        label = _str(k, "label", where, None)
        tier = _str(k, "tier", where, None)
        if label is None or tier is None:
            raise ConfigError(f"{where}: 'label' and 'tier' are required, got {dict(k)!r}")
        if tier not in names:
            raise ConfigError(f"{where}.tier: unknown tier {tier!r} (tiers: {sorted(names)})")
        key = _str(k, "key", where, None)
        if key is not None and any(c.isspace() for c in key):
            raise ConfigError(f"{where}.key: a key has no whitespace")
        out.append(KeyConfig(_label_ok(label, f"{where}.label"), tier, key, _balance(k, where)))
    return tuple(out)


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    v = data.get(name, {})
    if not isinstance(v, Mapping):
        raise ConfigError(f"{name}: expected a table, got {v!r}")
    return v


def config_from_dict(data: Mapping[str, Any]) -> ServerConfig:
    """Build and validate a ``ServerConfig`` from the TOML-shaped dict; missing parts
    keep the defaults (tiers given replace the default tiers; models given are added to,
    or by id replace, the default models)."""
    _check_keys(
        data,
        "",
        {"server", "tiers", "keys", "admin", "models", "limiter", "faults", "billing", "limits"},
    )
    tiers = _tiers(data.get("tiers"))
    keys = _explicit_keys(data.get("keys"), tiers)

    a = _section(data, "admin")
    _check_keys(a, "admin", {"label", "key", "requests", "window_s", "concurrency"})
    da = AdminConfig()
    admin = AdminConfig(
        label=_label_ok(_str(a, "label", "admin", da.label) or da.label, "admin.label"),
        key=_str(a, "key", "admin", None),
        requests=_int(a, "requests", "admin", da.requests, lo=1),
        window_s=_num(a, "window_s", "admin", da.window_s, lo=0.0, lo_open=True),
        concurrency=_int(a, "concurrency", "admin", da.concurrency, lo=1),
    )

    models = {m.id: m for m in default_models()}
    raw_models = data.get("models", [])
    if isinstance(raw_models, Mapping):  # [models.<id>] tables
        raw_models = [
            {"id": k, **v} if isinstance(v, Mapping) else v for k, v in raw_models.items()
        ]
    if not isinstance(raw_models, list):
        raise ConfigError(f"models: expected [[models]] entries, got {raw_models!r}")
    for i, m in enumerate(raw_models):
        mc = model_from_dict(m, f"models[{i}]")
        models[mc.id] = mc

    lim = _section(data, "limiter")
    _check_keys(lim, "limiter", {f.name for f in fields(LimiterConfig)})
    mode = lim.get("mode", "exact")
    if mode not in LIMITER_MODES:
        raise ConfigError(f"limiter.mode: expected one of {list(LIMITER_MODES)}, got {mode!r}")
    limiter = LimiterConfig(
        mode=mode,
        burst_factor=_num(lim, "burst_factor", "limiter", 2.0, lo=1.0, lo_open=True),
        under_admit_fraction=_num(
            lim, "under_admit_fraction", "limiter", 0.8, lo=0.0, hi=1.0, lo_open=True
        ),
    )

    f = _section(data, "faults")
    _check_keys(f, "faults", {x.name for x in fields(FaultsConfig)})
    df = FaultsConfig()
    faults = FaultsConfig(
        seed=_int(f, "seed", "faults", df.seed),
        error_rate=_num(f, "error_rate", "faults", 0.0, hi=1.0),
        midstream_error_rate=_num(f, "midstream_error_rate", "faults", 0.0, hi=1.0),
        midstream_error_after_tokens=_int(
            f, "midstream_error_after_tokens", "faults", df.midstream_error_after_tokens, lo=0
        ),
        disconnect_rate=_num(f, "disconnect_rate", "faults", 0.0, hi=1.0),
        disconnect_after_tokens=_int(
            f, "disconnect_after_tokens", "faults", df.disconnect_after_tokens, lo=0
        ),
        stall_rate=_num(f, "stall_rate", "faults", 0.0, hi=1.0),
        stall_s=_num(f, "stall_s", "faults", df.stall_s),
        stall_after_tokens=_int(f, "stall_after_tokens", "faults", df.stall_after_tokens, lo=0),
    )

    b = _section(data, "billing")
    _check_keys(b, "billing", {"prompt_per_1k", "completion_per_1k"})
    billing = BillingConfig(
        prompt_per_1k=_num(b, "prompt_per_1k", "billing", 0.0),
        completion_per_1k=_num(b, "completion_per_1k", "billing", 0.0),
    )

    s = _section(data, "server")
    server_fields = {
        "max_body_bytes",
        "default_chat_max_tokens",
        "default_completion_max_tokens",
        "max_choices",
        "seed",
        "lateness_samples",
        "access_log",
        "api",
    }
    _check_keys(s, "server", server_fields)
    api = s.get("api", "seed")
    if api not in API_LAYOUTS:
        raise ConfigError(f"server.api: expected one of {list(API_LAYOUTS)}, got {api!r}")
    base = ServerConfig(tiers=tiers)
    cfg = replace(
        base,
        keys=keys,
        admin=admin,
        models=tuple(models.values()),
        limiter=limiter,
        faults=faults,
        billing=billing,
        max_body_bytes=_int(s, "max_body_bytes", "server", base.max_body_bytes, lo=1024),
        default_chat_max_tokens=_int(
            s, "default_chat_max_tokens", "server", base.default_chat_max_tokens, lo=1
        ),
        default_completion_max_tokens=_int(
            s, "default_completion_max_tokens", "server", base.default_completion_max_tokens, lo=1
        ),
        max_choices=_int(s, "max_choices", "server", base.max_choices, lo=1),
        seed=_int(s, "seed", "server", base.seed),
        lateness_samples=_int(s, "lateness_samples", "server", base.lateness_samples, lo=1000),
        access_log=_bool(s, "access_log", "server", False),
        api=api,
        limits=limits_from_dict(_section(data, "limits")),
    )
    _check_unique(cfg)
    return cfg


def _check_unique(cfg: ServerConfig) -> None:
    labels: dict[str, str] = {cfg.admin.label: "admin.label"}
    for t in cfg.tiers:
        for i in range(1, t.keys + 1):
            labels.setdefault(f"{t.name}-{i}", f"tiers.{t.name}.keys")
    secrets_seen: set[str] = {cfg.admin.key} if cfg.admin.key else set()
    for i, k in enumerate(cfg.keys):
        if k.label in labels:
            raise ConfigError(
                f"keys[{i}].label: {k.label!r} is already used (by {labels[k.label]})"
            )
        labels[k.label] = f"keys[{i}]"
        if k.key is not None:
            if k.key in secrets_seen:
                raise ConfigError(f"keys[{i}].key: the same key is given twice")
            secrets_seen.add(k.key)
