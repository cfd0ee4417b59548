"""Admission of an authenticated request: every limit of its key decides before any of
them counts it, so a 429 uses nothing (API.md).

The key's request window and concurrency (``limiter``) decide alone for a tier with no
other limit, in the middleware, before the body is read: unchanged. A tier with token,
per-day or per-model limits (``token_limiter``) needs the request's tokens and model: its
chat and completions requests are admitted by their handler once the body is validated
(``admit_asking``), all limits at once, the token limits first. A request of such a tier
that fails before its tokens are known (a bad body, an unknown model) is admitted with
none (``settle``): its error keeps the place API.md gives it, after the limiter.

A model's request window and concurrency refuse with codes of their own
(``model_rate_limit_exceeded``, ``model_concurrency_limit_exceeded``) and every limit kept
per (key, model) names ``param: "model"``: the request limiter's codes stay the key's."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from loadkit.durations import format_duration_ms
from loadkit.server.config import ServerConfig
from loadkit.server.errors import ApiError
from loadkit.server.keys import AccessKey
from loadkit.server.limiter import RATE_LIMITED
from loadkit.server.state import CTX, STATE
from loadkit.server.token_limiter import (
    CONCURRENCY,
    REQUESTS_PER_DAY,
    TOKENS,
    Ask,
    Refusal,
    Rules,
    TokenLimiter,
    rules_of,
)
from loadkit.server.wire import rate_headers

__all__ = ["GATE", "Admission", "Gate", "admit_asking", "release", "settle", "start"]

# Endpoints whose requests carry tokens and a model (admitted by their handler).
ASKING_ENDPOINTS = ("chat", "completions")
_DECISION = {
    TOKENS: "token_limited",
    REQUESTS_PER_DAY: "daily_limited",
    "requests": "rate_limited",
    CONCURRENCY: "concurrency_limited",
}


class Gate:
    """The token, per-day and per-model limits of one server, and each tier's rules."""

    def __init__(self, config: ServerConfig) -> None:
        self.limiter = TokenLimiter(config.limiter.token_mode)
        self.rules = {t.name: rules_of(t) for t in config.tiers}

    def rules_for(self, key: AccessKey) -> Rules:
        return Rules() if key.admin else self.rules.get(key.tier, Rules())


GATE: web.AppKey[Gate] = web.AppKey("loadkit_gate", Gate)


@dataclass
class Admission:
    """One request's way through the limits."""

    key: AccessKey
    rules: Rules
    deferred: bool  # admitted by its handler, once its tokens are known
    decided: bool = False
    admitted: bool = False
    ask: Ask | None = None  # what the admission counted
    charged: dict[str, int] = field(default_factory=dict)


# A typed request key: aiohttp warns (NotAppKeyWarning) on a plain string key.
_ADMISSION = web.RequestKey("loadkit_admission", Admission)


def start(request: web.Request, key: AccessKey, endpoint: str) -> None:
    """The middleware, once ``key`` is authenticated: admit now, or leave it to the
    handler when the tier's limits need the request's tokens."""
    rules = request.app[GATE].rules_for(key)
    a = Admission(key, rules, deferred=bool(rules) and endpoint in ASKING_ENDPOINTS)
    request[_ADMISSION] = a
    if not a.deferred:
        _admit(request, a, None)


def admit_asking(request: web.Request, ask: Ask) -> None:
    """A handler, once the request's tokens and model are known: admit it (or raise the
    429 that refuses it); nothing to do when the middleware admitted it already."""
    a: Admission = request[_ADMISSION]
    if not a.decided:
        _admit(request, a, ask)


def settle(request: web.Request, error: ApiError) -> ApiError:
    """The answer to a request that failed with ``error``: if it failed before its
    admission was decided, the limits decide first (without its tokens), and their 429,
    if any, is the answer."""
    a: Admission | None = request.get(_ADMISSION)
    if a is not None and not a.decided:
        try:
            _admit(request, a, None)
        except ApiError as refusal:
            return refusal
    return error


