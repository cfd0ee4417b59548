"""OpenAI response objects, pure: a validated request becomes a ``Plan`` (every choice's
tokens decided up front), which renders as one non-streaming body or as the sequence of
stream chunks, step by step. Both views share the plan, so their usage always agrees."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from loadkit.server.generation import (
    GeneratedChoice,
    generate,
    logprobs_object,
    prompt_logprobs,
    request_seed,
    top_logprobs,
)
from loadkit.server.validation import ChatRequest, CompletionRequest, Sampling


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
    include_usage: bool = False
    logprobs: int | None = None  # completions: top-k; chat: top_logprobs when enabled
    chat_logprobs: bool = False

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
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


def plan_chat(
    req: ChatRequest, max_tokens: int, server_seed: int, created: int, rid: str | None = None
) -> Plan:
    s = req.sampling
    base = _base_seed(server_seed, "chat", s, list(req.messages))
    choices = tuple(
        PlanChoice(i, generate(_choice_seed(base, i, s.temperature), max_tokens, s.stop, False))
        for i in range(s.n)
    )
    return Plan(
        kind="chat",
        id=rid or new_id("chatcmpl"),
        created=created,
        model=s.model,
        choices=choices,
        prompt_tokens=req.prompt_tokens,
        completion_tokens=sum(len(c.gen.tokens) for c in choices),
        steps=max(c.steps for c in choices),
        sequences=len(choices),
        include_usage=s.include_usage and s.stream,
        logprobs=req.top_logprobs if req.logprobs else None,
        chat_logprobs=req.logprobs,
    )


def plan_completion(
    req: CompletionRequest, max_tokens: int, server_seed: int, created: int, rid: str | None = None
) -> Plan:
    s = req.sampling
    choices: list[PlanChoice] = []
    generated = 0
    steps = 1
    for p_idx, prompt in enumerate(req.prompts):
        base = _base_seed(server_seed, "completions", s, prompt.text, req.suffix)
        cands = [
            generate(_choice_seed(base, j, s.temperature), max_tokens, s.stop)
            for j in range(req.best_of)
        ]
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
        prompt_tokens=req.prompt_tokens + (_suffix_tokens(req.suffix) * len(req.prompts)),
        completion_tokens=generated,
        steps=steps,
        sequences=len(req.prompts) * req.best_of,
        include_usage=s.include_usage and s.stream,
        logprobs=req.logprobs,
    )


def _suffix_tokens(suffix: str | None) -> int:
    if not suffix:
        return 0
    from loadkit.server.tokenizer import count_tokens

    return count_tokens(suffix)


# --- rendering ------------------------------------------------------------------------


def _chat_logprobs(tokens: list[str], lps: list[float], k: int, seed: int, pos0: int) -> dict:
    content = []
    for i, (tok, lp) in enumerate(zip(tokens, lps, strict=True)):
        tops = top_logprobs(tok, lp, k, seed, pos0 + i)
        content.append(
            {
                "token": tok,
                "logprob": lp,
                "bytes": list(tok.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in tops.items()
                ],
            }
        )
    return {"content": content, "refusal": None}


def _completion_logprobs(plan: Plan, c: PlanChoice, lo: int, hi: int, first: bool) -> dict:
    """Logprobs of generated tokens [lo, hi) (plus the echoed prompt when ``first``)."""
    k = plan.logprobs or 0
    toks: list[str] = []
    lps: list[float | None] = []
    start = len(c.prefix) + sum(len(t) for t in c.gen.tokens[:lo])
    if first and c.prefix_tokens:
        toks += list(c.prefix_tokens)
        lps += list(c.prefix_lps)
        start = 0
    toks += list(c.gen.tokens[lo:hi])
    lps += list(c.gen.logprobs[lo:hi])
    obj = logprobs_object(toks, lps, k, c.gen.seed, start)
    return obj


def full_body(plan: Plan) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` / ``text_completion`` object."""
    out_choices = []
    for c in plan.choices:
        if plan.kind == "chat":
            ch: dict[str, Any] = {
                "index": c.index,
                "message": {"role": "assistant", "content": c.gen.text, "refusal": None},
                "logprobs": None,
                "finish_reason": c.gen.finish_reason,
            }
            if plan.chat_logprobs:
                ch["logprobs"] = _chat_logprobs(
                    list(c.gen.tokens), list(c.gen.logprobs), plan.logprobs or 0, c.gen.seed, 0
                )
        else:
            ch = {
                "text": c.prefix + c.gen.text + c.suffix,
                "index": c.index,
                "logprobs": None,
                "finish_reason": c.gen.finish_reason,
            }
            if plan.logprobs is not None:
                ch["logprobs"] = _completion_logprobs(plan, c, 0, len(c.gen.tokens), True)
        out_choices.append(ch)
    return {
        "id": plan.id,
        "object": "chat.completion" if plan.kind == "chat" else "text_completion",
        "created": plan.created,
        "model": plan.model,
        "system_fingerprint": "loadkit",
        "choices": out_choices,
        "usage": plan.usage(),
    }


def _chunk(plan: Plan, choices: list[dict[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": plan.id,
        "object": "chat.completion.chunk" if plan.kind == "chat" else "text_completion",
        "created": plan.created,
        "model": plan.model,
        "system_fingerprint": "loadkit",
        "choices": choices,
    }
    if plan.include_usage:
        d["usage"] = None
    return d


def stream_head(plan: Plan) -> list[dict[str, Any]]:
    """Chunks sent as soon as the stream opens: the role-only chat chunk per choice."""
    if plan.kind != "chat":
        return []
    return [
        _chunk(
            plan,
            [
                {
                    "index": c.index,
                    "delta": {"role": "assistant"},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        )
        for c in plan.choices
    ]


def stream_step(plan: Plan, step: int) -> list[dict[str, Any]]:
    """One chunk per choice that has a token at this step; a choice's last chunk carries
    its ``finish_reason`` (a choice cut to nothing by a stop sends one empty chunk)."""
    out = []
    for c in plan.choices:
        n = len(c.gen.tokens)
        if step >= c.steps:
            continue
        last = step == c.steps - 1
        text = c.gen.tokens[step] if step < n else ""
        finish = c.gen.finish_reason if last else None
        if plan.kind == "chat":
            ch: dict[str, Any] = {
                "index": c.index,
                "delta": {"content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            if plan.chat_logprobs and step < n:
                ch["logprobs"] = _chat_logprobs(
                    [text], [c.gen.logprobs[step]], plan.logprobs or 0, c.gen.seed, step
                )
        else:
            full = (c.prefix if step == 0 else "") + text + (c.suffix if last else "")
            ch = {"text": full, "index": c.index, "logprobs": None, "finish_reason": finish}
            if plan.logprobs is not None:
                ch["logprobs"] = _completion_logprobs(plan, c, step, min(step + 1, n), step == 0)
        out.append(_chunk(plan, [ch]))
    return out


def stream_usage(plan: Plan) -> dict[str, Any]:
    d = _chunk(plan, [])
    d["usage"] = plan.usage()
    return d


def tokens_at_step(plan: Plan, step: int) -> int:
    """Generated tokens the returned choices deliver at this step."""
    return sum(1 for c in plan.choices if step < len(c.gen.tokens))
