"""The chat and completions handlers: validate within the limits, check the model and
the balance, then deliver on the model's latency schedule (absolute token deadlines,
measured write lateness), streaming or not, with the injected faults.

Heavy work (parsing a large body, planning many tokens, encoding a large body, a stream
step over many choices) runs in the server's work lane, a slice at a time. The truth log
and the bill count the tokens handed to the operating system, not the tokens planned."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web

from loadkit.server import errors as E
from loadkit.server.admission import admit_asking
from loadkit.server.billing import Hold
from loadkit.server.config import ModelConfig
from loadkit.server.latency import fixed_itl_ns, itl_ns, ttft_ns
from loadkit.server.limits import check_output
from loadkit.server.pacer import pacer
from loadkit.server.responses import (
    LiveStream,
    Plan,
    body_work,
    live_chat,
    live_completion,
    plan_chat_work,
    plan_completion_work,
    sse,
)
from loadkit.server.state import CTX, STATE, RequestCtx, ServerState
from loadkit.server.stream_pump import DONE, Pump
from loadkit.server.token_limiter import Ask
from loadkit.server.validation import (
    effective_max_tokens,
    parse_json_body,
    validate_chat,
    validate_completion,
)
from loadkit.server.wire import INLINE_PARSE_BYTES, client_gone, read_body, xrid_headers
from loadkit.server.work import Work, drive

log = logging.getLogger("loadkit.server")

T = TypeVar("T")

_NS = 1_000_000_000
# Work of at most this many token renders runs inline; more takes turns in the lane.
INLINE_UNITS = 16
# A cut waits at most this long for written bytes to leave the server before aborting.
CUT_FLUSH_S = 1.0


def _model_for(st: ServerState, model_id: str, capability: str) -> ModelConfig:
    m = st.models.get(model_id)
    if m is None:
        raise E.model_not_found(model_id)
    if not getattr(m, capability):
        raise E.model_not_supported(model_id, capability)
    return m


async def _read_request(request: web.Request, validate: Callable[..., T]) -> T:
    """Parse and validate the body: inline when small, in the lane when large."""
    st, ctx = request.app[STATE], request[CTX]
    raw = await read_body(request)
    cfg = st.config

    def work() -> T:
        body = parse_json_body(raw, cfg.limits.max_json_depth)
        ctx.rec.stream = body.get("stream") is True
        return validate(body, cfg.max_choices, st.prompt_cap, cfg.limits.max_stop_chars)

    if len(raw) <= INLINE_PARSE_BYTES:
        return work()
    return await st.lane.call(work)


async def _run(st: ServerState, work: Work[T], units: int) -> T:
    return drive(work) if units <= INLINE_UNITS else await st.lane.run(work)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    st, ctx = request.app[STATE], request[CTX]
    req = await _read_request(request, validate_chat)
    s = req.sampling
    ctx.rec.model = s.model
    model = _model_for(st, s.model, "chat")
    max_tokens = effective_max_tokens(
        s.max_tokens,
        st.config.default_chat_max_tokens,
        req.prompt_tokens,
        model.context_length,
        "messages",
        req.prompt_capped,
    )
    top_k = req.top_logprobs if req.logprobs else None
    check_output(st.config.limits, s.n, max_tokens, top_k)
    admit_asking(request, Ask(req.prompt_tokens, max_tokens * s.n, s.model))
    _maybe_fail(st)
    faults = _draw_faults(st, s.stream)
    assert ctx.key is not None
    hold = st.ledger.hold(ctx.key.label, req.prompt_tokens, max_tokens * s.n)
    created = int(time.time())
    if s.stream:
        live = live_chat(req, max_tokens, st.config.seed, created)
        return await _stream(request, live, model, hold, faults)
    work = plan_chat_work(req, max_tokens, st.config.seed, created)
    return await _respond(request, work, s.n * max_tokens * (1 + (top_k or 0)), model, hold, faults)


async def completions(request: web.Request) -> web.StreamResponse:
    st, ctx = request.app[STATE], request[CTX]
    req = await _read_request(request, validate_completion)
    s = req.sampling
    ctx.rec.model = s.model
    model = _model_for(st, s.model, "completion")
    longest = max(p.tokens for p in req.prompts)
    max_tokens = effective_max_tokens(
        s.max_tokens,
        st.config.default_completion_max_tokens,
        longest,
        model.context_length,
        "prompt",
        req.prompt_capped,
    )
    sequences = req.best_of * len(req.prompts)
    echoed = req.prompt_tokens * s.n if req.echo and req.logprobs is not None else 0
    check_output(st.config.limits, sequences, max_tokens, req.logprobs, echoed, "prompts x best_of")
    admit_asking(request, Ask(req.prompt_tokens, max_tokens * sequences, s.model))
    _maybe_fail(st)
    faults = _draw_faults(st, s.stream)
    assert ctx.key is not None
    hold = st.ledger.hold(ctx.key.label, req.prompt_tokens, max_tokens * sequences)
    created = int(time.time())
    if s.stream:
        live = live_completion(req, max_tokens, st.config.seed, created)
        return await _stream(request, live, model, hold, faults)
    work = plan_completion_work(req, max_tokens, st.config.seed, created)
    units = sequences * max_tokens * (1 + (req.logprobs or 0))
    return await _respond(request, work, units, model, hold, faults)


def _maybe_fail(st: ServerState) -> None:
    f = st.config.faults
    if f.error_rate and st.fault_rng.random() < f.error_rate:
        raise E.internal_error("injected fault: internal error")


@dataclass(frozen=True)
class _Faults:
    """Steps before which a fault fires; a stream shorter than that meets it before its
    last step, so a fault drawn always shows."""

    cut_after: int | None = None  # the server closes the connection
    error_after: int | None = None  # an error event ends the stream
    stall_after: int | None = None  # the schedule pauses stall_ns
    stall_ns: int = 0

    @staticmethod
    def due(after: int | None, step: int, last: bool) -> bool:
        return after is not None and (step == after or (last and step < after))


def _draw_faults(st: ServerState, stream: bool) -> _Faults:
    f, rng = st.config.faults, st.fault_rng
    cut = err = stall = None
    if stream and f.disconnect_rate and rng.random() < f.disconnect_rate:
        cut = f.disconnect_after_tokens
    if stream and f.midstream_error_rate and rng.random() < f.midstream_error_rate:
        err = f.midstream_error_after_tokens
    if f.stall_rate and rng.random() < f.stall_rate:
        stall = f.stall_after_tokens
    return _Faults(cut, err, stall, round(f.stall_s * _NS))


async def _respond(
    request: web.Request, work: Work[Plan], units: int, model: ModelConfig, hold: Hold, f: _Faults
) -> web.StreamResponse:
    st, ctx = request.app[STATE], request[CTX]
    delivered = 0
    prompt_tokens = 0
    try:
        plan = await _run(st, work, units)
        prompt_tokens = ctx.rec.prompt_tokens = plan.prompt_tokens
        await _wait_schedule(st, ctx, plan, model, f)
        body = await _run(st, body_work(plan), units)
        resp = web.Response(
            body=body,
            content_type="application/json",
            headers={**ctx.headers, **xrid_headers(request)},
        )
        try:
            await resp.prepare(request)
            await resp.write_eof()
            ctx.sent = True
            delivered = plan.completion_tokens
        except ConnectionError:
            ctx.rec.disconnect = "client"
        ctx.finish_ns = time.perf_counter_ns()
    finally:
        ctx.rec.completion_tokens = delivered
        st.ledger.settle(hold, prompt_tokens, delivered)
    return resp


async def _wait_schedule(
    st: ServerState, ctx: RequestCtx, plan: Plan, model: ModelConfig, f: _Faults
) -> None:
    """Wait until a non-stream's last token is due (the same deadlines a stream keeps)."""
    prof = model.latency
    if prof.is_zero and f.stall_after is None:
        return
    st.active[model.id] += plan.sequences
    try:
        deadline = (ctx.rec.admitted_ns or time.perf_counter_ns()) + ttft_ns(
            prof, plan.prompt_tokens, st.rng
        )
        for step in range(plan.steps):
            if step:
                deadline += itl_ns(prof, st.active[model.id], st.rng)
            if f.due(f.stall_after, step, step == plan.steps - 1):
                deadline += f.stall_ns
            if deadline > time.perf_counter_ns():
                await pacer().sleep_until(deadline)  # never early, on uvloop too
            elif step % 256 == 255:
                await asyncio.sleep(0)  # running late: still let others in
    finally:
        st.active[model.id] -= plan.sequences


