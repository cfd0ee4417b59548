"""Which limit refused a 429: ``requests`` (per window), ``concurrency``, ``tokens``,
``requests_per_day``, or a model's own request window or concurrency (``model_requests``,
``model_concurrency``: the record's ``model`` says which model), read from what the
response itself says (error code, type and message; headers). Pure.

:data:`SIGNALS` is an ordered table, one line per thing a server is known to send: a new
provider is one more line. Signals that *name* the limit (loadkit's codes, an error type or
message, a header whose value is the limit type) come first and the first that matches
decides; then the weaker inference "this counter is at 0" (``header_zero``), where several
counters at 0 naming different limits leave the refusal unattributed and the signal says
which disagreed; last, anything listed after those. Nothing matching: unattributed, and
analysis judges the refusal against both limits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

__all__ = [
    "CONCURRENCY",
    "LIMIT_KINDS",
    "MODEL_CONCURRENCY",
    "MODEL_REQUESTS",
    "REQUESTS",
    "REQUESTS_PER_DAY",
    "SIGNALS",
    "TOKENS",
    "Attribution",
    "Refusal",
    "Signal",
    "attribute",
]

REQUESTS = "requests"
CONCURRENCY = "concurrency"
TOKENS = "tokens"
# Apart from REQUESTS: a day's refusal says nothing about the per-window limit.
REQUESTS_PER_DAY = "requests_per_day"
# A limit kept per (key, model) apart from the key's: judged apart from the key's promise.
MODEL_REQUESTS = "model_requests"
MODEL_CONCURRENCY = "model_concurrency"
LIMIT_KINDS = (REQUESTS, CONCURRENCY, TOKENS, REQUESTS_PER_DAY, MODEL_REQUESTS, MODEL_CONCURRENCY)

Where = Literal["code", "type", "message", "header", "header_zero", "header_present"]


@dataclass(frozen=True, slots=True)
class Signal:
    """One thing a server sends that names the limit.

    ``where``: ``code`` / ``type`` (the error body's field equals ``pattern``, any case);
    ``message`` (regular expression, lower case, searched in the lower-cased error message
    or plain-text body; a leading literal, not ``\\b``, keeps the search fast);
    ``header`` (the header named ``pattern`` has a value naming the limit);
    ``header_zero`` (a header whose whole name matches the regular expression ``pattern``
    holds a number <= 0); ``header_present`` (the header is sent at all).
    ``kind`` None: the limit is named by the value (``header``) or by the pattern's last
    group (``message``, ``header_zero``), through :data:`WORDS`.
    """

    where: Where
    pattern: str
    kind: str | None
    source: str  # who sends it (a link where there is one)
    rx: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in LIMIT_KINDS:
            raise ValueError(f"signal kind: expected one of {LIMIT_KINDS}, got {self.kind!r}")
        if self.kind is None and self.where in ("code", "type", "header_present"):
            raise ValueError(f"signal {self.pattern!r}: a {self.where} signal needs a kind")
        if self.where in ("code", "type", "header", "header_present"):
            # Compared with lower-cased values and header names.
            object.__setattr__(self, "pattern", self.pattern.lower())
        rx = None
        if self.where in ("message", "header_zero"):
            rx = re.compile(self.pattern)
        object.__setattr__(self, "rx", rx)


# What a limit is called in values, message groups and header names.
WORDS: dict[str, str] = {
    "requests": REQUESTS,
    "request": REQUESTS,
    "rpm": REQUESTS,
    "rpd": REQUESTS_PER_DAY,
    "tokens": TOKENS,
    "tpm": TOKENS,
    "tpd": TOKENS,
    "input_tokens": TOKENS,
    "output_tokens": TOKENS,
    "input-tokens": TOKENS,
    "output-tokens": TOKENS,
    "max_parallel_requests": CONCURRENCY,
    "parallel_requests": CONCURRENCY,
    "concurrency": CONCURRENCY,
    "concurrent_requests": CONCURRENCY,
}

SIGNALS: tuple[Signal, ...] = (
    # loadkit's own codes (spec/API.md "Errors"; loadkit/server/limiter.py).
    Signal("code", "concurrency_limit_exceeded", CONCURRENCY, "loadkit"),
    Signal("code", "token_limit_exceeded", TOKENS, "loadkit"),
    Signal("code", "daily_limit_exceeded", REQUESTS_PER_DAY, "loadkit"),
    # A model's request window and concurrency (docs/server.md; never the key's limits).
    Signal("code", "model_rate_limit_exceeded", MODEL_REQUESTS, "loadkit"),
    Signal("code", "model_concurrency_limit_exceeded", MODEL_CONCURRENCY, "loadkit"),
    # OpenAI's daily request limit: type "requests" like its per-minute one; the message
    # ("... on requests per day (RPD): Limit 1000, Used 1000, Requested 1") tells them apart.
    Signal("message", r"on requests per day\b", REQUESTS_PER_DAY, "OpenAI"),
    # OpenAI reuses loadkit's "rate_limit_exceeded" for both its limits and says which in
    # the type and message, so those come before the code. loadkit's server never sends
    # them (its type is "rate_limit_error"). https://platform.openai.com/docs/guides/rate-limits
    Signal("type", "tokens", TOKENS, "OpenAI"),
    Signal("type", "requests", REQUESTS, "OpenAI"),
    Signal("message", r"on (tokens|requests) per (?:min|day)", None, "OpenAI, Groq"),
    Signal("code", "rate_limit_exceeded", REQUESTS, "loadkit; OpenAI RPM"),
    # LiteLLM proxy (parallel_request_limiter_v3): header rate_limit_type and "Limit type: x".
    # https://github.com/BerriAI/litellm/blob/main/litellm/proxy/hooks/parallel_request_limiter_v3.py
    Signal("header", "rate_limit_type", None, "LiteLLM"),
    Signal("message", r"limit type: (requests|tokens|max_parallel_requests)\b", None, "LiteLLM"),
    Signal("message", r"max parallel request limit reached", CONCURRENCY, "LiteLLM < 1.60"),
    # Baidu Qianfan's OpenAI-compatible API (PaddlePaddle/ERNIE#1031).
    Signal("code", "rpm_rate_limit_exceeded", REQUESTS, "Qianfan"),
    Signal("code", "tpm_rate_limit_exceeded", TOKENS, "Qianfan"),
    # Hugging Face TGI: --max-concurrent-requests full -> 429 {"error": "Model is overloaded",
    # "error_type": "overloaded"} (router/src/infer/mod.rs).
    Signal("type", "overloaded", CONCURRENCY, "TGI"),
    Signal("message", r"model is overloaded\b", CONCURRENCY, "TGI"),
    # Azure OpenAI: code "429", the message names the limit.
    # https://learn.microsoft.com/azure/ai-services/openai/quotas-limits
    Signal("message", r"exceeded token rate limit\b", TOKENS, "Azure OpenAI"),
    Signal("message", r"exceeded call rate limit\b", REQUESTS, "Azure OpenAI"),
    # Anthropic: type rate_limit_error, the message names the limit.
    # https://docs.anthropic.com/en/api/rate-limits
    Signal("message", r"(?:request|input|output) tokens\b", TOKENS, "Anthropic"),
    Signal("message", r"number of requests has exceeded\b", REQUESTS, "Anthropic"),
    # Kong: AI Rate Limiting Advanced counts tokens, rate-limiting counts requests.
    # https://developer.konghq.com/plugins/ai-rate-limiting-advanced/
    Signal("message", r"ai token rate limit exceeded\b", TOKENS, "Kong AI"),
    Signal("message", r"^api rate limit exceeded", REQUESTS, "Kong"),
    # Envoy local rate limit: plain-text body "local_rate_limited" (a token bucket of requests).
    # https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/local_rate_limit_filter
    Signal("message", r"^local_rate_limited\b", REQUESTS, "Envoy"),
    # Counters at 0: an inference, weaker than a name. OpenAI, Azure, loadkit:
    Signal("header_zero", r"x-ratelimit-remaining-(requests|tokens)", None, "OpenAI"),
    # Anthropic: https://docs.anthropic.com/en/api/rate-limits#response-headers
    Signal(
        "header_zero",
        r"anthropic-ratelimit-(requests|tokens|input-tokens|output-tokens)-remaining",
        None,
        "Anthropic",
    ),
    # LiteLLM: x-ratelimit-{descriptor}-remaining-{type} (proxy/hooks/_rate_limit_headers.py).
    Signal(
        "header_zero",
        r"x-ratelimit-[a-z_]+-remaining-(requests|tokens|max_parallel_requests)",
        None,
        "LiteLLM",
    ),
    # Kong AI: X-AI-RateLimit-Remaining-<window>-<provider> (tokens); Kong rate-limiting:
    # X-RateLimit-Remaining-<window> (requests).
    Signal("header_zero", r"x-ai-ratelimit-remaining-.+", TOKENS, "Kong AI"),
    Signal(
        "header_zero",
        r"x-ratelimit-remaining-(?:second|minute|hour|day|month|year)",
        REQUESTS,
        "Kong",
    ),
    # IETF RateLimit draft and Envoy's ratelimit filter: a count of requests.
    Signal("header_zero", r"(?:x-)?ratelimit-remaining", REQUESTS, "IETF draft, Envoy, Kong"),
    Signal("header_present", "x-envoy-ratelimited", REQUESTS, "Envoy"),
)


class Refusal(NamedTuple):
    """What a 429 said: the error body's fields (or a plain-text body as ``message``) and
    the headers, names lower case."""

    code: str | None = None
    type: str | None = None
    message: str | None = None
    headers: Mapping[str, str] | None = None


class Attribution(NamedTuple):
    kind: str | None  # one of LIMIT_KINDS; None: unattributed
    signal: str | None  # what decided, e.g. "code=concurrency_limit_exceeded"


UNATTRIBUTED = Attribution(None, None)
_MESSAGE_CHARS = 2000  # providers name the limit in the first sentence
_SIGNAL_CHARS = 120


def attribute(refusal: Refusal, signals: tuple[Signal, ...] = SIGNALS) -> Attribution:
    """The limit that refused, from what the refusal carries, in the order of ``signals``:
    the first *naming* signal (code, type, message, header value) that matches wins; else
    the ``header_zero`` signals decide together (one limit at 0: that one; several:
    unattributed, "ambiguous"); else the first signal listed after them (e.g.
    ``header_present``) that matches."""
    plan = _plan(signals)
    headers = refusal.headers or {}
    message = (refusal.message or "")[:_MESSAGE_CHARS].lower()
    # The earliest naming signal that matches: exact values by lookup, then only the
    # header and message signals listed before it (regular expressions cost the most).
    best_i, best = plan.n_named, UNATTRIBUTED
    for where, value in (("code", refusal.code), ("type", refusal.type)):
        if value is not None:
            i = plan.exact.get((where, value.lower()))
            if i is not None and i < best_i:
                best_i, best = i, Attribution(signals[i].kind, _short(f"{where}={value}"))
    for group in (plan.headers, plan.messages if message else []):
        for i, s in group:
            if i >= best_i:
                break
            found = _match(s, refusal, message, headers)
            if found is not None:
                best_i, best = i, found
                break
    if best.kind is not None:
        return best
    at_zero = [(n, v.strip()) for n, v in headers.items() if _at_most_zero(v)]
    zeros: list[tuple[str, str]] = []  # (kind, signal) of "remaining <= 0" headers
    if at_zero:
        for s in plan.counters:
            zeros += _zero_headers(s, at_zero)
    kinds = {k for k, _ in zeros}
    if len(kinds) == 1:
        return Attribution(zeros[0][0], _short(zeros[0][1]))
    if kinds:
        return Attribution(None, _short("ambiguous: " + ", ".join(sig for _, sig in zeros)))
    for s in plan.fallback:
        found = _match(s, refusal, message, headers)
        if found is not None:
            return found
    return UNATTRIBUTED


@dataclass(frozen=True, slots=True)
class _Plan:
    n_named: int  # signals before the first header_zero one
    exact: dict[tuple[str, str], int]  # ("code"|"type", value) -> its first index
    headers: list[tuple[int, Signal]]  # naming header signals, in order
    messages: list[tuple[int, Signal]]
    counters: list[Signal]  # header_zero
    fallback: list[Signal]  # others after the first header_zero


_PLANS: dict[int, tuple[tuple[Signal, ...], _Plan]] = {}


def _plan(signals: tuple[Signal, ...]) -> _Plan:
    cached = _PLANS.get(id(signals))
    if cached is not None and cached[0] is signals:
        return cached[1]
    first_zero = next((i for i, s in enumerate(signals) if s.where == "header_zero"), None)
    n_named = len(signals) if first_zero is None else first_zero
    exact: dict[tuple[str, str], int] = {}
    headers, messages = [], []
    for i, s in enumerate(signals[:n_named]):
        if s.where in ("code", "type"):
            exact.setdefault((s.where, s.pattern), i)
        elif s.where == "message":
            messages.append((i, s))
        else:
            headers.append((i, s))
    rest = signals[n_named:]
    plan = _Plan(
        n_named,
        exact,
        headers,
        messages,
        [s for s in rest if s.where == "header_zero"],
        [s for s in rest if s.where != "header_zero"],
    )
    if len(_PLANS) > 16:  # callers passing fresh tables each time
        _PLANS.clear()
    _PLANS[id(signals)] = (signals, plan)
    return plan


def _match(s: Signal, r: Refusal, message: str, headers: Mapping[str, str]) -> Attribution | None:
    if s.where == "code" or s.where == "type":
        value = r.code if s.where == "code" else r.type
        if value is not None and value.lower() == s.pattern:
            return Attribution(s.kind, _short(f"{s.where}={value}"))
    elif s.where == "message":
        assert s.rx is not None
        m = s.rx.search(message) if message else None
        if m is not None:
            kind = s.kind or WORDS.get(m.group(m.lastindex or 0))
            if kind is not None:
                return Attribution(kind, _short(f"message: {m.group(0)!r}"))
    elif s.where == "header":
        value = headers.get(s.pattern)
        if value is not None:
            kind = WORDS.get(value.strip().lower())
            if kind is not None:
                return Attribution(kind, _short(f"header {s.pattern}={value.strip()}"))
    elif s.where == "header_present" and s.pattern in headers:
        return Attribution(s.kind, f"header {s.pattern}")
    return None


def _zero_headers(s: Signal, at_zero: list[tuple[str, str]]) -> list[tuple[str, str]]:
    assert s.rx is not None
    out = []
    for name, value in at_zero:
        m = s.rx.fullmatch(name)
        if m is not None:
            kind = s.kind or WORDS.get(m.group(m.lastindex or 0))
            if kind is not None:
                out.append((kind, f"header {name}={value}"))
    return out


def _at_most_zero(value: str) -> bool:
    v = value.strip()
    # Most header values are not numbers: skip them before float() raises for each.
    if not v or len(v) > 32 or v[0] not in "0-":
        return False
    try:
        return float(v) <= 0  # Kong AI reports a spent budget as negative
    except ValueError:
        return False


def _short(text: str) -> str:
    return text if len(text) <= _SIGNAL_CHARS else text[: _SIGNAL_CHARS - 1] + "…"
