"""Per-request limits of the reference server: how much work one request may ask for and
how long a client may take to send it. Together with ``[server] max_body_bytes`` and
``max_choices`` they bound the server's work per request, so no parameter choice can
stall other keys' requests. Output limits answer 400 ``invalid_parameters`` naming the
limit; timeouts answer 408 ``request_timeout``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from loadkit.server.errors import invalid


@dataclass(frozen=True)
class RequestLimits:
    """``[limits]``: defaults allow every default model's full context on one choice
    many times over, with room for ``logprobs``, and stay cheap for the server."""

    # generated tokens a request may ask for: n x max_tokens (completions: prompts x
    # best_of x max_tokens)
    max_output_tokens: int = 32_768
    # logprob entries a response may carry: tokens with logprobs x (1 + top-k)
    max_logprob_entries: int = 32_768
    max_json_depth: int = 64  # nesting of arrays and objects in the body
    max_stop_chars: int = 1_000  # characters of one stop sequence
    header_timeout_s: float = 10.0  # a request head must arrive within this, once begun
    body_timeout_s: float = 30.0  # the body must arrive within this, once the head did


_INT_FLOOR = {
    "max_output_tokens": 1,
    "max_logprob_entries": 1,
    "max_json_depth": 4,  # a chat body with content parts is 4 deep
    "max_stop_chars": 1,
}


def limits_from_dict(d: Mapping[str, Any]) -> RequestLimits:
    """The ``[limits]`` table; missing fields keep the defaults."""
    from loadkit.server.config import ConfigError

    if not isinstance(d, Mapping):
        raise ConfigError(f"limits: expected a table, got {d!r}")
    names = {f.name for f in fields(RequestLimits)}
    base = RequestLimits()
    vals: dict[str, Any] = {}
    for k, v in d.items():
        where = f"limits.{k}"
        if k not in names:
            raise ConfigError(f"{where}: unknown field (allowed: {', '.join(sorted(names))})")
        if k in _INT_FLOOR:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{where}: expected an integer, got {v!r}")
            if v < _INT_FLOOR[k]:
                raise ConfigError(f"{where}: must be >= {_INT_FLOOR[k]}, got {v!r}")
        else:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigError(f"{where}: expected a finite number, got {v!r}")
            if v <= 0:
                raise ConfigError(f"{where}: must be > 0, got {v!r}")
            v = float(v)
        vals[k] = v
    return RequestLimits(**{**{f.name: getattr(base, f.name) for f in fields(base)}, **vals})


def check_output(
    limits: RequestLimits,
    sequences: int,
    max_tokens: int,
    top_k: int | None,
    echoed_tokens: int = 0,
    what: str = "n",
) -> None:
    """Refuse a request whose response could exceed the output limits. ``sequences`` is
    every sequence generated (n, or prompts x best_of), ``top_k`` the alternatives per
    token when logprobs are asked for (None: no logprobs), ``echoed_tokens`` prompt tokens
    that also carry logprobs."""
    tokens = sequences * max_tokens
    if tokens > limits.max_output_tokens:
        raise invalid(
            "max_tokens",
            f"{what} x max_tokens = {sequences} x {max_tokens} = {tokens} tokens exceeds "
            f"this server's limit of {limits.max_output_tokens} generated tokens per request "
            "(limits.max_output_tokens)",
        )
    if top_k is not None:
        entries = (tokens + echoed_tokens) * (1 + top_k)
        if entries > limits.max_logprob_entries:
            raise invalid(
                "logprobs",
                f"{tokens + echoed_tokens} tokens x (1 + {top_k} alternatives) = {entries} "
                f"logprob entries exceeds this server's limit of "
                f"{limits.max_logprob_entries} per request (limits.max_logprob_entries)",
            )
