"""The reference server's token, per-day and per-model limits, pure (time is passed in as
integer nanoseconds): each promise of a tier is a *window rule* (at most N units admitted
in any span of W, per key or per (key, model)) kept as an exact sliding log of
(admission time, units), plus per-model concurrency caps; and the deliberately wrong
modes that loadkit must catch (``output_only``, ``fixed_window``, ``models_per_key``,
``models_off``).

What a request weighs is known when it is admitted (``Ask``): its prompt tokens, counted
by the server's tokenizer, and its output tokens reserved as ``max_tokens`` x sequences.
The reservation is charged as it is and never corrected to what was delivered, as OpenAI
counts ``max_tokens`` against its token limits: so an admission's weight is fixed when it
is made, the limiter's state at any instant depends only on the admissions before it, and
a client that knows what it asked can reproduce the server's arithmetic exactly (the
verdicts use the same rule, ``loadkit.analysis.tokens``).

Deciding is split in two, ``check`` (counts nothing) and ``commit``, so that the server can
ask every limit before any of them counts the request: a request refused by one limit uses
none (API.md: a 429 uses neither a request nor a slot)."""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from loadkit.scenario.model import ModelPromise, TokenCounts

TokenMode = Literal["exact", "output_only", "fixed_window", "models_per_key", "models_off"]
# The wrong modes of a model's request window and concurrency: counted over the key's
# requests to every model (a per-model limit kept per key), or not enforced at all.
MODELS_PER_KEY = "models_per_key"
MODELS_OFF = "models_off"

TOKEN_LIMITED = "token_limit_exceeded"
DAILY_LIMITED = "daily_limit_exceeded"
# A model's request window and concurrency refuse with codes of their own: the request
# limiter's (``rate_limit_exceeded``, ``concurrency_limit_exceeded``) mean the key's limits
# (API.md), and a client that read a model's refusal as the key's would judge it against
# the wrong promise.
MODEL_RATE_LIMITED = "model_rate_limit_exceeded"
MODEL_CONCURRENCY_LIMITED = "model_concurrency_limit_exceeded"

TOKENS = "tokens"
REQUESTS_PER_DAY = "requests_per_day"
REQUESTS = "requests"
CONCURRENCY = "concurrency"

_CODE = {
    TOKENS: TOKEN_LIMITED,
    REQUESTS_PER_DAY: DAILY_LIMITED,
    REQUESTS: MODEL_RATE_LIMITED,  # only a model has a request window here
    CONCURRENCY: MODEL_CONCURRENCY_LIMITED,
}


@dataclass(frozen=True)
class Ask:
    """What one request asks of the limits, known when it is admitted."""

    input_tokens: int  # the prompt, counted by the server's tokenizer
    output_tokens: int  # max_tokens x sequences: reserved, never corrected
    model: str

    def tokens(self, counts: str) -> int:
        """The request's tokens as a promise that counts ``counts`` counts them."""
        if counts == "input":
            return self.input_tokens
        if counts == "output":
            return self.output_tokens
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class WindowRule:
    """At most ``limit`` units admitted in any span (t - W, t], per key (``model`` None)
    or per (key, model). Units: tokens as ``counts`` says (``kind`` "tokens"), else one
    per request ("requests_per_day"; "requests": a model's request window)."""

    kind: str
    limit: int
    window_ns: int
    counts: str | None = None
    model: str | None = None

    @property
    def name(self) -> str:
        """How the truth log and messages name the rule: ``tokens``,
        ``models.MODEL.tokens``, ``requests_per_day``, ``models.MODEL.requests``."""
        return self.kind if self.model is None else f"models.{self.model}.{self.kind}"

    def applies(self, ask: Ask | None) -> bool:
        """Whether a request (``ask`` None: its tokens and model unknown, such as a request
        that failed validation) is counted by this rule."""
        if self.model is not None:
            return ask is not None and ask.model == self.model
        return self.kind != TOKENS or ask is not None

    def units(self, ask: Ask | None, mode: str) -> int:
        """What the request weighs here; ``output_only`` counts output tokens whatever
        the promise says (the wrong mode)."""
        if self.kind != TOKENS:
            return 1
        assert ask is not None and self.counts is not None
        return ask.tokens("output" if mode == "output_only" else self.counts)


@dataclass(frozen=True)
class Rules:
    """Every limit of one tier besides its key-level request window and concurrency."""

    windows: tuple[WindowRule, ...] = ()
    concurrency: tuple[tuple[str, int], ...] = ()  # (model, cap)

    def __bool__(self) -> bool:
        return bool(self.windows or self.concurrency)

    def header_rule(self, ask: Ask | None) -> WindowRule | None:
        """The token rule the ``x-ratelimit-*-tokens`` headers describe: the key's, else
        the requested model's."""
        tokens = [r for r in self.windows if r.kind == TOKENS and r.applies(ask)]
        keyed = [r for r in tokens if r.model is None]
        return (keyed or tokens)[0] if tokens else None


