"""Incremental generation and piecewise encoding change nothing a client sees: a
``ChoiceStream`` draws exactly the tokens of the whole-text algorithm it replaced
(kept here as the oracle), a body encoded piece by piece is byte for byte
``json.dumps`` of the same object, and a stream carries the body's text, finish reasons
and logprob alternatives."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from loadkit.server.generation import ChoiceStream, _next_token, generate
from loadkit.server.responses import (
    body_work,
    full_body,
    live_chat,
    live_completion,
    plan_chat,
    plan_completion,
)
from loadkit.server.validation import validate_chat, validate_completion
from loadkit.server.work import drive


def oracle(seed: int, max_tokens: int, stop: tuple[str, ...], space: bool):  # type: ignore[no-untyped-def]
    """The pre-incremental algorithm: draw every token, search the whole text."""
    rng = random.Random(seed)
    stops = tuple(s for s in stop if s)
    longest = max((len(s) for s in stops), default=0)
    tokens: list[str] = []
    lps: list[float] = []
    text = ""
    sentence_start = True
    for _ in range(max_tokens):
        tok = _next_token(rng, sentence_start, space or bool(tokens))
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
                out: list[str] = []
                pos = 0
                for t in tokens:
                    if pos + len(t) <= cut:
                        out.append(t)
                        pos += len(t)
                        continue
                    if cut > pos:
                        out.append(t[: cut - pos])
                    break
                return tuple(out), tuple(lps[: len(out)]), "stop"
    return tuple(tokens), tuple(lps), "length"


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**64 - 1),
    max_tokens=st.integers(0, 120),
    space=st.booleans(),
    data=st.data(),
)
def test_choice_stream_draws_the_oracles_tokens(seed, max_tokens, space, data) -> None:  # type: ignore[no-untyped-def]
    full = "".join(oracle(seed, 150, (), space)[0])
    # stops cut from the text itself (so they hit, across token boundaries), or random
    piece = st.integers(0, max(0, len(full) - 1)).flatmap(
        lambda i: st.integers(1, 12).map(lambda n: full[i : i + n])
    )
    stop = tuple(data.draw(st.lists(st.one_of(piece, st.text(max_size=4)), max_size=4)))
    want = oracle(seed, max_tokens, stop, space)
    got = generate(seed, max_tokens, stop, space)
    assert (got.tokens, got.logprobs, got.finish_reason) == want
    # drawn one at a time, with look-ahead, the same
    cs = ChoiceStream(seed, max_tokens, stop, space)
    seen = []
    while cs.available(2):
        seen.append(cs.next_token())
    assert tuple(t for t, _ in seen) == want[0] and cs.finish_reason == want[2]


CHAT_BODIES = [
    {"n": 3, "stop": ["."], "max_tokens": 30},
    {"n": 2, "logprobs": True, "top_logprobs": 3, "max_tokens": 70},
    {"n": 1, "logprobs": True, "max_tokens": 5, "temperature": 0},
    {"n": 2, "stop": [" the", ","], "logprobs": True, "top_logprobs": 1, "max_tokens": 12},
]
COMPLETION_BODIES = [
    {"prompt": ["Once upon", "a time"], "n": 2, "echo": True, "suffix": " END", "logprobs": 3,
     "max_tokens": 6},
    {"prompt": [5, 6, 7], "logprobs": 0, "max_tokens": 90},
    {"prompt": "x", "n": 2, "best_of": 5, "max_tokens": 9, "logprobs": 2},
    {"prompt": "x", "stop": "."},
]  # fmt: skip


def test_piecewise_body_is_json_dumps_of_the_body() -> None:
    for extra in CHAT_BODIES:
        req = validate_chat(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
        )
        plan = plan_chat(req, extra["max_tokens"], 7, 0, "id")
        assert drive(body_work(plan)) == json.dumps(full_body(plan), separators=(",", ":")).encode()
    for extra in COMPLETION_BODIES:
        req = validate_completion({"model": "m", **extra})
        plan = plan_completion(req, extra.get("max_tokens", 16), 7, 0, "id")
        assert drive(body_work(plan)) == json.dumps(full_body(plan), separators=(",", ":")).encode()


def _stream_choices(live) -> dict[int, dict]:  # type: ignore[no-untyped-def]
    """Per choice index: text, finish_reason, and the logprobs entries, from the chunks."""
    out: dict[int, dict] = {}
    while not live.done:
        chunks, _ = drive(live.step_chunks_work())
        for ch in chunks:
            c = ch["choices"][0]
            o = out.setdefault(c["index"], {"text": "", "finish": None, "lp": []})
            o["text"] += c["delta"]["content"] if "delta" in c else c["text"]
            o["finish"] = c["finish_reason"] or o["finish"]
            lp = c["logprobs"]
            if lp and "content" in lp:
                o["lp"] += lp["content"]
            elif lp:
                o["lp"] += list(zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                    lp["text_offset"], strict=True))  # fmt: skip
    return out


def test_a_stream_carries_the_body() -> None:
    for extra in CHAT_BODIES:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
        req = validate_chat(body)
        full = full_body(plan_chat(req, extra["max_tokens"], 7, 0, "id"))
        streamed = _stream_choices(live_chat(req, extra["max_tokens"], 7, 0, "id"))
        for c in full["choices"]:
            s = streamed[c["index"]]
            assert (s["text"], s["finish"]) == (c["message"]["content"], c["finish_reason"])
            assert s["lp"] == (c["logprobs"]["content"] if c["logprobs"] else [])
    for extra in COMPLETION_BODIES:
        if "best_of" in extra:
            continue  # best_of > n is never streamed
        req = validate_completion({"model": "m", **extra})
        mt = extra.get("max_tokens", 16)
        full = full_body(plan_completion(req, mt, 7, 0, "id"))
        streamed = _stream_choices(live_completion(req, mt, 7, 0, "id"))
        for c in full["choices"]:
            s = streamed[c["index"]]
            assert (s["text"], s["finish"]) == (c["text"], c["finish_reason"])
            lp = c["logprobs"]
            want = list(zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                            lp["text_offset"], strict=True)) if lp else []  # fmt: skip
            assert s["lp"] == want


def test_a_stream_draws_no_more_than_it_sends() -> None:
    req = validate_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2})
    live = live_chat(req, 1_000_000, 0, 0)  # a budget no plan could hold
    for _ in range(3):
        drive(live.step_work())
    assert live.tokens == 6 and not live.done
    assert all(c.stream._drawn <= 4 for c in live.choices)  # three sent, one looked ahead


def _sse_reference(chunks: list[dict]) -> bytes:  # type: ignore[type-arg]
    return b"".join(
        b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n" for c in chunks
    )


@settings(max_examples=150, deadline=None)
@given(
    chat=st.booleans(),
    prompt=st.text(max_size=12),
    n=st.integers(1, 3),
    max_tokens=st.integers(1, 40),
    stop=st.lists(st.sampled_from([".", ",", " the", "e", "\u00e9"]), max_size=2),
    echo=st.booleans(),
    suffix=st.one_of(st.none(), st.text(max_size=4)),
    usage=st.booleans(),
    model=st.sampled_from(["m", "gpt-4o", 'we"ird/\u00fcmodel']),
)
def test_templated_stream_bytes_equal_json_dumps_of_each_chunk(  # type: ignore[no-untyped-def]
    chat, prompt, n, max_tokens, stop, echo, suffix, usage, model
) -> None:
    common = {"model": model, "n": n, "max_tokens": max_tokens, "stream": True,
              "stream_options": {"include_usage": usage}}  # fmt: skip
    if stop:
        common["stop"] = stop
    if chat:
        req = validate_chat({**common, "messages": [{"role": "user", "content": prompt}]})
        fast, ref = (live_chat(req, max_tokens, 7, 123, "chatcmpl-x") for _ in range(2))
    else:
        body = {**common, "prompt": prompt or "x", "echo": echo}
        if suffix is not None:
            body["suffix"] = suffix
        req = validate_completion(body)
        fast, ref = (live_completion(req, max_tokens, 7, 123, "cmpl-x") for _ in range(2))
    assert fast.templated
    while not ref.done:
        want_chunks, want_tokens = drive(ref.step_chunks_work())
        assert fast.step_bytes() == (_sse_reference(want_chunks), want_tokens)
    assert fast.done and fast.tokens == ref.tokens
    assert fast.usage_chunk() == ref.usage_chunk()


def test_a_stream_with_logprobs_takes_the_chunk_objects() -> None:
    req = validate_completion({"model": "m", "prompt": "a b", "logprobs": 2, "max_tokens": 5,
                               "echo": True, "n": 2})  # fmt: skip
    fast, ref = (live_completion(req, 5, 7, 0, "cmpl-x") for _ in range(2))
    assert not fast.templated
    while not ref.done:
        chunks, tokens = drive(ref.step_chunks_work())
        assert fast.step_bytes() == (_sse_reference(chunks), tokens)
