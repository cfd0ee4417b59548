"""Request validation, pure: a JSON body in, a typed request out, or an ``ApiError``
(400 ``invalid_parameters`` naming the field). Ranges are those of API.md; unknown
fields are ignored and an explicit ``null`` means "not given", as OpenAI does."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from loadkit.server.errors import ApiError, invalid
from loadkit.server.tokenizer import count_tokens, decode_ids

CHAT_ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass(frozen=True)
class Sampling:
    """Parameters common to chat and completions."""

    model: str
    stream: bool = False
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] = field(default_factory=dict)
    user: str | None = None
    include_usage: bool = False
    seed: int | None = None


@dataclass(frozen=True)
class ChatRequest:
    sampling: Sampling
    messages: tuple[dict[str, Any], ...]
    prompt_tokens: int
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class Prompt:
    text: str
    tokens: int


@dataclass(frozen=True)
class CompletionRequest:
    sampling: Sampling
    prompts: tuple[Prompt, ...]
    suffix: str | None = None
    logprobs: int | None = None
    echo: bool = False
    best_of: int = 1

    @property
    def prompt_tokens(self) -> int:
        return sum(p.tokens for p in self.prompts)


def parse_json_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise invalid(None, "the request body is empty; expected a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise invalid(None, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise invalid(None, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _typename(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _int(body: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise invalid(name, f"'{name}' must be an integer, got {_typename(v)} {v!r:.40}")
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise invalid(name, f"'{name}' must be {rng}, got {v}")
    return v


def _num(body: dict[str, Any], name: str, lo: float, hi: float, default: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise invalid(name, f"'{name}' must be a number, got {_typename(v)} {v!r:.40}")
    if not lo <= v <= hi:
        raise invalid(name, f"'{name}' must be between {lo:g} and {hi:g}, got {v}")
    return float(v)


def _bool(body: dict[str, Any], name: str, param: str | None = None) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        p = param or name
        raise invalid(p, f"'{p}' must be a boolean, got {_typename(v)} {v!r:.40}")
    return v


def _str(body: dict[str, Any], name: str) -> str | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise invalid(name, f"'{name}' must be a string, got {_typename(v)} {v!r:.40}")
    return v


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        if len(v) > 4:
            raise invalid("stop", f"'stop' holds at most 4 sequences, got {len(v)}")
        return tuple(v)
    raise invalid("stop", "'stop' must be a string or an array of at most 4 strings")


def _logit_bias(body: dict[str, Any]) -> dict[str, float]:
    v = body.get("logit_bias")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise invalid("logit_bias", "'logit_bias' must be an object of token id -> bias")
    for k, b in v.items():
        if not (k.isascii() and k.isdigit()):
            raise invalid("logit_bias", f"'logit_bias' keys must be token ids, got {k!r:.40}")
        if isinstance(b, bool) or not isinstance(b, int | float) or not -100 <= b <= 100:
            raise invalid("logit_bias", f"'logit_bias' values must be in -100..100, got {b!r:.40}")
    return {k: float(b) for k, b in v.items()}


def _sampling(body: dict[str, Any], max_choices: int) -> Sampling:
    model = body.get("model")
    if model is None:
        raise invalid("model", "'model' is required")
    if not isinstance(model, str) or not model:
        raise invalid("model", f"'model' must be a non-empty string, got {model!r:.40}")
    max_tokens = _int(body, "max_tokens", 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_completion_tokens", 1)
    so = body.get("stream_options")
    include_usage = False
    if so is not None:
        if not isinstance(so, dict):
            raise invalid("stream_options", "'stream_options' must be an object")
        include_usage = _bool(so, "include_usage", "stream_options.include_usage")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise invalid("seed", f"'seed' must be an integer, got {seed!r:.40}")
    return Sampling(
        model=model,
        stream=_bool(body, "stream"),
        max_tokens=max_tokens,
        temperature=_num(body, "temperature", 0.0, 2.0, 1.0),
        top_p=_num(body, "top_p", 0.0, 1.0, 1.0),
        n=_int(body, "n", 1, max_choices) or 1,
        stop=_stop(body),
        presence_penalty=_num(body, "presence_penalty", -2.0, 2.0, 0.0),
        frequency_penalty=_num(body, "frequency_penalty", -2.0, 2.0, 0.0),
        logit_bias=_logit_bias(body),
        user=_str(body, "user"),
        include_usage=include_usage,
        seed=seed,
    )


def _content_tokens(content: Any, where: str) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content)
    if isinstance(content, list):
        total = 0
        for j, part in enumerate(content):
            p = f"{where}[{j}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise invalid(p, f"'{p}' must be an object with a string 'type'")
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise invalid(f"{p}.text", f"'{p}.text' must be a string")
                total += count_tokens(text)
            else:
                total += 85  # a non-text part (image, audio): a flat cost, as OpenAI's low detail
        return total
    raise invalid(where, f"'{where}' must be a string, an array of parts or null")


def validate_chat(body: dict[str, Any], max_choices: int = 128) -> ChatRequest:
    msgs = body.get("messages")
    if msgs is None:
        raise invalid("messages", "'messages' is required")
    if not isinstance(msgs, list) or not msgs:
        raise invalid("messages", "'messages' must be a non-empty array of {role, content}")
    prompt_tokens = 3  # the reply's priming, as OpenAI counts
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid(where, f"'{where}' must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise invalid(
                f"{where}.role",
                f"'{where}.role' must be one of {list(CHAT_ROLES)}, got {role!r:.40}",
            )
        if "content" not in m and not m.get("tool_calls"):
            raise invalid(f"{where}.content", f"'{where}.content' is required")
        prompt_tokens += 3 + _content_tokens(m.get("content"), f"{where}.content")
        name = m.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise invalid(f"{where}.name", f"'{where}.name' must be a string")
            prompt_tokens += 1
    sampling = _sampling(body, max_choices)
    logprobs = _bool(body, "logprobs")
    top = _int(body, "top_logprobs", 0, 20)
    if top is not None and not logprobs:
        raise invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    return ChatRequest(sampling, tuple(msgs), prompt_tokens, logprobs, top or 0)


def _prompts(v: Any) -> tuple[Prompt, ...]:
    if v is None:
        raise invalid("prompt", "'prompt' is required")
    if isinstance(v, str):
        return (Prompt(v, count_tokens(v)),)
    if not isinstance(v, list) or not v:
        raise invalid(
            "prompt",
            "'prompt' must be a string, an array of strings, of token ids or of arrays of ids",
        )
    if all(isinstance(s, str) for s in v):
        return tuple(Prompt(s, count_tokens(s)) for s in v)
    if all(_is_token_ids(x) for x in v):
        return (Prompt(decode_ids(v), len(v)),)
    if all(isinstance(x, list) and x and all(_is_token_ids(i) for i in x) for x in v):
        return tuple(Prompt(decode_ids(x), len(x)) for x in v)
    raise invalid(
        "prompt", "'prompt' must be a string, an array of strings, of token ids or of arrays of ids"
    )


def _is_token_ids(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31


def validate_completion(body: dict[str, Any], max_choices: int = 128) -> CompletionRequest:
    prompts = _prompts(body.get("prompt"))
    sampling = _sampling(body, max_choices)
    best_of = _int(body, "best_of", 1, max_choices)
    if best_of is None:
        best_of = sampling.n
    elif best_of < sampling.n:
        raise invalid("best_of", f"'best_of' must be >= n ({sampling.n}), got {best_of}")
    if sampling.stream and best_of > sampling.n:
        raise invalid("best_of", "'best_of' > n cannot be streamed")
    if len(prompts) * best_of > max_choices:
        raise invalid(
            "n", f"{len(prompts)} prompts x {best_of} candidates exceed {max_choices} choices"
        )
    return CompletionRequest(
        sampling=sampling,
        prompts=prompts,
        suffix=_str(body, "suffix"),
        logprobs=_int(body, "logprobs", 0, 5),
        echo=_bool(body, "echo"),
        best_of=best_of,
    )


def effective_max_tokens(
    requested: int | None, default: int, prompt_tokens: int, context_length: int, param: str
) -> int:
    """``max_tokens`` to generate, or ``context_length_exceeded``. Without an explicit
    value the default is clipped to what the context leaves (at least 1)."""
    from loadkit.server.errors import context_length_exceeded

    if requested is None:
        room = context_length - prompt_tokens
        if room < 1:
            raise context_length_exceeded(param, prompt_tokens, 1, context_length)
        return min(default, room)
    if prompt_tokens + requested > context_length:
        raise context_length_exceeded(param, prompt_tokens, requested, context_length)
    return requested


__all__ = [
    "ApiError",
    "ChatRequest",
    "CompletionRequest",
    "Prompt",
    "Sampling",
    "effective_max_tokens",
    "parse_json_body",
    "validate_chat",
    "validate_completion",
]
