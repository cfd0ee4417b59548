"""Deterministic pseudo-text: the same request gives the same tokens, drawn one at a time
(``ChoiceStream``), so a stream and a non-stream of the same request report the same
text and usage, and a stream never draws more than it sends."""

from __future__ import annotations

import hashlib
import json
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from loadkit.server.tokenizer import PUNCT, WORDS, tokenize


@dataclass(frozen=True)
class GeneratedChoice:
    tokens: tuple[str, ...]  # as sent (the last one may be cut short by a stop sequence)
    logprobs: tuple[float, ...]
    finish_reason: str  # "stop" | "length"
    seed: int

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def score(self) -> float:
        return sum(self.logprobs)


def request_seed(*parts: Any) -> int:
    """A stable 64-bit seed from JSON-able parts (the request's content)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


# ``rng.uniform(0.005, 3.0)`` as uniform computes it (a + (b - a) * random()), without
# the call: the same draw and value, once per token.
_LP_LOW, _LP_SPAN = 0.005, 3.0 - 0.005


def _next_token(rng: random.Random, sentence_start: bool, space: bool = True) -> str:
    r = rng.random()
    if not sentence_start and r < 0.06:
        return "."
    if not sentence_start and r < 0.13:
        return ","
    w = WORDS[rng.randrange(len(WORDS))]
    return (" " if space else "") + (w.capitalize() if sentence_start else w)


class ChoiceStream:
    """One choice's tokens, drawn on demand: up to ``max_tokens`` from ``seed``; a stop
    sequence ends the text just before it (finish_reason "stop"), else "length". Chat
    replies start without a space, completions continue the prompt with one.

    With stop sequences a token is released only once no stop can still cut it, which
    holds back at most the longest stop's length in characters; so each step costs O(1)
    tokens and O(longest stop) characters, whatever ``max_tokens`` is."""

    def __init__(
        self, seed: int, max_tokens: int, stop: tuple[str, ...] = (), leading_space: bool = True
    ) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        self._left = max_tokens
        self._stops = tuple(s for s in stop if s)
        self._longest = max((len(s) for s in self._stops), default=0)
        self._space = leading_space
        self._sentence_start = True
        self._drawn = 0
        self._text_len = 0  # characters drawn so far (kept with stop sequences only)
        self._tail = ""  # the last (longest - 1) characters: where a stop may begin
        self._held: deque[tuple[str, float, int]] = deque()  # (token, logprob, end)
        self._ready: deque[tuple[str, float]] = deque()
        # set once the last token is drawn
        self.finish_reason: str | None = None if max_tokens > 0 else "length"

    def _draw(self) -> None:
        tok = _next_token(self._rng, self._sentence_start, self._space or self._drawn > 0)
        self._sentence_start = tok == "."
        lp = -round(_LP_LOW + _LP_SPAN * self._rng.random(), 4)  # uniform(0.005, 3.0)
        self._drawn += 1
        self._left -= 1
        if not self._stops:  # nothing can cut a token: it is ready at once
            self._ready.append((tok, lp))
            if self._left <= 0:
                self.finish_reason = "length"
            return
        before = self._text_len
        self._text_len += len(tok)
        window = self._tail + tok  # the text from max(0, before - longest + 1)
        start = before - len(self._tail)
        hits = [i for i in (window.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._finish_at(start + min(hits), tok, lp, before)
            return
        self._tail = window[-(self._longest - 1) :] if self._longest > 1 else ""
        self._held.append((tok, lp, self._text_len))
        # A stop found later begins at or after (text length - longest + 1): tokens ending
        # by then can no longer be cut.
        safe = self._text_len - self._longest + 1
        while self._held and self._held[0][2] <= safe:
            t, p, _ = self._held.popleft()
            self._ready.append((t, p))
        if self._left <= 0:
            self._ready.extend((t, p) for t, p, _ in self._held)
            self._held.clear()
            self.finish_reason = "length"

    def _finish_at(self, cut: int, tok: str, lp: float, before: int) -> None:
        self._held.append((tok, lp, before + len(tok)))
        for t, p, end in self._held:
            begin = end - len(t)
            if end <= cut:
                self._ready.append((t, p))
            elif cut > begin:
                self._ready.append((t[: cut - begin], p))
        self._held.clear()
        self.finish_reason = "stop"

    def available(self, k: int) -> int:
        """Draw until ``k`` tokens are ready or the choice is finished; how many are."""
        while len(self._ready) < k and self.finish_reason is None:
            self._draw()
        return min(k, len(self._ready))

    def next_token(self) -> tuple[str, float] | None:
        """The next token as sent and its logprob, or None once the choice is done."""
        if not self.available(1):
            return None
        return self._ready.popleft()

    def __iter__(self) -> Iterator[tuple[str, float]]:
        while (t := self.next_token()) is not None:
            yield t


def generate(
    seed: int, max_tokens: int, stop: tuple[str, ...] = (), leading_space: bool = True
) -> GeneratedChoice:
    """Every token of a ``ChoiceStream`` at once."""
    cs = ChoiceStream(seed, max_tokens, stop, leading_space)
    pairs = list(cs)
    assert cs.finish_reason is not None
    return GeneratedChoice(
        tuple(t for t, _ in pairs), tuple(p for _, p in pairs), cs.finish_reason, seed
    )


def top_logprobs(token: str, logprob: float, k: int, seed: int, position: int) -> dict[str, float]:
    """A plausible top-k dict: the chosen token plus k-1 others, all with logprobs
    <= max(chosen, -0.01)."""
    if k <= 0:
        return {}
    rng = random.Random(seed * 1_000_003 + position)
    out = {token: logprob}
    best = max(logprob, -0.01)
    while len(out) < k:
        if rng.random() < 0.8:
            alt = " " + WORDS[rng.randrange(len(WORDS))]
        else:
            alt = PUNCT[rng.randrange(3)]
        if alt not in out:
            out[alt] = -round(rng.uniform(-best, -best + 6.0), 4)
    return out


def prompt_logprobs(prompt: str, seed: int) -> tuple[list[str], list[float | None]]:
    """Tokens and logprobs of an echoed prompt (the first token has none, as OpenAI)."""
    toks = tokenize(prompt)
    rng = random.Random(seed ^ 0x5EED)
    lps: list[float | None] = [None] + [-round(rng.uniform(0.5, 8.0), 4) for _ in toks[1:]]
    return toks, lps
