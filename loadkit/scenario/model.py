"""The scenario model: what to load, how hard, for how long, and what was promised.

Frozen dataclasses and pure functions: no files, environment, sockets or clocks (the Locust
users import this module too). ``[target]`` and ``[tiers.NAME]`` have the file's shape, so
their dataclasses are their own schema: a field's type says what the file may hold
(``loadkit.schema``), its docstring what it means. The other tables are validated in
``tables`` and arrive here converted.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Strict

from loadkit.api import (
    LAYOUTS,
    AuthStyle,
    TargetApi,
    check_header_name,
    custom_layout,
    default_layout_name,
)
from loadkit.outcomes import Backoff
from loadkit.schema import (
    DERIVED,
    Count,
    Invalid,
    NonNegativeInt,
    Positive,
    Text,
    invalid,
    problem,
    validate_value,
)

EMBEDDED = "embedded"
Pattern = Literal["constant", "poisson", "burst", "closed"]
MixKind = Literal["chat_stream", "chat", "completions_stream", "completions", "models"]
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

    def sample(self, rng: random.Random) -> int:
        """Draw one value with ``rng``."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "uniform":
            return rng.randint(self.min, self.max)
        if self.kind == "normal":
            return max(self.min, min(self.max, round(rng.gauss(self.mean, self.sd))))
        return rng.choice(self.choices)


TokenCounts = Literal["input", "output", "total"]
TOKEN_COUNTS: tuple[str, ...] = ("input", "output", "total")
DAY_S = 86_400.0
# A promise's qualifiers, and the promise each belongs to (one without it means nothing).
PROMISE_OF = {
    "window_s": "requests",
    "token_window_s": "tokens",
    "token_counts": "tokens",
    "day_window_s": "requests_per_day",
}


def check_qualifiers(table: Mapping[str, Any], at: str, tier: bool) -> None:
    """Refuse a window or ``token_counts`` written without the promise it qualifies (in a
    tier's or a model's table, as written; shared by scenarios and the server's config)."""
    for name, promise in PROMISE_OF.items():
        if tier and promise == "requests":
            continue  # a tier must promise requests: its absence is told as required
        if name in table and promise not in table:
            raise problem(f"only with {promise} (it qualifies that promise)", f"{at}.{name}")


def check_tier_tables(name: str, table: Mapping[str, Any]) -> None:
    """``check_qualifiers`` on a tier's table as written and on each of its models'."""
    check_qualifiers(table, name, tier=True)
    models = table.get("models")
    if isinstance(models, Mapping):
        for m, mt in models.items():
            if isinstance(mt, Mapping):
                check_qualifiers(mt, f"{name}.models.{m}", tier=False)


@dataclass(frozen=True, kw_only=True)
class ModelPromise:
    """``[tiers.NAME.models.MODEL]``: promises that hold per (key, model): each key's requests
    to MODEL are counted apart from its requests to other models (OpenAI's limits are all
    of this kind). Every promise is optional (at least one is needed); a window or
    ``token_counts`` left out is the tier's."""

    requests: Count | None = None
    """Promised: admitted requests to this model in any span of ``window_s``."""
    window_s: Positive | None = None
    concurrency: Count | None = None
    """Promised: admitted requests to this model in flight at any instant."""
    tokens: Count | None = None
    """Promised: admitted tokens to this model in any span of ``token_window_s``."""
    token_window_s: Positive | None = None
    token_counts: TokenCounts | None = None
    """Which tokens count (see the tier's ``token_counts``)."""
    requests_per_day: Count | None = None
    """Promised: admitted requests to this model in any span of ``day_window_s``."""
    day_window_s: Positive | None = None

    def __post_init__(self) -> None:
        if (self.requests, self.concurrency, self.tokens, self.requests_per_day) == (None,) * 4:
            raise problem(
                "a model's table needs at least one promise: requests, concurrency, tokens "
                "or requests_per_day"
            )

    def promised(self) -> dict[str, Any]:
        """The promises set, each with its window (run.json ``tiers.NAME.models.MODEL``)."""
        d: dict[str, Any] = {}
        if self.requests is not None:
            d.update(requests=self.requests, window_s=self.window_s)
        if self.concurrency is not None:
            d["concurrency"] = self.concurrency
        if self.tokens is not None:
            d.update(
                tokens=self.tokens,
                token_window_s=self.token_window_s,
                token_counts=self.token_counts,
            )
        if self.requests_per_day is not None:
            d.update(requests_per_day=self.requests_per_day, day_window_s=self.day_window_s)
        return d