class TierPromises(Protocol):
    """A tier's promises as the server's config holds them (``config.TierConfig``)."""

    @property
    def tokens(self) -> int | None: ...
    @property
    def token_window_s(self) -> float: ...
    @property
    def token_counts(self) -> TokenCounts: ...
    @property
    def requests_per_day(self) -> int | None: ...
    @property
    def day_window_s(self) -> float: ...
    @property
    def window_s(self) -> float: ...
    @property
    def models(self) -> Mapping[str, ModelPromise]: ...


def _ns(seconds: float) -> int:
    return max(1, round(seconds * 1e9))


def rules_of(tier: TierPromises) -> Rules:
    """The rules of ``tier``; what a model's table leaves out is the tier's."""
    windows: list[WindowRule] = []
    if tier.tokens is not None:
        windows.append(WindowRule(TOKENS, tier.tokens, _ns(tier.token_window_s), tier.token_counts))
    if tier.requests_per_day is not None:
        windows.append(WindowRule(REQUESTS_PER_DAY, tier.requests_per_day, _ns(tier.day_window_s)))
    caps = []
    for m, p in tier.models.items():
        if p.tokens is not None:
            w = p.token_window_s if p.token_window_s is not None else tier.token_window_s
            counts = p.token_counts if p.token_counts is not None else tier.token_counts
            windows.append(WindowRule(TOKENS, p.tokens, _ns(w), counts, m))
        if p.requests_per_day is not None:
            w = p.day_window_s if p.day_window_s is not None else tier.day_window_s
            windows.append(WindowRule(REQUESTS_PER_DAY, p.requests_per_day, _ns(w), model=m))
        if p.requests is not None:
            w = p.window_s if p.window_s is not None else tier.window_s
            windows.append(WindowRule(REQUESTS, p.requests, _ns(w), model=m))
        if p.concurrency is not None:
            caps.append((m, p.concurrency))
    return Rules(tuple(windows), tuple(caps))


# --- the logs ----------------------------------------------------------------------------


class SlidingLog:
    """Exact: admissions at times t_i weighing w_i; at t the window holds those with
    t_i in (t - W, t]. Cumulative weights make the wait for room a binary search."""

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self.times: list[int] = []
        self.cums: list[int] = []  # weight admitted up to and including entry i
        self.head = 0  # entries before head have left the window
        self.base = 0  # weight of the entries before head

    def _prune(self, now: int) -> None:
        edge = now - self.window_ns
        h = bisect.bisect_right(self.times, edge, self.head)
        if h != self.head:
            self.base = self.cums[h - 1]
            self.head = h
            if h > 1024 and h * 2 > len(self.times):  # forget what has left, now and then
                del self.times[:h], self.cums[:h]
                self.head = 0

    def used(self, now: int) -> int:
        self._prune(now)
        return (self.cums[-1] if self.cums else 0) - self.base

    def wait_ns(self, now: int, units: int, limit: int) -> int | None:
        """0 if ``units`` fit now, else the ns until they do (None: they never will)."""
        if units > limit:
            return None
        excess = self.used(now) + units - limit
        if excess <= 0:
            return 0
        # The first entry whose leaving frees ``excess``: at its time + W it has left.
        k = bisect.bisect_left(self.cums, self.base + excess, self.head)
        return self.times[k] + self.window_ns - now

    def admit(self, now: int, units: int) -> None:
        self.times.append(now)
        self.cums.append((self.cums[-1] if self.cums else 0) + units)

    def reset_ns(self, now: int) -> int:
        """Until the window is empty again (back to its full allowance)."""
        self._prune(now)
        return self.times[-1] + self.window_ns - now if len(self.times) > self.head else 0


class FixedWindowLog:
    """Wrong on purpose: windows aligned to multiples of W on the clock, so a span that
    straddles an edge admits up to twice the limit."""

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self.window = -1
        self.count = 0

    def _roll(self, now: int) -> None:
        w = now // self.window_ns
        if w != self.window:
            self.window, self.count = w, 0

    def used(self, now: int) -> int:
        self._roll(now)
        return self.count

    def wait_ns(self, now: int, units: int, limit: int) -> int | None:
        if units > limit:
            return None
        self._roll(now)
        return 0 if self.count + units <= limit else (self.window + 1) * self.window_ns - now

    def admit(self, now: int, units: int) -> None:
        self._roll(now)
        self.count += units

    def reset_ns(self, now: int) -> int:
        self._roll(now)
        return (self.window + 1) * self.window_ns - now if self.count else 0


Log = SlidingLog | FixedWindowLog


