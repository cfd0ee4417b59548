"""Request bodies for each kind of request a scenario mixes (chat / completions, streamed
or not, model listing). Pure: prompts are deterministic pseudo-text from a seeded RNG."""

from __future__ import annotations

import functools
import json
import random
from typing import NamedTuple

from loadkit.api import SEED, ApiLayout

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


class PreparedRequest(NamedTuple):
    """One request, ready to send (a named tuple: made once per request, cheaply)."""

    kind: str  # a scenario mix kind
    endpoint: str  # records.ENDPOINTS
    method: str
    path: str  # relative to the base URL, e.g. "/ai/chat/completions" (from an ApiLayout)
    stream: bool
    model: str | None
    body: bytes | None  # JSON, or None for GET
    # What the request asks of a token limit, as the client counts it (recorded as
    # sent_prompt_tokens / sent_max_tokens): the prompt's tokens and the output reserved.
    prompt_tokens: int | None = None
    max_tokens: int | None = None


# A fixed pseudo-random text; each prompt is a window of it at a random offset, so prompts
# differ (a server's prefix cache cannot flatter TTFT) at the cost of one slice per request.
_TEXT = random.Random(20261125).choices(_WORDS, k=8192)


# OpenAI's rule for chat prompts (and the reference server's): 3 tokens prime the reply,
# each message costs 3 besides its content.
CHAT_PRIMING_TOKENS = 3
CHAT_MESSAGE_TOKENS = 3


def counted_prompt_tokens(endpoint: str, n_words: int) -> int:
    """The prompt tokens of a request whose prompt is ``prompt_text(n_words)``, as the
    client counts them: one token a word, plus the chat framing. Exact for the reference
    server's tokenizer; for another service an estimate that its ``usage`` corrects (the
    analysis calibrates the two against each other, ``loadkit.analysis.token_columns``)."""
    words = max(1, n_words)
    if endpoint == "chat":
        return words + CHAT_PRIMING_TOKENS + CHAT_MESSAGE_TOKENS
    return words


def prompt_text(n_words: int, rng: random.Random) -> str:
    """About ``n_words`` words (one token each for the reference server's tokenizer)."""
    n = max(1, n_words)
    if n > len(_TEXT):
        return " ".join(rng.choices(_WORDS, k=n))
    start = rng.randrange(len(_TEXT) - n + 1)
    return " ".join(_TEXT[start : start + n])


# The same text as JSON-ready bytes: word i starts at _OFFSETS[i], so a window of words is
# one slice. The words need no JSON escaping, so the window quoted is ``json.dumps`` of it.
assert all(w.isascii() and w.isalpha() for w in _WORDS)
_TEXT_BYTES = " ".join(_TEXT).encode()
_OFFSETS = [0]
for _w in _TEXT:
    _OFFSETS.append(_OFFSETS[-1] + len(_w) + 1)


def _prompt_json(n_words: int, rng: random.Random) -> bytes:
    """``json.dumps(prompt_text(n_words, rng)).encode()``, drawing the same from ``rng``,
    without joining and encoding the words again."""
    n = max(1, n_words)
    if n > len(_TEXT):
        return json.dumps(" ".join(rng.choices(_WORDS, k=n))).encode()
    start = rng.randrange(len(_TEXT) - n + 1)
    return b'"' + _TEXT_BYTES[_OFFSETS[start] : _OFFSETS[start + n] - 1] + b'"'


_PROMPT_FIELDS = {
    "chat": ('"messages":[{"role":"user","content":', "}]"),
    "completions": ('"prompt":', ""),
}


@functools.lru_cache(maxsize=4096)
def _template(
    kind: str, model: str, max_tokens: int, layout: ApiLayout
) -> tuple[str, str, bool, bytes, bytes]:
    """Everything of a request but its prompt, JSON-encoded once: the body is the head, the
    prompt as JSON, the tail."""
    stream = kind.endswith("_stream")
    endpoint = kind.removesuffix("_stream")
    if endpoint not in _PROMPT_FIELDS:
        raise ValueError(f"unknown request kind {kind!r}")
    path, (before, after) = layout.path(endpoint), _PROMPT_FIELDS[endpoint]
    head = {"model": model, "max_tokens": max_tokens, "stream": stream}
    if stream:
        head["stream_options"] = {"include_usage": True}
    encoded = json.dumps(head, separators=(",", ":"))
    return path, endpoint, stream, (encoded[:-1] + "," + before).encode(), (after + "}").encode()


def prepare(
    kind: str,
    model: str,
    prompt_tokens: int,
    max_tokens: int,
    rng: random.Random,
    layout: ApiLayout = SEED,
) -> PreparedRequest:
    """One request of ``kind`` (a scenario mix kind) with its path in ``layout``."""
    if kind == "models":
        return PreparedRequest(kind, "models", "GET", layout.models, False, None, None)
    path, endpoint, stream, head, tail = _template(kind, model, max_tokens, layout)
    return PreparedRequest(
        kind,
        endpoint,
        "POST",
        path,
        stream,
        model,
        head + _prompt_json(prompt_tokens, rng) + tail,
        counted_prompt_tokens(endpoint, prompt_tokens),
        max_tokens,
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