@dataclass(frozen=True, kw_only=True)
class TierSpec:
    """``[tiers.NAME]``: a tier's promised limits, and where its keys come from."""

    name: str = field(metadata=DERIVED)
    """The table's name."""
    requests: Count
    """Promised: admitted requests in any span of ``window_s``."""
    window_s: Positive = 60.0
    concurrency: Count
    """Promised: admitted requests in flight at any instant."""
    tokens: Count | None = None
    """Promised: admitted tokens in any span of ``token_window_s`` (tokens per minute)."""
    token_window_s: Positive = 60.0
    token_counts: TokenCounts = "total"
    """Which tokens count toward ``tokens``: "input" (the prompt, as the service counts
    it), "output" (``max_tokens`` x choices, reserved when the request is admitted) or
    "total" (both). Providers differ: OpenAI and Azure OpenAI count the prompt plus
    ``max_tokens`` (total); Anthropic promises input and output tokens per minute apart
    (one tier per kind: input or output)."""
    requests_per_day: Count | None = None
    """Promised: admitted requests in any span of ``day_window_s`` (a day)."""
    day_window_s: Positive = DAY_S
    """The span of ``requests_per_day``: a day; shorter only to check a server configured
    the same way (the reference server's tests)."""
    models: dict[Text, ModelPromise] = field(default_factory=dict)
    """``[tiers.NAME.models.MODEL]``: promises per (key, model), on top of the tier's."""
    keys_env: Text | None = None
    """An environment variable holding the tier's keys, comma-separated."""
    keys_file: Text | None = None
    """A file of keys, one a line (``KEY`` or ``LABEL KEY``); relative to the scenario."""
    keys: NonNegativeInt = 0
    """Use only the first N keys (0 = all); embedded server: how many of its keys."""

    def promised(self) -> dict[str, Any]:
        """The promise as run.json's ``tiers.NAME`` holds it: requests, window_s and
        concurrency always (what every reader knows); tokens, requests per day and models
        only when promised, so a reader that predates them reads the same three."""
        d: dict[str, Any] = {
            "requests": self.requests,
            "window_s": self.window_s,
            "concurrency": self.concurrency,
        }
        if self.tokens is not None:
            d.update(
                tokens=self.tokens,
                token_window_s=self.token_window_s,
                token_counts=self.token_counts,
            )
        if self.requests_per_day is not None:
            d.update(requests_per_day=self.requests_per_day, day_window_s=self.day_window_s)
        if self.models:
            d["models"] = {m: p.promised() for m, p in self.models.items()}
        return d

    def with_model_defaults(self) -> TierSpec:
        """The tier with each model's missing windows and ``token_counts`` taken from the
        tier's (what a model table leaves out is the tier's)."""
        models = {}
        for m, p in self.models.items():
            given = {k: getattr(p, k) for k in PROMISE_OF}
            models[m] = replace(
                p,
                **{
                    k: getattr(self, k)
                    for k, v in given.items()
                    if v is None and getattr(p, PROMISE_OF[k]) is not None
                },
            )
        return replace(self, models=models)

    def token_promise(self, model: str | None) -> tuple[int, float, str] | None:
        """(tokens, window_s, counts) that a request to ``model`` is judged by: the model's
        own token promise, else the tier's; None when neither promises tokens."""
        p = self.models.get(model) if model is not None else None
        if p is not None and p.tokens is not None:
            return (
                p.tokens,
                p.token_window_s if p.token_window_s is not None else self.token_window_s,
                p.token_counts if p.token_counts is not None else self.token_counts,
            )
        if self.tokens is not None:
            return self.tokens, self.token_window_s, self.token_counts
        return None


