"""Request validation, pure: a JSON body in, a typed request out, or an ``ApiError``
(400 ``invalid_parameters`` naming the field). Ranges are those of API.md; unknown
fields are ignored and an explicit ``null`` means "not given", as OpenAI does.

Work is bounded by the body's size and the caller's caps, never by what the body asks
for: nesting is measured at C speed before anything walks it, prompts are counted only
up to ``prompt_cap`` tokens, and long arrays are checked with C-level passes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadkit.server.errors import ApiError, context_length_exceeded, invalid
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
    prompt_capped: bool = False  # counting stopped at the cap: prompt_tokens is a floor


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
    prompt_capped: bool = False  # a prompt's count stopped at the cap: tokens is a floor

    @property
    def prompt_tokens(self) -> int:
        return sum(p.tokens for p in self.prompts)


def parse_json_body(raw: bytes, max_depth: int = 64) -> dict[str, Any]:
    """A JSON object from UTF-8 bytes (RFC 8259), nested at most ``max_depth`` deep."""
    if not raw.strip():
        raise invalid(None, "the request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        msg = f"the request body is not UTF-8: {e.reason} at byte {e.start}"
        raise invalid(None, msg) from None
    try:
        body = json.loads(text.removeprefix("\ufeff"))
    except RecursionError:
        raise _too_deep(None, max_depth) from None
    except ValueError as e:
        raise invalid(None, f"the request body is not valid JSON: {e}") from None
    if raw.count(b"[") + raw.count(b"{") > max_depth:
        depth = json_depth(raw)
        if depth > max_depth:
            raise _too_deep(depth, max_depth)
    if not isinstance(body, dict):
        raise invalid(None, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _too_deep(depth: int | None, limit: int) -> ApiError:
    got = f"{depth} levels" if depth is not None else "too deep to parse"
    return invalid(
        None,
        f"the request body nests arrays and objects {got}; this server's limit is {limit} "
        "(limits.max_json_depth)",
    )


_BRACKET_STEP = np.zeros(256, dtype=np.int64)
_BRACKET_STEP[[ord("["), ord("{")]] = 1
_BRACKET_STEP[[ord("]"), ord("}")]] = -1
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a valid JSON text, in C-speed passes
    (a Python loop over a megabyte of brackets would stall the server)."""
    # Backslashes occur only inside strings. Dropping escaped backslashes, then escaped
    # quotes, leaves exactly the quotes that delimit strings: every other piece of a split
    # on them lies outside a string.
    s = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(s.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    steps = _BRACKET_STEP[np.frombuffer(brackets, dtype=np.uint8)]
    return int(steps.cumsum().max())


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


def _stop(body: dict[str, Any], max_chars: int) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    if isinstance(v, list) and len(v) > 4:
        raise invalid("stop", f"'stop' holds at most 4 sequences, got {len(v)}")
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise invalid("stop", "'stop' must be a string or an array of at most 4 strings")
    longest = max((len(s) for s in v), default=0)
    if longest > max_chars:
        raise invalid(
            "stop",
            f"a stop sequence of {longest} characters exceeds this server's limit of "
            f"{max_chars} (limits.max_stop_chars)",
        )
    return tuple(v)


MAX_LOGIT_BIAS = 1024  # entries; OpenAI documents no bound, a real tokenizer has ~100k ids


def _logit_bias(body: dict[str, Any]) -> dict[str, float]:
    v = body.get("logit_bias")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise invalid("logit_bias", "'logit_bias' must be an object of token id -> bias")
    if len(v) > MAX_LOGIT_BIAS:
        raise invalid(
            "logit_bias", f"'logit_bias' holds at most {MAX_LOGIT_BIAS} entries, got {len(v)}"
        )
    for k, b in v.items():
        if not (k.isascii() and k.isdigit()):
            raise invalid("logit_bias", f"'logit_bias' keys must be token ids, got {k!r:.40}")
        if isinstance(b, bool) or not isinstance(b, int | float) or not -100 <= b <= 100:
            raise invalid("logit_bias", f"'logit_bias' values must be in -100..100, got {b!r:.40}")
    return {k: float(b) for k, b in v.items()}


def _sampling(body: dict[str, Any], max_choices: int, max_stop_chars: int) -> Sampling:
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
        stop=_stop(body, max_stop_chars),
        presence_penalty=_num(body, "presence_penalty", -2.0, 2.0, 0.0),
        frequency_penalty=_num(body, "frequency_penalty", -2.0, 2.0, 0.0),
        logit_bias=_logit_bias(body),
        user=_str(body, "user"),
        include_usage=include_usage,
        seed=seed,
    )


def _content_tokens(content: Any, where: str, cap: int | None) -> int:
    """Tokens of one message's content, counted up to ``cap`` (+1 beyond it); a content
    part counts at least one toward the cap, so an array of empty parts is bounded too."""
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content, cap)
    if isinstance(content, list):
        total = 0
        for j, part in enumerate(content):
            if cap is not None and max(total, j) > cap:
                return cap + 1
            p = f"{where}[{j}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise invalid(p, f"'{p}' must be an object with a string 'type'")
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise invalid(f"{p}.text", f"'{p}.text' must be a string")
                total += count_tokens(text, None if cap is None else cap - total)
            else:
                total += 85  # a non-text part (image, audio): a flat cost, as OpenAI's low detail
        return total
    raise invalid(where, f"'{where}' must be a string, an array of parts or null")


