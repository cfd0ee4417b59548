"""Deterministic pseudo-text: the same request gives the same tokens. Produces the whole
plan of a response (tokens, finish reason, logprobs) before any byte is sent, so a
stream and a non-stream of the same request report the same text and usage."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from loadkit.server.tokenizer import PUNCT, WORDS, token_id, tokenize


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


def _next_token(rng: random.Random, sentence_start: bool, space: bool = True) -> str:
    r = rng.random()
    if not sentence_start and r < 0.06:
        return "."
    if not sentence_start and r < 0.13:
        return ","
    w = WORDS[rng.randrange(len(WORDS))]
    return (" " if space else "") + (w.capitalize() if sentence_start else w)


def generate(
    seed: int, max_tokens: int, stop: tuple[str, ...] = (), leading_space: bool = True
) -> GeneratedChoice:
    """Up to ``max_tokens`` tokens from ``seed``; a stop sequence ends the text just
    before it (finish_reason "stop"), else "length". Chat replies start without a space,
    completions continue the prompt with one."""
    rng = random.Random(seed)
    stops = tuple(s for s in stop if s)
    longest = max((len(s) for s in stops), default=0)
    tokens: list[str] = []
    lps: list[float] = []
    text = ""
    sentence_start = True
    for _ in range(max_tokens):
        tok = _next_token(rng, sentence_start, leading_space or bool(tokens))
        sentence_start = tok == "."
        lp = -round(rng.uniform(0.005, 3.0), 4)
        before = len(text)
        text += tok
        tokens.append(tok)
        lps.append(lp)
        if stops:
            lo = max(0, before - longest + 1)
            cut = min((i for i in (text.find(s, lo) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                return GeneratedChoice(*_cut(tokens, lps, cut), "stop", seed)
    return GeneratedChoice(tuple(tokens), tuple(lps), "length", seed)


def _cut(
    tokens: list[str], lps: list[float], cut: int
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    out: list[str] = []
    pos = 0
    for tok in tokens:
        if pos + len(tok) <= cut:
            out.append(tok)
            pos += len(tok)
            continue
        if cut > pos:
            out.append(tok[: cut - pos])
        break
    return tuple(out), tuple(lps[: len(out)])


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


def logprobs_object(
    tokens: list[str],
    lps: list[float | None],
    k: int,
    seed: int,
    first_offset: int,
    first_position: int = 0,
) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object for a run of tokens."""
    offsets = []
    pos = first_offset
    tops: list[dict[str, float] | None] = []
    for i, (tok, lp) in enumerate(zip(tokens, lps, strict=True)):
        offsets.append(pos)
        pos += len(tok)
        tops.append(None if lp is None else top_logprobs(tok, lp, k, seed, first_position + i))
    return {
        "tokens": list(tokens),
        "token_logprobs": list(lps),
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def prompt_logprobs(prompt: str, seed: int) -> tuple[list[str], list[float | None]]:
    """Tokens and logprobs of an echoed prompt (the first token has none, as OpenAI)."""
    toks = tokenize(prompt)
    rng = random.Random(seed ^ 0x5EED)
    lps: list[float | None] = [None] + [-round(rng.uniform(0.5, 8.0), 4) for _ in toks[1:]]
    return toks, lps


def token_ids(tokens: list[str]) -> list[int]:
    return [token_id(t) for t in tokens]