@dataclass(frozen=True)
class LoadSpec:
    """One load phase applied to every key of a tier (``[[load]]``, see ``tables``)."""

    tier: str
    pattern: Pattern
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
        self,
        status: int,
        retry_after_s: float | None,
        transport_error: str | None,
        failures: int | None = None,
    ) -> float:
        """How long a closed-loop user pauses after a request before its next one: its think
        time; after a 429 the advertised Retry-After (capped at 5 s; 1 s if absent; or
        ``backoff_429_s``); after any other failure a backoff from 1 s doubling with each
        of the user's ``failures`` in a row (this one included; default 1) up to 10 s
        (``loadkit.outcomes.Backoff``)."""
        if failures is None:
            failures = 0 if 200 <= status < 300 else 1
        return Backoff(limited_s=self.backoff_429_s).pause(
            self.think_s, status, retry_after_s, transport_error, failures
        )

    def applies_to(self, key_index: int) -> bool:
        """Whether this phase loads the tier's ``key_index``-th key (1-based)."""
        return not self.keys or key_index in self.keys

    def active_until(self, run_duration: float) -> float:
        if self.duration_s is None:
            return run_duration
        return min(run_duration, self.start_s + self.duration_s)


def _header_name(v: str) -> str:
    try:
        check_header_name(v, "")
    except ValueError as exc:
        if "set by loadkit" in str(exc):
            raise invalid("expected a header loadkit does not set itself", v) from None
        raise invalid("expected an HTTP header name (letters, digits, '-')", v) from None
    return v


def _header_value(v: str) -> str:
    if any(c in v for c in "\r\n\0"):
        raise problem("a header value may not hold a line break or NUL (value not shown)")
    return v


def _scheme(v: str) -> str:
    if v != v.strip() or any(c.isspace() for c in v):
        raise invalid('expected a single word such as "Bearer", or "" for the bare key', v)
    return v


def _api_path(v: str) -> str:
    if not v.startswith("/") or any(c.isspace() for c in v):
        raise invalid("expected a path starting with '/', without spaces", v)
    return v


EndpointName = Literal["chat", "completions", "models", "model"]
HeaderName = Annotated[str, Strict(), AfterValidator(_header_name)]
HeaderValue = Annotated[str, Strict(), AfterValidator(_header_value)]
ApiPath = Annotated[str, Strict(), AfterValidator(_api_path)]