def validate_chat(
    body: dict[str, Any],
    max_choices: int = 128,
    prompt_cap: int | None = None,
    max_stop_chars: int = 1_000,
) -> ChatRequest:
    """``prompt_cap``: count the prompt only up to this many tokens (the largest context
    of the server's models); beyond it the rest of ``messages`` is not read and the
    request is marked ``prompt_capped`` (it cannot fit any model)."""
    msgs = body.get("messages")
    if msgs is None:
        raise invalid("messages", "'messages' is required")
    if not isinstance(msgs, list) or not msgs:
        raise invalid("messages", "'messages' must be a non-empty array of {role, content}")
    prompt_tokens = 3  # the reply's priming, as OpenAI counts
    capped = False
    for i, m in enumerate(msgs):
        if prompt_cap is not None and prompt_tokens > prompt_cap:
            capped = True
            break
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
        room = None if prompt_cap is None else prompt_cap - prompt_tokens
        prompt_tokens += 3 + _content_tokens(m.get("content"), f"{where}.content", room)
        name = m.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise invalid(f"{where}.name", f"'{where}.name' must be a string")
            prompt_tokens += 1
    capped = capped or (prompt_cap is not None and prompt_tokens > prompt_cap)
    sampling = _sampling(body, max_choices, max_stop_chars)
    logprobs = _bool(body, "logprobs")
    top = _int(body, "top_logprobs", 0, 20)
    if top is not None and not logprobs:
        raise invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    return ChatRequest(sampling, tuple(msgs), prompt_tokens, logprobs, top or 0, capped)


_PROMPT_FORMS = "'prompt' must be a string, an array of strings, of token ids or of arrays of ids"


def _prompt_list(v: Any) -> list[Any]:
    """The prompt as a list of single prompts (strings or id lists), shape-checked with
    C-level passes: a prompt array may be a megabyte long."""
    if v is None:
        raise invalid("prompt", "'prompt' is required")
    if isinstance(v, str):
        return [v]
    if not isinstance(v, list) or not v:
        raise invalid("prompt", _PROMPT_FORMS)
    types = set(map(type, v))
    if types == {str}:
        return v
    if types == {int}:
        return [v]
    if types == {list}:
        return v
    raise invalid("prompt", _PROMPT_FORMS)


def _ids_ok(ids: list[Any]) -> bool:
    return bool(ids) and set(map(type, ids)) == {int} and min(ids) >= 0 and max(ids) < 2**31


def _prompts(v: list[Any], cap: int | None) -> tuple[tuple[Prompt, ...], bool]:
    out = []
    capped = False
    for p in v:
        if isinstance(p, str):
            n = count_tokens(p, cap)
            text = p
        else:
            if not _ids_ok(p):
                raise invalid("prompt", _PROMPT_FORMS)
            n = len(p)
            # Ids beyond the cap are not decoded: such a prompt fits no model.
            text = decode_ids(p) if cap is None or n <= cap else ""
        capped = capped or (cap is not None and n > cap)
        out.append(Prompt(text, n))
    return tuple(out), capped


def validate_completion(
    body: dict[str, Any],
    max_choices: int = 128,
    prompt_cap: int | None = None,
    max_stop_chars: int = 1_000,
) -> CompletionRequest:
    """``prompt_cap`` as for ``validate_chat``, per prompt."""
    raw_prompts = _prompt_list(body.get("prompt"))
    sampling = _sampling(body, max_choices, max_stop_chars)
    best_of = _int(body, "best_of", 1, max_choices)
    if best_of is None:
        best_of = sampling.n
    elif best_of < sampling.n:
        raise invalid("best_of", f"'best_of' must be >= n ({sampling.n}), got {best_of}")
    if sampling.stream and best_of > sampling.n:
        raise invalid("best_of", "'best_of' > n cannot be streamed")
    if len(raw_prompts) * best_of > max_choices:
        raise invalid(
            "n", f"{len(raw_prompts)} prompts x {best_of} candidates exceed {max_choices} choices"
        )
    prompts, capped = _prompts(raw_prompts, prompt_cap)
    return CompletionRequest(
        sampling=sampling,
        prompts=prompts,
        suffix=_str(body, "suffix"),
        logprobs=_int(body, "logprobs", 0, 5),
        echo=_bool(body, "echo"),
        best_of=best_of,
        prompt_capped=capped,
    )


def effective_max_tokens(
    requested: int | None,
    default: int,
    prompt_tokens: int,
    context_length: int,
    param: str,
    prompt_capped: bool = False,
) -> int:
    """``max_tokens`` to generate, or ``context_length_exceeded``. Without an explicit
    value the default is clipped to what the context leaves (at least 1). A capped prompt
    count is a floor already beyond every context."""
    if prompt_capped:
        raise context_length_exceeded(param, prompt_tokens, requested or 1, context_length, True)
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
    "json_depth",
    "parse_json_body",
    "validate_chat",
    "validate_completion",
]
