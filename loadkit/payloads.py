"""Request bodies for each kind of request a scenario mixes (chat / completions, streamed
or not, model listing). Pure: prompts are deterministic pseudo-text from a seeded RNG."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

_WORDS = [
    "the",
    "load",
    "test",
    "measures",
    "how",
    "fast",
    "a",
    "model",
    "answers",
    "when",
    "many",
    "users",
    "ask",
    "at",
    "once",
    "and",
    "whether",
    "each",
    "key",
    "stays",
    "within",
    "its",
    "promised",
    "rate",
    "and",
    "concurrency",
    "limits",
    "while",
    "streams",
    "arrive",
    "token",
    "by",
    "token",
    "over",
    "time",
]


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    kind: str  # a scenario mix kind
    endpoint: str  # records.ENDPOINTS
    method: str
    path: str  # relative to the base URL, e.g. "/ai/chat/completions"
    stream: bool
    model: str | None
    body: bytes | None  # JSON, or None for GET


def prompt_text(n_words: int, rng: random.Random) -> str:
    """About ``n_words`` words (one token each for the reference server's tokenizer)."""
    return " ".join(rng.choice(_WORDS) for _ in range(max(1, n_words)))


def prepare(
    kind: str, model: str, prompt_tokens: int, max_tokens: int, rng: random.Random
) -> PreparedRequest:
    if kind == "models":
        return PreparedRequest(kind, "models", "GET", "/ai/models", False, None, None)
    stream = kind.endswith("_stream")
    text = prompt_text(prompt_tokens, rng)
    body: dict[str, object] = {"model": model, "max_tokens": max_tokens, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if kind.startswith("chat"):
        body["messages"] = [{"role": "user", "content": text}]
        path, endpoint = "/ai/chat/completions", "chat"
    elif kind.startswith("completions"):
        body["prompt"] = text
        path, endpoint = "/ai/completions", "completions"
    else:
        raise ValueError(f"unknown request kind {kind!r}")
    return PreparedRequest(
        kind,
        endpoint,
        "POST",
        path,
        stream,
        model,
        json.dumps(body, separators=(",", ":")).encode(),
    )


class MixPicker:
    """Picks request kinds by weight with a seeded RNG."""

    __slots__ = ("_kinds", "_cum", "_total")

    def __init__(self, mix: tuple[tuple[str, float], ...]) -> None:
        self._kinds = [k for k, _ in mix]
        total = 0.0
        self._cum = []
        for _, w in mix:
            total += w
            self._cum.append(total)
        self._total = total

    def pick(self, rng: random.Random) -> str:
        if len(self._kinds) == 1:
            return self._kinds[0]
        x = rng.random() * self._total
        for kind, c in zip(self._kinds, self._cum, strict=True):
            if x < c:
                return kind
        return self._kinds[-1]
