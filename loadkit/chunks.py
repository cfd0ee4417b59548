"""Interpretation of OpenAI response payloads: streamed chunks (chat and text completion,
role-only, usage-only, error events, several choices) and non-streaming bodies. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DONE = "[DONE]"


class MalformedChunk(ValueError):
    """An event whose data is neither ``[DONE]`` nor a JSON object."""


class Chunk:
    """What one streamed event means for measurement. Fields default at class level and
    only those that differ are set: this runs for every event of every stream."""

    done = False  # the [DONE] sentinel
    content = False  # some choice carries non-empty generated text
    content_choice0 = False  # choice index 0 carries non-empty text
    content_choices = 0  # how many choices in this chunk carry text
    role_only = False  # a chat chunk with only delta.role
    finish_reason: str | None = None  # of choice 0, when present
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_code: str | None = None  # an error event mid-stream
    error_message: str | None = None

    def __repr__(self) -> str:
        return f"Chunk({vars(self)})"


_DONE_CHUNK = Chunk()
_DONE_CHUNK.done = True


def parse_event_data(data: str) -> Chunk:
    """Interpret the data of one SSE event. Raises MalformedChunk for garbage."""
    if data == DONE:
        return _DONE_CHUNK
    try:
        obj = json.loads(data)
    except ValueError:
        raise MalformedChunk(f"event data is not JSON: {data[:80]!r}") from None
    if not isinstance(obj, dict):
        raise MalformedChunk(f"event data is not a JSON object: {data[:80]!r}")
    try:
        return interpret_chunk(obj)
    except (AttributeError, TypeError):
        raise MalformedChunk(f"event is not an OpenAI chunk: {data[:80]!r}") from None


def interpret_chunk(obj: dict[str, Any]) -> Chunk:
    """Raises AttributeError/TypeError on shapes no OpenAI server sends (on the hot path,
    one try beats an isinstance per field)."""
    out = Chunk()
    err = obj.get("error")
    if err is not None:
        out.error_code, out.error_message = _error_fields(err)
        return out
    usage = obj.get("usage")
    if usage:
        out.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
        out.completion_tokens = _int_or_none(usage.get("completion_tokens"))
    choices = obj.get("choices")
    if not choices:
        return out
    role_seen = False
    for choice in choices:
        delta = choice.get("delta")
        if delta is not None:  # chat.completion.chunk
            text = delta.get("content")
            if not text:
                if delta.get("role") is not None:
                    role_seen = True
                # Tool calls and reasoning are generated output too.
                text = delta.get("reasoning_content") or delta.get("tool_calls")
        else:  # text_completion chunk
            text = choice.get("text")
        index = choice.get("index", 0)
        if text:
            out.content = True
            out.content_choices = out.content_choices + 1
            if index == 0:
                out.content_choice0 = True
        if index == 0:
            fr = choice.get("finish_reason")
            if fr is not None:
                out.finish_reason = fr
    if role_seen and not out.content:
        out.role_only = True
    return out


@dataclass(slots=True)
class Body:
    """What a non-streaming response body means for measurement."""

    error_code: str | None = None
    error_message: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    choices: int = 0
    malformed: bool = False


def parse_body(raw: bytes) -> Body:
    """Interpret a complete JSON response body (success or error)."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return Body(malformed=True)
    if not isinstance(obj, dict):
        return Body(malformed=True)
    out = Body()
    err = obj.get("error")
    if err is not None:
        out.error_code, out.error_message = _error_fields(err)
        return out
    usage = obj.get("usage")
    if isinstance(usage, dict):
        out.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
        out.completion_tokens = _int_or_none(usage.get("completion_tokens"))
    choices = obj.get("choices")
    if isinstance(choices, list):
        out.choices = len(choices)
        for c in choices:
            if isinstance(c, dict) and c.get("index", 0) == 0:
                out.finish_reason = c.get("finish_reason")
    return out


def _error_fields(err: Any) -> tuple[str | None, str | None]:
    if isinstance(err, dict):
        code = err.get("code") or err.get("type")
        msg = err.get("message")
        return (
            str(code) if code is not None else "unknown_error",
            str(msg) if msg is not None else None,
        )
    return "unknown_error", str(err)


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