def expand_env(value: str, environ: Mapping[str, str], where: str) -> str:
    """``${NAME}`` replaced by the environment variable NAME (an error names the variable,
    never a value)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in environ:
            raise ScenarioError(f"{where}: environment variable {name} is not set")
        return environ[name]

    return _ENV_REF.sub(sub, value)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _embedded_or_http(url: str) -> str:
    url = url.rstrip("/")
    if url != EMBEDDED and not url.startswith(("http://", "https://")):
        raise invalid("expected 'embedded' or an http(s) URL", url)
    return url


@dataclass(frozen=True)
class TargetSpec:
    """``[target]``: where the load goes, and how long to wait for it."""

    base_url: Annotated[str, AfterValidator(_embedded_or_http)] = EMBEDDED
    """The API's base URL including ``/api/v1``; "embedded" starts loadkit's reference
    server on a free loopback port for the run."""
    model: Text = "loadkit-small"
    """The default model of every load phase."""
    connect_timeout_s: Positive = 10.0
    request_timeout_s: Positive = 600.0
    """A whole request, long streams included."""
    read_timeout_s: Positive = 120.0
    """The longest silence between two reads."""
    server_config: Text | None = None
    """Embedded only: a reference-server TOML (faults, limiter modes); a relative path is
    relative to the scenario file."""
    api: Literal["auto", "seed", "openai"] = "auto"
    """Path layout: "seed" (``/ai/chat/completions``, ``/ai/models`` under ``…/api/v1``),
    "openai" (``/chat/completions``, ``/completions``, ``/models`` under ``…/v1``); "auto":
    "openai" when base_url ends in ``/v1`` (but not ``/api/v1``), else "seed"."""
    paths: dict[EndpointName, ApiPath] = field(default_factory=dict)
    """Explicit per-endpoint paths over the layout (``chat``, ``completions``, ``models``,
    ``model`` with ``{model}``), e.g. an Azure deployment's chat path."""
    auth_header: HeaderName = "Authorization"
    """The header that carries the key (``api-key``, ``x-api-key``, …)."""
    auth_scheme: Annotated[str, Strict(), AfterValidator(_scheme)] = "Bearer"
    """Written before the key (``Bearer KEY``); "" sends the bare key."""
    headers: dict[HeaderName, HeaderValue] = field(default_factory=dict)
    """Extra static headers on every request. ``${NAME}`` in a value is read from the
    environment at run time (put secrets there: the scenario and run.json keep the text)."""
    http_client: Literal["loadkit", "aiohttp"] | None = None
    """The asyncio engine's HTTP client: "loadkit" (the default), its own HTTP/1.1 client,
    which costs less per request, or "aiohttp". Refused with the Locust engine, which
    sends with Locust's client."""

    def target_api(self, environ: Mapping[str, str] | None = None) -> TargetApi:
        """The resolved layout and auth style (``environ`` expands ``${NAME}`` in header
        values; without it the values stay as written)."""
        name = self.api if self.api != "auto" else default_layout_name(self.base_url)
        layout = custom_layout(LAYOUTS[name], {str(k): v for k, v in self.paths.items()})
        extra = tuple(
            (h, expand_env(v, environ, f"target.headers.{h}") if environ is not None else v)
            for h, v in self.headers.items()
        )
        return TargetApi(layout, AuthStyle(self.auth_header, self.auth_scheme), extra)


@dataclass(frozen=True)
class Scenario:
    """A whole scenario, validated; ``[run]``'s fields are its own (see ``tables``)."""

    name: str
    target: TargetSpec
    tiers: dict[str, TierSpec]
    load: tuple[LoadSpec, ...]
    duration_s: float = 60.0  # inf: bounded by max_requests only
    max_requests: int = 0  # 0 = no count limit
    warmup_s: float = 0.0
    drain_s: float = 30.0  # after the end, how long in-flight requests may finish
    seed: int = 1
    engine: str | None = None
    honour_retry_after: bool = False
    max_retries: int = 3
    parquet_twins: bool = True  # record files of 4 MB or more get a Parquet twin (records.py)
    slo: dict[str, Any] = field(default_factory=dict)
    goodput: dict[str, float] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)
    source: str = "<built-in>"

    def with_overrides(
        self,
        *,
        duration_s: float | None = None,
        base_url: str | None = None,
        parquet_twins: bool | None = None,
    ) -> Scenario:
        s = self
        if parquet_twins is not None:
            s = replace(s, parquet_twins=parquet_twins)
        if duration_s is not None:
            try:
                duration_s = validate_value(Positive, duration_s, root="--duration")
            except Invalid as exc:
                raise ScenarioError(str(exc)) from None
            s = replace(s, duration_s=float(duration_s))
        if base_url is not None:
            s = replace(s, target=replace(s.target, base_url=base_url))
        return s

    def to_dict(self) -> dict[str, Any]:
        """The resolved scenario for run.json (no secrets: it never holds any)."""
        return asdict(self)


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
