"""The chat and completions handlers: validate, check the model and the balance, plan
the whole response, then deliver it on the model's latency schedule (absolute token
deadlines, measured write lateness), streaming or not, with the injected faults."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from loadkit.server import errors as E
from loadkit.server.billing import Hold
from loadkit.server.config import ModelConfig
from loadkit.server.latency import itl_ns, ttft_ns
from loadkit.server.responses import (
    Plan,
    full_body,
    plan_chat,
    plan_completion,
    stream_head,
    stream_step,
    stream_usage,
    tokens_at_step,
)
from loadkit.server.state import CTX, STATE, RequestCtx, ServerState
from loadkit.server.validation import effective_max_tokens, validate_chat, validate_completion
from loadkit.server.wire import json_response, read_json, sse, xrid_headers

log = logging.getLogger("loadkit.server")

_NS = 1_000_000_000


def _model_for(st: ServerState, model_id: str, capability: str) -> ModelConfig:
    m = st.models.get(model_id)
    if m is None:
        raise E.model_not_found(model_id)
    if not getattr(m, capability):
        raise E.model_not_supported(model_id, capability)
    return m


async def chat_completions(request: web.Request) -> web.StreamResponse:
    st, ctx = request.app[STATE], request[CTX]
    body = await read_json(request)
    ctx.rec.stream = body.get("stream") is True
    req = validate_chat(body, st.config.max_choices)
    ctx.rec.model = req.sampling.model
    model = _model_for(st, req.sampling.model, "chat")
    max_tokens = effective_max_tokens(
        req.sampling.max_tokens,
        st.config.default_chat_max_tokens,
        req.prompt_tokens,
        model.context_length,
        "messages",
    )
    _maybe_fail(st)
    assert ctx.key is not None
    hold = st.ledger.hold(ctx.key.label, req.prompt_tokens, max_tokens * req.sampling.n)
    plan = plan_chat(req, max_tokens, st.config.seed, int(time.time()))
    return await _respond(request, plan, model, hold, req.sampling.stream)


async def completions(request: web.Request) -> web.StreamResponse:
    st, ctx = request.app[STATE], request[CTX]
    body = await read_json(request)
    ctx.rec.stream = body.get("stream") is True
    req = validate_completion(body, st.config.max_choices)
    ctx.rec.model = req.sampling.model
    model = _model_for(st, req.sampling.model, "completion")
    longest = max(p.tokens for p in req.prompts)
    max_tokens = effective_max_tokens(
        req.sampling.max_tokens,
        st.config.default_completion_max_tokens,
        longest,
        model.context_length,
        "prompt",
    )
    _maybe_fail(st)
    assert ctx.key is not None
    worst = max_tokens * req.best_of * len(req.prompts)
    hold = st.ledger.hold(ctx.key.label, req.prompt_tokens, worst)
    plan = plan_completion(req, max_tokens, st.config.seed, int(time.time()))
    return await _respond(request, plan, model, hold, req.sampling.stream)


def _maybe_fail(st: ServerState) -> None:
    f = st.config.faults
    if f.error_rate and st.fault_rng.random() < f.error_rate:
        raise E.internal_error("injected fault: internal error")


@dataclass
class _Faults:
    cut_at: int | None = None  # step before which the server closes the connection
    error_at: int | None = None  # step before which an error event ends the stream
    stall_at: int | None = None
    stall_ns: int = 0


def _draw_faults(st: ServerState, plan: Plan, stream: bool) -> _Faults:
    f, rng = st.config.faults, st.fault_rng
    out = _Faults()
    last = plan.steps - 1
    if stream and f.disconnect_rate and rng.random() < f.disconnect_rate:
        out.cut_at = min(f.disconnect_after_tokens, last)
    if stream and f.midstream_error_rate and rng.random() < f.midstream_error_rate:
        out.error_at = min(f.midstream_error_after_tokens, last)
    if f.stall_rate and rng.random() < f.stall_rate:
        out.stall_at = min(f.stall_after_tokens, last)
        out.stall_ns = round(f.stall_s * _NS)
    return out


async def _respond(
    request: web.Request, plan: Plan, model: ModelConfig, hold: Hold, stream: bool
) -> web.StreamResponse:
    st, ctx = request.app[STATE], request[CTX]
    faults = _draw_faults(st, plan, stream)
    ctx.rec.prompt_tokens = plan.prompt_tokens
    if not stream:
        try:
            await _run_schedule(st, ctx, plan, model, faults, None)
        finally:
            st.ledger.settle(hold, plan.prompt_tokens, plan.completion_tokens)
        ctx.rec.completion_tokens = plan.completion_tokens
        return json_response(full_body(plan), headers=xrid_headers(request))
    return await _stream(request, plan, model, hold, faults)


async def _stream(
    request: web.Request, plan: Plan, model: ModelConfig, hold: Hold, faults: _Faults
) -> web.StreamResponse:
    st, ctx = request.app[STATE], request[CTX]
    resp = web.StreamResponse(
        status=200,
        headers={
            **ctx.headers,
            **xrid_headers(request),
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    sent = 0

    async def write_step(step: int) -> None:
        nonlocal sent
        await resp.write(b"".join(sse(ch) for ch in stream_step(plan, step)))
        n = tokens_at_step(plan, step)
        sent += n
        st.counters.tokens_written += n

    try:
        await resp.prepare(request)
        head = stream_head(plan)
        if head:
            await resp.write(b"".join(sse(ch) for ch in head))
        outcome = await _run_schedule(st, ctx, plan, model, faults, write_step)
        if outcome == "cut":
            ctx.rec.disconnect = "server"
            if request.transport is not None:
                request.transport.abort()
        elif outcome == "error":
            err = E.internal_error("injected fault: error after the stream started")
            ctx.error_code = err.code
            await resp.write(sse(err.body()))
            await resp.write_eof()
        else:
            tail = (sse(stream_usage(plan)) if plan.include_usage else b"") + b"data: [DONE]\n\n"
            await resp.write(tail)
            await resp.write_eof()
    except ConnectionError:
        ctx.rec.disconnect = "client"
    except Exception as e:  # an error after the stream started: one error event, then the end
        log.exception("error inside a stream")
        err = E.internal_error(f"error while streaming: {type(e).__name__}")
        ctx.error_code = err.code
        try:
            await resp.write(sse(err.body()))
            await resp.write_eof()
        except ConnectionError:
            ctx.rec.disconnect = "client"
    finally:
        ctx.finish_ns = time.perf_counter_ns()
        done = plan.completion_tokens if ctx.rec.disconnect is None else sent
        ctx.rec.completion_tokens = done
        st.ledger.settle(hold, plan.prompt_tokens, done)
    return resp


async def _run_schedule(
    st: ServerState,
    ctx: RequestCtx,
    plan: Plan,
    model: ModelConfig,
    faults: _Faults,
    write_step: Callable[[int], Awaitable[None]] | None,
) -> str:
    """Walk the decode steps at absolute deadlines (TTFT from admission, then one ITL per
    step); a stream writes each step and its lateness is measured. Returns "done", "cut"
    (server disconnect due) or "error" (mid-stream error due)."""
    prof = model.latency
    timed = not prof.is_zero
    if write_step is None and not timed and faults.stall_at is None:
        return "done"
    lateness = st.counters.lateness
    st.active[model.id] += plan.sequences
    try:
        start = ctx.rec.admitted_ns or time.perf_counter_ns()
        deadline = start + ttft_ns(prof, plan.prompt_tokens, st.rng)
        for step in range(plan.steps):
            if step:
                deadline += itl_ns(prof, st.active[model.id], st.rng)
            if step == faults.stall_at:
                deadline += faults.stall_ns
            if timed or faults.stall_at is not None:
                delay = deadline - time.perf_counter_ns()
                if delay > 0:
                    await asyncio.sleep(delay / _NS)
            if step == faults.cut_at:
                return "cut"
            if step == faults.error_at:
                return "error"
            if write_step is not None:
                if timed:
                    lateness.add(time.perf_counter_ns() - deadline)
                await write_step(step)
        return "done"
    finally:
        st.active[model.id] -= plan.sequences