async def _stream(
    request: web.Request, live: LiveStream, model: ModelConfig, hold: Hold, f: _Faults
) -> web.StreamResponse:
    st, ctx = request.app[STATE], request[CTX]
    ctx.rec.prompt_tokens = live.prompt_tokens
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
    writer = request.writer
    # (bytes handed to the transport, tokens in them so far) after each write: what a cut
    # counts as delivered
    marks: list[tuple[int, int]] | None = [] if f.cut_after is not None else None
    written = 0  # tokens handed to the transport

    async def write(data: bytes, tokens: int = 0) -> None:
        nonlocal written
        await resp.write(data)
        ctx.sent = True
        written += tokens
        if marks is not None:
            marks.append((writer.output_size, written))

    prof = model.latency
    timed = not prof.is_zero
    step_units = len(live.choices) * (1 + (live.logprobs or 0))
    inline = step_units <= INLINE_UNITS
    faulty = f.cut_after is not None or f.error_after is not None or f.stall_after is not None
    fixed_itl = fixed_itl_ns(prof)

    def next_itl() -> int:
        if fixed_itl is not None:
            return fixed_itl
        return itl_ns(prof, st.active[model.id], st.rng)

    def on_written(tokens: int) -> None:
        nonlocal written
        ctx.sent = True
        written += tokens
        st.counters.tokens_written += tokens

    # The common stream goes to the pacer-driven pump once its first write is out.
    pumped = timed and inline and not faulty
    lateness = st.counters.lateness
    clock = time.perf_counter_ns
    st.active[model.id] += live.sequences
    delivered: int | None = None
    try:
        await resp.prepare(request)
        head = live.head()
        if head:
            await write(b"".join(sse(ch) for ch in head))
        outcome = "done"
        deadline = (ctx.rec.admitted_ns or clock()) + ttft_ns(prof, live.prompt_tokens, st.rng)
        while not live.done:
            step = live.step
            if step and pumped:
                await _pump(request, live, deadline + next_itl(), next_itl, on_written)
                break
            # whether this step is the last: only a fault due "by the last step" asks
            last = faulty and await _run(st, live.next_is_last_work(), step_units)
            if step:
                deadline += next_itl()
            if faulty and f.due(f.stall_after, step, last):
                deadline += f.stall_ns
            if (timed or f.stall_after is not None) and deadline > clock():
                await pacer().sleep_until(deadline)  # a loop timer may wake it early
            else:
                # Late (or untimed): still one step per pass of the event loop. aiohttp's
                # write returns without yielding until the socket pushes back, so a late
                # stream would write all it owes in one go, and a server behind schedule
                # would stop reading its sockets (new requests, admin stats) until every
                # stream had caught up.
                await asyncio.sleep(0)
            if faulty:
                if f.due(f.cut_after, step, last):
                    outcome = "cut"
                    break
                if f.due(f.error_after, step, last):
                    outcome = "error"
                    break
            if inline:
                data, n = live.step_bytes()
            else:
                data, n = await st.lane.run(live.step_work())
            if timed:
                lateness.add(clock() - deadline)
            await write(data, n)
            st.counters.tokens_written += n
        if outcome == "cut":
            if client_gone(request):
                ctx.rec.disconnect = "client"
            else:
                assert marks is not None
                delivered = await _flushed_tokens(request, marks)
                ctx.rec.disconnect = "server"
                assert request.transport is not None
                request.transport.abort()
        elif outcome == "error":
            err = E.internal_error("injected fault: error after the stream started")
            ctx.error_code = err.code
            await write(sse(err.body()))
            await resp.write_eof()
        else:
            tail = (sse(live.usage_chunk()) if live.include_usage else b"") + b"data: [DONE]\n\n"
            await write(tail)
            await resp.write_eof()
    except ConnectionError:
        ctx.rec.disconnect = "client"
    except Exception as e:  # a bug after the stream started: one error event, then the end
        log.exception("error inside a stream")
        err = E.internal_error(f"error while streaming: {type(e).__name__}")
        ctx.error_code = err.code
        try:
            await resp.write(sse(err.body()))
            await resp.write_eof()
        except ConnectionError:
            ctx.rec.disconnect = "client"
    finally:
        st.active[model.id] -= live.sequences
        ctx.finish_ns = time.perf_counter_ns()
        done = written if delivered is None else delivered
        ctx.rec.completion_tokens = done
        st.ledger.settle(hold, live.prompt_tokens, done)
    return resp


async def _pump(
    request: web.Request,
    live: LiveStream,
    deadline: int,
    next_itl: Callable[[], int],
    on_written: Callable[[int], None],
) -> None:
    """The rest of the stream from the pump, draining whenever the socket pushes back."""
    lateness = request.app[STATE].counters.lateness
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        pump = Pump(live, transport, request.writer, deadline, next_itl, lateness, on_written)
        if await pump.run() == DONE:
            return
        deadline = pump.deadline
        await request.writer.drain()


async def _flushed_tokens(request: web.Request, marks: list[tuple[int, int]]) -> int:
    """Before a cut: let written bytes leave the server (bounded wait), then count the
    tokens in the bytes that did; an abort drops whatever is still buffered."""
    t = request.transport
    assert t is not None
    if t.get_write_buffer_size():
        t.set_write_buffer_limits(high=0)  # drain() now waits for an empty buffer
        try:
            async with asyncio.timeout(CUT_FLUSH_S):
                await request.writer.drain()
        except TimeoutError:
            pass
    sent = request.writer.output_size - t.get_write_buffer_size()
    return max((tok for end, tok in marks if end <= sent), default=0)
