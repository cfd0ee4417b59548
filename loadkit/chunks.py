"""Interpretation of OpenAI response payloads: streamed chunks (chat and text completion,
role-only, usage-only, error events, several choices) and non-streaming bodies. Pure.

Hostile payloads are data, never exceptions out of here: JSON nested past the parser's
recursion limit is malformed like any other bad JSON, and every value that reaches a
record is the record's type (strings cut short, integers within int64)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

DONE = "[DONE]"
_DONE_BYTES = b"[DONE]"


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
    error_type: str | None = None
    error_message: str | None = None

    def __repr__(self) -> str:
        return f"Chunk({vars(self)})"


_DONE_CHUNK = Chunk()
_DONE_CHUNK.done = True


def loads(data: str | bytes) -> Any:
    """``json.loads``, the same values, faster: orjson parses what it can (valid UTF-8,
    integers within 64 bits, nesting within its limit) and anything it refuses goes to
    ``json.loads`` (bytes decoded as UTF-8 with invalid sequences replaced, as a decoder
    of text would), which decides. Raises ValueError or RecursionError for garbage."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        if isinstance(data, bytes | bytearray | memoryview):
            data = bytes(data).decode("utf-8", "replace")
        return json.loads(data)


def parse_event_data(data: str | bytes) -> Chunk:
    """Interpret the data of one SSE event (text, or the bytes as received). Raises
    MalformedChunk for garbage."""
    if data in (DONE, _DONE_BYTES):
        return _DONE_CHUNK
    try:
        obj = loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser
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
        out.error_code, out.error_type, out.error_message = _error_fields(err, obj)
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
                out.finish_reason = fr[:_SHORT] if type(fr) is str else _text(fr)
    if role_seen and not out.content:
        out.role_only = True
    return out


@dataclass(slots=True)
class Body:
    """What a non-streaming response body means for measurement."""

    error_code: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    choices: int = 0
    malformed: bool = False


def parse_body(raw: bytes) -> Body:
    """Interpret a complete JSON response body (success or error). Never raises."""
    try:
        obj = _loads_body(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser
        return Body(malformed=True)
    if not isinstance(obj, dict):
        return Body(malformed=True)
    out = Body()
    err = obj.get("error")
    if err is not None:
        out.error_code, out.error_type, out.error_message = _error_fields(err, obj)
        return out
    # Gateways answer errors in their own shape: Kong {"message": …}, FastAPI {"detail": …}.
    # Kept as the message only, for telling which limit refused a 429; no code is invented.
    msg = obj.get("message")
    if msg is None:
        msg = obj.get("detail")
    if isinstance(msg, str):
        out.error_message = msg[:_MESSAGE]
    usage = obj.get("usage")
    if isinstance(usage, dict):
        out.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
        out.completion_tokens = _int_or_none(usage.get("completion_tokens"))
    choices = obj.get("choices")
    if isinstance(choices, list):
        out.choices = len(choices)
        for c in choices:
            if isinstance(c, dict) and c.get("index", 0) == 0:
                out.finish_reason = _text(c.get("finish_reason"))
    return out


def _loads_body(raw: bytes) -> Any:
    # A body is bytes in any encoding json.loads detects (UTF-16 and -32 included): orjson
    # reads the UTF-8 ones, json.loads the rest, exactly as before.
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


_SHORT = 100  # codes, types, finish reasons: no real one is longer
_MESSAGE = 2000  # messages: providers name the limit in the first sentence
_INT64 = 2**63


def _error_fields(err: Any, obj: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(code, type, message) of an error object. The code is ``code``, else ``type``, else
    ``unknown_error`` (what ``error_code`` has always meant); the type is kept apart. A
    string error is a message: TGI sends ``{"error": "…", "error_type": "overloaded"}``."""
    if isinstance(err, dict):
        code = _text(err.get("code")) or _text(err.get("type"))
        msg = err.get("message")
        return (
            code or "unknown_error",
            _text(err.get("type")),
            msg[:_MESSAGE] if isinstance(msg, str) else _text(msg),
        )
    msg = err[:_MESSAGE] if isinstance(err, str) else _text(err)
    return "unknown_error", _text(obj.get("error_type")), msg


def _text(v: Any) -> str | None:
    """A JSON scalar as a short string; objects, arrays, null and "" as None."""
    if isinstance(v, str):
        return v[:_SHORT] or None
    if isinstance(v, bool | float) or (isinstance(v, int) and -_INT64 <= v < _INT64):
        return str(v)
    return None


def _int_or_none(v: Any) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool) and -_INT64 <= v < _INT64:
        return v
    return None
