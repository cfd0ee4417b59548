"""OpenAI response objects, pure. A non-streaming request becomes a ``Plan`` (every
choice's tokens, best_of candidates included) rendered as one body; a stream becomes a
``LiveStream`` that draws each choice's tokens as it sends them. Both draw from the same
``ChoiceStream``s, so the two views of a request have the same text and usage.

Everything long is cooperative work (``loadkit.server.work``): planning yields between
tokens, the body is encoded piece by piece (``Node`` / ``LazyArray``), a stream step
yields between choices."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from loadkit.server.generation import (
    ChoiceStream,
    GeneratedChoice,
    prompt_logprobs,
    request_seed,
    top_logprobs,
)
from loadkit.server.tokenizer import count_tokens
from loadkit.server.validation import ChatRequest, CompletionRequest, Sampling
from loadkit.server.work import Work, drive

_encode = json.JSONEncoder(separators=(",", ":")).encode
# What ``_encode`` makes of a str (it escapes to ASCII): a token's JSON string.
_json_str = json.encoder.encode_basestring_ascii
_HOLE = "\x00loadkit-token\x00"  # where a template's token goes
_BATCH = 64  # array items encoded per C call and per pause


# --- piecewise JSON ---------------------------------------------------------------------


class Node(dict[str, Any]):
    """A JSON object encoded member by member (its values may be ``Node``s or
    ``LazyArray``s); any other value is encoded whole."""


class LazyArray:
    """A JSON array whose items are produced while it is encoded (once), ``batch`` items
    per pause (fewer for costly items)."""

    def __init__(self, items: Iterable[Any], batch: int = _BATCH) -> None:
        self.items = items
        self.batch = max(1, batch)


def encode_work(obj: Any, out: list[str]) -> Work[None]:
    """Append the JSON text of ``obj`` to ``out``, pausing between array batches; the
    text equals ``json.dumps(materialize(obj), separators=(",", ":"))``."""
    if isinstance(obj, Node):
        out.append("{")
        for i, (k, v) in enumerate(obj.items()):
            out.append(("," if i else "") + _encode(k) + ":")
            yield from encode_work(v, out)
        out.append("}")
    elif isinstance(obj, LazyArray):
        out.append("[")
        it = iter(obj.items)
        first = True
        while batch := list(islice(it, obj.batch)):
            if any(isinstance(x, Node | LazyArray) for x in batch):
                for x in batch:
                    out.append("" if first else ",")
                    first = False
                    yield from encode_work(x, out)
            else:
                out.append(("" if first else ",") + _encode(batch)[1:-1])
                first = False
            yield
        out.append("]")
    else:
        out.append(_encode(obj))


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return b"data: " + _encode(obj).encode() + b"\n\n"


def materialize(obj: Any) -> Any:
    """Plain dicts and lists in place of ``Node`` and ``LazyArray``."""
    if isinstance(obj, Node):
        return {k: materialize(v) for k, v in obj.items()}
    if isinstance(obj, LazyArray):
        return [materialize(x) for x in obj.items]
    return obj


# --- plans ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanChoice:
    index: int
    gen: GeneratedChoice
    prefix: str = ""  # the echoed prompt (completions with echo)
    suffix: str = ""  # appended after the generated text (completions with echo + suffix)
    prefix_tokens: tuple[str, ...] = ()
    prefix_lps: tuple[float | None, ...] = ()

    @property
    def steps(self) -> int:
        return max(1, len(self.gen.tokens))


@dataclass(frozen=True)
class Plan:
    kind: str  # "chat" | "completions"
    id: str
    created: int
    model: str
    choices: tuple[PlanChoice, ...]
    prompt_tokens: int
    completion_tokens: int  # every generated token, best_of candidates included
    steps: int  # decode steps: the longest generated sequence
    sequences: int  # sequences decoded in parallel (share of the model's decode capacity)
    logprobs: int | None = None  # completions: top-k; chat: top_logprobs when enabled
    chat_logprobs: bool = False

    def usage(self) -> dict[str, int]:
        return _usage(self.prompt_tokens, self.completion_tokens)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _base_seed(server_seed: int, kind: str, s: Sampling, content: Any, extra: Any = None) -> int:
    return request_seed(
        server_seed,
        kind,
        s.model,
        content,
        s.temperature,
        s.top_p,
        s.presence_penalty,
        s.frequency_penalty,
        sorted(s.logit_bias.items()),
        s.seed,
        extra,
    )


def _choice_seed(base: int, index: int, temperature: float) -> int:
    # Greedy decoding (temperature 0) gives every choice the same text, as a real model.
    return base if temperature == 0 else request_seed(base, index)


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _generate_work(stream: ChoiceStream, stop: tuple[str, ...]) -> Work[GeneratedChoice]:
    toks: list[str] = []
    lps: list[float] = []
    # A token costs a search of the longest stop's length in each stop sequence.
    every = max(1, min(_BATCH, 16_384 // (1 + sum(map(len, stop)))))
    for tok, lp in stream:
        toks.append(tok)
        lps.append(lp)
        if len(toks) % every == 0:
            yield
    assert stream.finish_reason is not None
    return GeneratedChoice(tuple(toks), tuple(lps), stream.finish_reason, stream.seed)


def plan_chat_work(
    req: ChatRequest, max_tokens: int, server_seed: int, created: int, rid: str | None = None
) -> Work[Plan]:
    s = req.sampling
    base = _base_seed(server_seed, "chat", s, list(req.messages))
    yield
    choices = []
    for i in range(s.n):
        seed = _choice_seed(base, i, s.temperature)
        gen = yield from _generate_work(ChoiceStream(seed, max_tokens, s.stop, False), s.stop)
        choices.append(PlanChoice(i, gen))
    return Plan(
        kind="chat",
        id=rid or new_id("chatcmpl"),
        created=created,
        model=s.model,
        choices=tuple(choices),
        prompt_tokens=req.prompt_tokens,
        completion_tokens=sum(len(c.gen.tokens) for c in choices),
        steps=max(c.steps for c in choices),
        sequences=len(choices),
        logprobs=req.top_logprobs if req.logprobs else None,
        chat_logprobs=req.logprobs,
    )


def plan_completion_work(
    req: CompletionRequest, max_tokens: int, server_seed: int, created: int, rid: str | None = None
) -> Work[Plan]:
    s = req.sampling
    choices: list[PlanChoice] = []
    generated = 0
    steps = 1
    for p_idx, prompt in enumerate(req.prompts):
        base = _base_seed(server_seed, "completions", s, prompt.text, req.suffix)
        yield
        cands = []
        for j in range(req.best_of):
            seed = _choice_seed(base, j, s.temperature)
            stream = ChoiceStream(seed, max_tokens, s.stop)
            cands.append((yield from _generate_work(stream, s.stop)))
        generated += sum(len(c.tokens) for c in cands)
        steps = max(steps, *(max(1, len(c.tokens)) for c in cands))
        if req.best_of > s.n:
            order = sorted(range(len(cands)), key=lambda j: (-cands[j].score, j))
            cands = [cands[j] for j in order[: s.n]]
        ptoks: tuple[str, ...] = ()
        plps: tuple[float | None, ...] = ()
        if req.echo and req.logprobs is not None:
            t, lp = prompt_logprobs(prompt.text, base)
            ptoks, plps = tuple(t), tuple(lp)
        for j, gen in enumerate(cands):
            choices.append(
                PlanChoice(
                    index=p_idx * s.n + j,
                    gen=gen,
                    prefix=prompt.text if req.echo else "",
                    suffix=(req.suffix or "") if req.echo else "",
                    prefix_tokens=ptoks,
                    prefix_lps=plps,
                )
            )
    return Plan(
        kind="completions",
        id=rid or new_id("cmpl"),
        created=created,
        model=s.model,
        choices=tuple(choices),
        prompt_tokens=completion_prompt_tokens(req),
        completion_tokens=generated,
        steps=steps,
        sequences=len(req.prompts) * req.best_of,
        logprobs=req.logprobs,
    )


def completion_prompt_tokens(req: CompletionRequest) -> int:
    """Prompt tokens billed: every prompt, plus the suffix once per prompt."""
    suffix = count_tokens(req.suffix) if req.suffix else 0
    return req.prompt_tokens + suffix * len(req.prompts)


def plan_chat(
    req: ChatRequest, max_tokens: int, server_seed: int, created: int, rid: str | None = None
) -> Plan:
    return drive(plan_chat_work(req, max_tokens, server_seed, created, rid))


def plan_completion(
    req: CompletionRequest, max_tokens: int, server_seed: int, created: int, rid: str | None = None
) -> Plan:
    return drive(plan_completion_work(req, max_tokens, server_seed, created, rid))


# --- rendering --------------------------------------------------------------------------


def _chat_lp_entry(tok: str, lp: float, k: int, seed: int, pos: int) -> dict[str, Any]:
    tops = top_logprobs(tok, lp, k, seed, pos)
    return {
        "token": tok,
        "logprob": lp,
        "bytes": list(tok.encode()),
        "top_logprobs": [
            {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in tops.items()
        ],
    }


def _chat_logprobs(
    tokens: Iterable[str], lps: Iterable[float], k: int, seed: int, pos0: int
) -> Node:
    entries = (
        _chat_lp_entry(tok, lp, k, seed, pos0 + i)
        for i, (tok, lp) in enumerate(zip(tokens, lps, strict=True))
    )
    return Node(content=LazyArray(entries, _BATCH // (1 + k)), refusal=None)


def _legacy_logprobs(
    tokens: list[str],
    lps: list[float | None],
    k: int,
    seed: int,
    first_offset: int,
    positions: Iterable[int] | None = None,
) -> Node:
    """The legacy completions ``logprobs`` object for a run of tokens; ``positions``
    (default 0, 1, ...) place each token in the choice (echoed prompt tokens first) and
    seed its alternatives, so a stream's chunks carry the body's alternatives."""

    def offsets() -> Iterator[int]:
        pos = first_offset
        for tok in tokens:
            yield pos
            pos += len(tok)

    tops = (
        None if lp is None else top_logprobs(tok, lp, k, seed, pos)
        for pos, tok, lp in zip(positions or range(len(tokens)), tokens, lps, strict=True)
    )
    return Node(
        tokens=LazyArray(tokens),
        token_logprobs=LazyArray(lps),
        top_logprobs=LazyArray(tops, _BATCH // (1 + k)),
        text_offset=LazyArray(offsets()),
    )


def _choice_node(plan: Plan, c: PlanChoice) -> Node:
    g = c.gen
    if plan.kind == "chat":
        ch = Node(
            index=c.index,
            message={"role": "assistant", "content": g.text, "refusal": None},
            logprobs=None,
            finish_reason=g.finish_reason,
        )
        if plan.chat_logprobs:
            ch["logprobs"] = _chat_logprobs(g.tokens, g.logprobs, plan.logprobs or 0, g.seed, 0)
        return ch
    ch = Node(
        text=c.prefix + g.text + c.suffix,
        index=c.index,
        logprobs=None,
        finish_reason=g.finish_reason,
    )
    if plan.logprobs is not None:
        toks = list(c.prefix_tokens) + list(g.tokens)
        lps: list[float | None] = [*c.prefix_lps, *g.logprobs]
        start = 0 if c.prefix_tokens else len(c.prefix)
        ch["logprobs"] = _legacy_logprobs(toks, lps, plan.logprobs, g.seed, start)
    return ch


def body_tree(plan: Plan) -> Node:
    """The non-streaming ``chat.completion`` / ``text_completion`` object, lazily."""
    return Node(
        id=plan.id,
        object="chat.completion" if plan.kind == "chat" else "text_completion",
        created=plan.created,
        model=plan.model,
        system_fingerprint="loadkit",
        choices=LazyArray(_choice_node(plan, c) for c in plan.choices),
        usage=plan.usage(),
    )


def full_body(plan: Plan) -> dict[str, Any]:
    """The non-streaming body as plain dicts (small plans; the server encodes lazily)."""
    out: dict[str, Any] = materialize(body_tree(plan))
    return out


def body_work(plan: Plan) -> Work[bytes]:
    """The non-streaming body as JSON bytes, encoded piece by piece."""
    out: list[str] = []
    yield from encode_work(body_tree(plan), out)
    return "".join(out).encode()


# --- streams ----------------------------------------------------------------------------


@dataclass
class LiveChoice:
    index: int
    stream: ChoiceStream
    prefix: str = ""
    suffix: str = ""
    prefix_tokens: tuple[str, ...] = ()
    prefix_lps: tuple[float | None, ...] = ()
    sent: int = 0  # tokens rendered so far
    offset: int = 0  # characters rendered so far (text_offset of the next token)
    done: bool = False


@dataclass
class LiveStream:
    """A stream's state between steps: each step draws one token per unfinished choice."""

    kind: str
    id: str
    created: int
    model: str
    choices: list[LiveChoice]
    prompt_tokens: int
    sequences: int
    include_usage: bool = False
    logprobs: int | None = None
    chat_logprobs: bool = False
    step: int = 0  # the next step to render
    tokens: int = field(default=0)  # tokens rendered so far, all choices
    # per choice: its chunk's bytes before and after the text (``step_bytes``)
    _templates: list[tuple[bytes, bytes]] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        for c in self.choices:  # noqa: SIM110 - asked once per token: no generator
            if not c.done:
                return False
        return True

    def next_is_last_work(self) -> Work[bool]:
        """Whether the next step is the stream's last (draws at most one token ahead)."""
        for c in self.choices:
            if not c.done and c.stream.available(2) > 1:
                return False
            yield
        return True

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "loadkit",
            "choices": choices,
        }
        if self.include_usage:
            d["usage"] = None
        return d

    def head(self) -> list[dict[str, Any]]:
        """Chunks sent as soon as the stream opens: the role-only chat chunk per choice."""
        if self.kind != "chat":
            return []
        return [
            self._chunk(
                [
                    {
                        "index": c.index,
                        "delta": {"role": "assistant"},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for c in self.choices
        ]

    def step_work(self) -> Work[tuple[bytes, int]]:
        """The next step as SSE bytes, and the tokens in it (see ``step_chunks_work``)."""
        chunks, tokens = yield from self.step_chunks_work()
        return b"".join(map(sse, chunks)), tokens

    @property
    def templated(self) -> bool:
        """Whether ``step_bytes`` renders from pre-encoded templates (no logprobs asked)."""
        return self.logprobs is None and not self.chat_logprobs

    def step_bytes(self) -> tuple[bytes, int]:
        """``drive(self.step_work())``, the same bytes, cheaper: a stream without logprobs
        (the common case) fills each choice's pre-encoded chunk with the token's JSON
        string instead of encoding a chunk object per token."""
        if not self.templated:
            return drive(self.step_work())
        if self._templates is None:
            self._templates = [self._template(c) for c in self.choices]
        parts = []
        tokens = 0
        first = self.step == 0
        for c, (pre, post) in zip(self.choices, self._templates, strict=True):
            if c.done:
                continue
            text, lp, last, finish = self._advance(c)
            if lp is not None:
                tokens += 1
            if last:  # once per choice: its finish_reason, maybe its suffix
                parts.append(sse(self._chunk([self._render(c, text, lp, first, finish)])))
            else:
                piece = (c.prefix + text) if first and c.prefix else text
                parts.append(pre + _json_str(piece).encode() + post)
            self._moved(c, text, lp)
        self.step += 1
        self.tokens += tokens
        return b"".join(parts), tokens

    def _template(self, c: LiveChoice) -> tuple[bytes, bytes]:
        """A choice's chunk (finish_reason null) split around its text's JSON string."""
        hole = _encode(_HOLE)
        frame = sse(self._chunk([self._render(c, _HOLE, None, False, None)]))
        pre, mid, post = frame.partition(hole.encode())
        # The id and the model come from the request and the config: should either
        # hold the marker, the first one found would be the wrong one.
        assert mid and hole.encode() not in post and hole.encode() not in pre, "template"
        return pre, post

    @staticmethod
    def _advance(c: LiveChoice) -> tuple[str, float | None, bool, str | None]:
        """Take a choice's next token: (text, logprob or None, last, finish_reason)."""
        got = c.stream.next_token()
        last = c.stream.available(1) == 0
        c.done = last
        finish = c.stream.finish_reason if last else None
        text, lp = got if got is not None else ("", None)
        return text, lp, last, finish

    @staticmethod
    def _moved(c: LiveChoice, text: str, lp: float | None) -> None:
        """A choice's counters moved past a rendered token."""
        if lp is not None:
            c.sent += 1
        c.offset += len(text)

    def _render(
        self, c: LiveChoice, text: str, lp: float | None, first: bool, finish: str | None
    ) -> dict[str, Any]:
        """A choice's entry in this step's chunk (``c.sent``, ``c.offset``: before it)."""
        last = finish is not None
        if self.kind == "chat":
            ch: dict[str, Any] = {
                "index": c.index,
                "delta": {"content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            if self.chat_logprobs and lp is not None:
                ch["logprobs"] = materialize(
                    _chat_logprobs([text], [lp], self.logprobs or 0, c.stream.seed, c.sent)
                )
        else:
            full = (c.prefix if first else "") + text + (c.suffix if last else "")
            ch = {"text": full, "index": c.index, "logprobs": None, "finish_reason": finish}
            if self.logprobs is not None:
                ch["logprobs"] = self._legacy_step(c, text, lp, first)
        return ch

    def step_chunks_work(self) -> Work[tuple[list[dict[str, Any]], int]]:
        """The next step: one chunk per unfinished choice (its last carries the
        ``finish_reason``; a choice cut to nothing by a stop sends one empty chunk), and
        the tokens in it."""
        out = []
        tokens = 0
        first = self.step == 0
        for c in self.choices:
            if c.done:
                continue
            text, lp, _, finish = self._advance(c)
            if lp is not None:
                tokens += 1
            out.append(self._chunk([self._render(c, text, lp, first, finish)]))
            self._moved(c, text, lp)
            yield
        self.step += 1
        self.tokens += tokens
        return out, tokens

    def _legacy_step(self, c: LiveChoice, text: str, lp: float | None, first: bool) -> Any:
        toks: list[str] = []
        lps: list[float | None] = []
        positions: list[int] = []
        start = c.offset
        n_pre = len(c.prefix_tokens)
        if first and n_pre:
            toks += c.prefix_tokens
            lps += c.prefix_lps
            positions += range(n_pre)
            start = 0
        if lp is not None:
            toks.append(text)
            lps.append(lp)
            positions.append(n_pre + c.sent)
        node = _legacy_logprobs(toks, lps, self.logprobs or 0, c.stream.seed, start, positions)
        return materialize(node)

    def usage_chunk(self) -> dict[str, Any]:
        d = self._chunk([])
        d["usage"] = _usage(self.prompt_tokens, self.tokens)
        return d


def live_chat(
    req: ChatRequest, max_tokens: int, server_seed: int, created: int, rid: str | None = None
) -> LiveStream:
    s = req.sampling
    base = _base_seed(server_seed, "chat", s, list(req.messages))
    choices = [
        LiveChoice(i, ChoiceStream(_choice_seed(base, i, s.temperature), max_tokens, s.stop, False))
        for i in range(s.n)
    ]
    return LiveStream(
        kind="chat",
        id=rid or new_id("chatcmpl"),
        created=created,
        model=s.model,
        choices=choices,
        prompt_tokens=req.prompt_tokens,
        sequences=len(choices),
        include_usage=s.include_usage,
        logprobs=req.top_logprobs if req.logprobs else None,
        chat_logprobs=req.logprobs,
    )


def live_completion(
    req: CompletionRequest, max_tokens: int, server_seed: int, created: int, rid: str | None = None
) -> LiveStream:
    """A streamed completion (``best_of`` equals ``n``: validation refuses more)."""
    s = req.sampling
    choices: list[LiveChoice] = []
    for p_idx, prompt in enumerate(req.prompts):
        base = _base_seed(server_seed, "completions", s, prompt.text, req.suffix)
        ptoks: tuple[str, ...] = ()
        plps: tuple[float | None, ...] = ()
        if req.echo and req.logprobs is not None:
            t, lp = prompt_logprobs(prompt.text, base)
            ptoks, plps = tuple(t), tuple(lp)
        prefix = prompt.text if req.echo else ""
        for j in range(s.n):
            stream = ChoiceStream(_choice_seed(base, j, s.temperature), max_tokens, s.stop)
            choices.append(
                LiveChoice(
                    index=p_idx * s.n + j,
                    stream=stream,
                    prefix=prefix,
                    suffix=(req.suffix or "") if req.echo else "",
                    prefix_tokens=ptoks,
                    prefix_lps=plps,
                    offset=len(prefix),
                )
            )
    return LiveStream(
        kind="completions",
        id=rid or new_id("cmpl"),
        created=created,
        model=s.model,
        choices=choices,
        prompt_tokens=completion_prompt_tokens(req),
        sequences=len(choices),
        include_usage=s.include_usage,
        logprobs=req.logprobs,
    )
