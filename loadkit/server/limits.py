"""Per-request limits of the reference server: how much work one request may ask for and
how long a client may take to send it. Together with ``[server] max_body_bytes`` and
``max_choices`` they bound the server's work per request, so no parameter choice can
stall other keys' requests. Output limits answer 400 ``invalid_parameters`` naming the
limit; timeouts answer 408 ``request_timeout``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from annotated_types import Ge

from loadkit.schema import Count, Int, Positive
from loadkit.server.errors import invalid


@dataclass(frozen=True)
class RequestLimits:
    """``[limits]``: defaults allow every default model's full context on one choice
    many times over, with room for ``logprobs``, and stay cheap for the server."""

    max_output_tokens: Count = 32_768
    """Generated tokens a request may ask for: n x max_tokens (completions: prompts x
    best_of x max_tokens)."""
    max_logprob_entries: Count = 32_768
    """Logprob entries a response may carry: tokens with logprobs x (1 + top-k)."""
    max_json_depth: Annotated[Int, Ge(4)] = 64
    """Nesting of arrays and objects in the body (a chat body with content parts is 4)."""
    max_stop_chars: Count = 1_000
    """Characters of one stop sequence."""
    header_timeout_s: Positive = 10.0
    """A request head must arrive within this, once begun."""
    body_timeout_s: Positive = 30.0
    """The body must arrive within this, once the head did."""


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