def release(request: web.Request, now_ns: int) -> None:
    """The middleware's last step: free what an admitted request holds (it ended at
    ``now_ns``; a limiter in late_release mode frees the slot only later)."""
    a: Admission | None = request.get(_ADMISSION)
    if a is not None and a.admitted:
        st = request.app[STATE]
        st.limiter.release(a.key.label, now_ns)
        request.app[GATE].limiter.release(a.key.label, a.rules, a.ask)


def _admit(request: web.Request, a: Admission, ask: Ask | None) -> None:
    st, ctx, gate = request.app[STATE], request[CTX], request.app[GATE]
    rec, c, key = ctx.rec, st.counters, a.key
    a.decided = True
    now = time.perf_counter_ns()
    if ask is not None:
        rec.input_tokens, rec.reserved_tokens = ask.input_tokens, ask.output_tokens
    refusal = gate.limiter.check(key.label, a.rules, ask, now) if a.rules else None
    if refusal is not None:
        rec.decision, rec.limit = _DECISION[refusal.kind], refusal.rule
        c.rejected[refusal.code] += 1
        ctx.headers = _token_headers(gate, a, ask, now)
        if refusal.retry_after_ns is not None:
            ctx.headers.update(_retry_headers(refusal.retry_after_ns))
        # ``param`` names what scoped the limit, as OpenAI's error object names a field:
        # "model" for a limit kept per (key, model), None for the key's own.
        scoped = "model" if refusal.rule.startswith("models.") else None
        raise ApiError(429, refusal.code, _message(refusal, ask), scoped)
    d = st.limiter.acquire(key.label, st.specs[key.label], now)
    ctx.headers = rate_headers(d)
    if not d.admitted:
        assert d.reason is not None
        limited = d.reason == RATE_LIMITED
        rec.decision = "rate_limited" if limited else "concurrency_limited"
        c.rejected[d.reason] += 1
        ctx.headers.update(_token_headers(gate, a, ask, now))
        what = "requests per window" if limited else "concurrent requests"
        raise ApiError(429, d.reason, f"limit of {what} reached for this key")
    if a.rules:
        a.charged = gate.limiter.commit(key.label, a.rules, ask, now)
        rec.charged = a.charged
        ctx.headers.update(_token_headers(gate, a, ask, now))
    a.admitted, a.ask = True, ask
    rec.decision, rec.admitted_ns = "admitted", d.now_ns
    ctx.key = key
    c.admitted += 1


def _token_headers(gate: Gate, a: Admission, ask: Ask | None, now: int) -> dict[str, str]:
    h = gate.limiter.header_state(a.key.label, a.rules, ask, now) if a.rules else None
    if h is None:
        return {}
    return {
        "x-ratelimit-limit-tokens": str(h.limit),
        "x-ratelimit-remaining-tokens": str(h.remaining),
        "x-ratelimit-reset-tokens": format_duration_ms(-(-h.reset_ns // 1_000_000)),
    }


def _retry_headers(wait_ns: int) -> dict[str, str]:
    ms = -(-max(1, wait_ns) // 1_000_000)  # ceil: a client waiting this long is past it
    return {"retry-after-ms": str(ms), "retry-after": str(-(-ms // 1000))}


def _message(r: Refusal, ask: Ask | None) -> str:
    scoped = ask is not None and r.rule.startswith("models.")
    who = f"this key and model {ask.model}" if scoped and ask is not None else "this key"
    if r.kind == CONCURRENCY:
        return f"limit of concurrent requests reached for {who}"
    span = f"{(r.window_ns or 0) / 1e9:g}s"
    what = {
        TOKENS: f"tokens per {span}",
        REQUESTS_PER_DAY: f"requests per day ({span})",
    }.get(r.kind, f"requests per {span}")
    if r.counts is not None:
        what += f" ({r.counts} tokens)"
    if r.too_large:
        return (
            f"Request too large for {who} on {what}: Limit {r.limit}, Requested {r.asked}; "
            "it can never be admitted"
        )
    return (
        f"Rate limit reached for {who} on {what}: "
        f"Limit {r.limit}, Used {r.used}, Requested {r.asked}."
    )