# --- deciding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the rule (or a model's concurrency cap), what it asked,
    what the window held, and when it may be admitted (None: no promise can be made)."""

    rule: str  # WindowRule.name, or models.MODEL.concurrency
    kind: str  # tokens | requests_per_day | requests | concurrency
    code: str
    limit: int
    used: int
    asked: int
    window_ns: int | None
    retry_after_ns: int | None
    counts: str | None = None  # a token rule: which tokens it counts

    @property
    def too_large(self) -> bool:
        """The request alone asks more than the limit: it can never be admitted."""
        return self.asked > self.limit


@dataclass(frozen=True)
class HeaderState:
    """The ``x-ratelimit-*-tokens`` values: the limit, what remains, until it is full."""

    limit: int
    remaining: int
    reset_ns: int


class TokenLimiter:
    """Window rules and per-model concurrency per key; ``check`` then ``commit``, and
    ``release`` once per committed request that took a model's concurrency slot."""

    def __init__(self, mode: str = "exact") -> None:
        self.mode = mode
        self._logs: dict[tuple[str, WindowRule], Log] = {}
        self._in_flight: dict[tuple[str, str], int] = {}

    def _log(self, key: str, rule: WindowRule) -> Log:
        log = self._logs.get((key, rule))
        if log is None:
            log = (
                FixedWindowLog(rule.window_ns)
                if self.mode == "fixed_window"
                else SlidingLog(rule.window_ns)
            )
            self._logs[(key, rule)] = log
        return log

    def check(self, key: str, rules: Rules, ask: Ask | None, now_ns: int) -> Refusal | None:
        """The first rule that refuses the request now (rules in order, caps last), or
        None: every rule admits it. Counts nothing."""
        for rule in rules.windows:
            if not rule.applies(ask) or self._off(rule.model, rule.kind):
                continue
            log = self._log(key, rule)
            units = rule.units(ask, self.mode)
            wait = log.wait_ns(now_ns, units, rule.limit)
            if wait != 0:
                return Refusal(
                    rule.name,
                    rule.kind,
                    _CODE[rule.kind],
                    rule.limit,
                    log.used(now_ns),
                    units,
                    rule.window_ns,
                    wait,
                    rule.counts,
                )
        if ask is not None and not self._off(ask.model, CONCURRENCY):
            for model, cap in rules.concurrency:
                held = self._in_flight.get((key, model), 0)
                if model == ask.model and held >= cap:
                    # No promise: when a slot frees depends on other requests.
                    return Refusal(
                        f"models.{model}.{CONCURRENCY}",
                        CONCURRENCY,
                        MODEL_CONCURRENCY_LIMITED,
                        cap,
                        held,
                        1,
                        None,
                        None,
                    )
        return None

    def commit(self, key: str, rules: Rules, ask: Ask | None, now_ns: int) -> dict[str, int]:
        """Count an admitted request in every rule that applies to it; returns what each
        rule was charged (by rule name; a model's concurrency slot counts 1)."""
        charged = {}
        for rule in rules.windows:
            if rule.applies(ask) or self._shared(rule.model, rule.kind, ask):
                units = rule.units(ask, self.mode)
                self._log(key, rule).admit(now_ns, units)
                charged[rule.name] = units
        if ask is not None:
            for model, _ in rules.concurrency:
                if model == ask.model or self._shared(model, CONCURRENCY, ask):
                    slot = (key, model)
                    self._in_flight[slot] = self._in_flight.get(slot, 0) + 1
                    charged[f"models.{model}.{CONCURRENCY}"] = 1
        return charged

    def _off(self, model: str | None, kind: str) -> bool:
        """``models_off``: a model's request window or concurrency is never checked."""
        return self.mode == MODELS_OFF and model is not None and kind in (REQUESTS, CONCURRENCY)

    def _shared(self, model: str | None, kind: str, ask: Ask | None) -> bool:
        """``models_per_key``: a model's request window and concurrency count the key's
        requests to every model (they still refuse only requests to their model)."""
        return (
            self.mode == MODELS_PER_KEY
            and ask is not None
            and model is not None
            and kind in (REQUESTS, CONCURRENCY)
        )

    def release(self, key: str, rules: Rules, ask: Ask | None) -> None:
        """Free the model's concurrency slot a committed request took (if it took one)."""
        if ask is None:
            return
        for model, _ in rules.concurrency:
            if model == ask.model or self._shared(model, CONCURRENCY, ask):
                slot = (key, model)
                if self._in_flight.get(slot, 0) <= 0:
                    raise RuntimeError(f"release without commit for key {key!r}, model {model!r}")
                self._in_flight[slot] -= 1

    def header_state(
        self, key: str, rules: Rules, ask: Ask | None, now_ns: int
    ) -> HeaderState | None:
        """The token headers' values for a request (after its decision), or None when no
        token rule concerns it."""
        rule = rules.header_rule(ask)
        if rule is None:
            return None
        log = self._log(key, rule)
        return HeaderState(rule.limit, max(0, rule.limit - log.used(now_ns)), log.reset_ns(now_ns))
