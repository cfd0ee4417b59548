"""The aiohttp adapter of the reference server: routes of API.md under ``/api/v1``, one
middleware that authenticates, asks the limiter, answers errors as OpenAI error bodies,
holds the concurrency slot until the last byte is written and logs the ground truth."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from loadkit.durations import format_duration_ms
from loadkit.server import errors as E
from loadkit.server.billing import Hold, Ledger
from loadkit.server.config import ConfigError, ModelConfig, ServerConfig, model_from_dict
from loadkit.server.errors import ApiError
from loadkit.server.keys import AccessKey, KeyStore, bearer_token, resolve_keys
from loadkit.server.latency import itl_ns, ttft_ns
from loadkit.server.limiter import RATE_LIMITED, Decision, Limiter, LimitSpec
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
from loadkit.server.stats import Counters
from loadkit.server.truth import TruthRecord, TruthWriter
from loadkit.server.validation import (
    effective_max_tokens,
    parse_json_body,
    validate_chat,
    validate_completion,
)

log = logging.getLogger("loadkit.server")

BASE = "/api/v1"
# route name -> (truth endpoint, needs a key)
ROUTES: dict[str, tuple[str, bool]] = {
    "models": ("models", False),
    "model": ("model", False),
    "chat": ("chat", True),
    "completions": ("completions", True),
    "admin": ("admin", True),
}
_NS = 1_000_000_000


@dataclass
class RequestCtx:
    rec: TruthRecord
    headers: dict[str, str] = field(default_factory=dict)
    key: AccessKey | None = None
    finish_ns: int | None = None  # set by a stream handler when its last byte went out
    error_code: str | None = None  # an error sent inside a 200 stream


class ServerState:
    """Everything mutable of one running server (one event loop, no locks needed)."""

    def __init__(
        self,
        config: ServerConfig,
        truth_path: str | Path | None = None,
        admin: AccessKey | None = None,
        keys: list[AccessKey] | None = None,
    ) -> None:
        self.config = config
        if admin is None or keys is None:
            admin, keys = resolve_keys(config)
        self.admin = admin
        self.access_keys = keys
        self.keys = KeyStore([admin, *keys])
        self.specs: dict[str, LimitSpec] = {
            admin.label: LimitSpec.of(
                config.admin.requests, config.admin.window_s, config.admin.concurrency
            )
        }
        for k in keys:
            t = config.tier(k.tier)
            self.specs[k.label] = LimitSpec.of(t.requests, t.window_s, t.concurrency)
        lc = config.limiter
        self.limiter = Limiter(lc.mode, lc.burst_factor, lc.under_admit_fraction)
        self.ledger = Ledger(config.billing, {k.label: k.balance for k in keys})
        self.models: dict[str, ModelConfig] = {m.id: m for m in config.models}
        self.truth = TruthWriter(truth_path) if truth_path else None
        self.counters = Counters(config.lateness_samples)
        self.active: Counter[str] = Counter()  # model id -> sequences decoding now
        self.rng = random.Random(config.seed)  # latency jitter
        self.fault_rng = random.Random(config.faults.seed)
        self.started_ns = time.perf_counter_ns()
        self.in_progress = 0  # requests inside the middleware (truth line not yet written)
        self._idle_waiters: list[asyncio.Future[None]] = []

    async def wait_idle(self) -> None:
        """Return once no request is in progress: every truth line so far is written."""
        if self.in_progress:
            fut = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(fut)
            await fut

    def _leave(self) -> None:
        self.in_progress -= 1
        if not self.in_progress:
            waiters, self._idle_waiters = self._idle_waiters, []
            for f in waiters:
                if not f.done():
                    f.set_result(None)

    def close(self) -> None:
        if self.truth is not None:
            self.truth.close()


STATE: web.AppKey[ServerState] = web.AppKey("loadkit_state", ServerState)
CTX = "loadkit_ctx"


# --- helpers --------------------------------------------------------------------------


def _json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(obj, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(err: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    r = _json_response(err.body(), err.status, headers)
    # Carried on the response so the middleware can log the code without reparsing.
    r.loadkit_error_code = err.code  # type: ignore[attr-defined]
    return r


def rate_headers(d: Decision) -> dict[str, str]:
    h = {
        "x-ratelimit-limit-requests": str(d.limit_requests),
        "x-ratelimit-remaining-requests": str(d.remaining_requests),
        "x-ratelimit-reset-requests": format_duration_ms(-(-d.reset_requests_ns // 1_000_000)),
        "x-ratelimit-limit-concurrency": str(d.limit_concurrency),
        "x-ratelimit-remaining-concurrency": str(d.remaining_concurrency),
    }
    if d.retry_after_ns is not None:
        ms = -(-d.retry_after_ns // 1_000_000)  # ceil: a client waiting this long is past it
        h["retry-after-ms"] = str(ms)
        h["retry-after"] = str(-(-ms // 1000))
    return h


async def _read_json(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[STATE].config.max_body_bytes
        raise ApiError(
            413, "request_too_large", f"the request body exceeds {limit} bytes"
        ) from None
    return parse_json_body(raw)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


# --- middleware -----------------------------------------------------------------------


@web.middleware
async def core_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    st = request.app[STATE]
    arrival = time.perf_counter_ns()
    mi = request.match_info
    name = mi.route.name if mi.http_exception is None else None
    endpoint, needs_key = ROUTES.get(name or "", ("other", False))
    rec = TruthRecord(
        request_id=request.headers.get("x-loadkit-request-id"),
        key=None,
        method=request.method,
        path=request.path,
        endpoint=endpoint,
        stream=False,
        arrival_ns=arrival,
    )
    ctx = RequestCtx(rec)
    request[CTX] = ctx
    c = st.counters
    c.seen += 1
    st.in_progress += 1
    held: str | None = None
    resp: web.StreamResponse | None = None
    try:
        try:
            if needs_key:
                key = st.keys.lookup(bearer_token(request.headers.get("Authorization")))
                if key is None:
                    rec.decision = "unauthenticated"
                    c.rejected["unauthenticated"] += 1
                    raise E.unauthorized()
                rec.key, rec.tier = key.label, key.tier
                d = st.limiter.acquire(key.label, st.specs[key.label], time.perf_counter_ns())
                ctx.headers = rate_headers(d)
                if not d.admitted:
                    assert d.reason is not None
                    limited = d.reason == RATE_LIMITED
                    rec.decision = "rate_limited" if limited else "concurrency_limited"
                    c.rejected[d.reason] += 1
                    what = "requests per window" if limited else "concurrent requests"
                    raise ApiError(429, d.reason, f"limit of {what} reached for this key")
                held = key.label
                rec.decision, rec.admitted_ns = "admitted", d.now_ns
                ctx.key = key
                c.admitted += 1
            resp = await handler(request)
        except ApiError as e:
            resp = error_response(e)
        except web.HTTPException as e:
            resp = _http_exception_response(e)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            resp = error_response(E.internal_error())
        if not resp.prepared:
            resp.headers.update(ctx.headers)
            resp.headers.update(_xrid(request))
        if ctx.finish_ns is None:
            try:
                await resp.prepare(request)
                await resp.write_eof()
            except ConnectionError:
                rec.disconnect = rec.disconnect or "client"
            ctx.finish_ns = time.perf_counter_ns()
    finally:
        rec.finish_ns = ctx.finish_ns if ctx.finish_ns is not None else time.perf_counter_ns()
        if held is not None:
            st.limiter.release(held)
        rec.status = resp.status if resp is not None else None
        rec.error_code = ctx.error_code or getattr(resp, "loadkit_error_code", None)
        if rec.status is not None:
            c.status[rec.status] += 1
        if rec.error_code:
            c.errors[rec.error_code] += 1
        if rec.disconnect:
            c.disconnects[rec.disconnect] += 1
        if st.truth is not None:
            st.truth.write(rec)
        st._leave()
    return resp


def _http_exception_response(e: web.HTTPException) -> web.Response:
    if isinstance(e, web.HTTPMethodNotAllowed):
        err = ApiError(405, "method_not_allowed", f"method {e.method} is not allowed here")
        r = error_response(err, {"Allow": ", ".join(sorted(e.allowed_methods))})
    elif isinstance(e, web.HTTPNotFound):
        r = error_response(ApiError(404, "not_found", "no such path"))
    elif isinstance(e, web.HTTPRequestEntityTooLarge):
        r = error_response(ApiError(413, "request_too_large", "the request body is too large"))
    else:
        code = "invalid_parameters" if 400 <= e.status < 500 else "internal_error"
        r = error_response(ApiError(e.status, code, e.reason or "error"))
    return r


# --- model registry -------------------------------------------------------------------


async def list_models(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return _json_response({"object": "list", "data": [m.to_api() for m in st.models.values()]})


async def get_model(request: web.Request) -> web.Response:
    st = request.app[STATE]
    mid = request.match_info["model_id"]
    m = st.models.get(mid)
    if m is None:
        raise E.model_not_found(mid)
    return _json_response(m.to_api())


def _require_admin(request: web.Request) -> ServerState:
    ctx: RequestCtx = request[CTX]
    if ctx.key is None or not ctx.key.admin:
        raise E.forbidden()
    return request.app[STATE]


def _config_error(e: ConfigError) -> ApiError:
    msg = str(e)
    param = msg.split(":", 1)[0] or None
    return E.invalid(param, msg)


async def create_model(request: web.Request) -> web.Response:
    st = _require_admin(request)
    body = await _read_json(request)
    try:
        m = model_from_dict(body, "")
    except ConfigError as e:
        raise _config_error(e) from None
    if m.id in st.models:
        raise E.invalid("id", f"the model {m.id!r} already exists")
    st.models[m.id] = m
    return _json_response(m.to_api(), 201)


async def update_model(request: web.Request) -> web.Response:
    st = _require_admin(request)
    mid = request.match_info["model_id"]
    body = await _read_json(request)
    cur = st.models.get(mid)
    if cur is None:
        raise E.model_not_found(mid)
    try:
        m = model_from_dict(body, "", base=cur)
    except ConfigError as e:
        raise _config_error(e) from None
    st.models[mid] = m
    return _json_response(m.to_api())


async def delete_model(request: web.Request) -> web.Response:
    st = _require_admin(request)
    mid = request.match_info["model_id"]
    if st.models.pop(mid, None) is None:
        raise E.model_not_found(mid)
    return _json_response({"id": mid, "object": "model", "deleted": True})


async def admin_stats(request: web.Request) -> web.Response:
    st = _require_admin(request)
    by_key = {k: n for k, n in st.limiter.in_flight_by_key().items() if n}
    out = {
        "object": "loadkit.stats",
        "now_ns": time.perf_counter_ns(),
        "uptime_s": (time.perf_counter_ns() - st.started_ns) / 1e9,
        "limiter_mode": st.config.limiter.mode,
        **st.counters.snapshot(),
        "in_flight": {"total": sum(by_key.values()), "by_key": by_key},
        "active_sequences": {m: n for m, n in st.active.items() if n},
        "balances": st.ledger.balances(),
        "spent": st.ledger.spent,
    }
    return _json_response(out)


async def admin_stats_reset(request: web.Request) -> web.Response:
    st = _require_admin(request)
    st.counters.reset()
    return _json_response({"object": "loadkit.stats", "reset": True})


# --- generation -----------------------------------------------------------------------


def _model_for(st: ServerState, model_id: str, capability: str) -> ModelConfig:
    m = st.models.get(model_id)
    if m is None:
        raise E.model_not_found(model_id)
    if not getattr(m, capability):
        raise E.model_not_supported(model_id, capability)
    return m


async def chat_completions(request: web.Request) -> web.StreamResponse:
    st, ctx = request.app[STATE], request[CTX]
    body = await _read_json(request)
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
    body = await _read_json(request)
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
        return _json_response(full_body(plan), headers=_xrid(request))
    return await _stream(request, plan, model, hold, faults)


def _xrid(request: web.Request) -> dict[str, str]:
    rid = request.headers.get("x-loadkit-request-id")
    return {"x-request-id": rid} if rid else {}


async def _stream(
    request: web.Request, plan: Plan, model: ModelConfig, hold: Hold, faults: _Faults
) -> web.StreamResponse:
    st, ctx = request.app[STATE], request[CTX]
    resp = web.StreamResponse(
        status=200,
        headers={
            **ctx.headers,
            **_xrid(request),
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        },
    )
    sent = 0

    async def write_step(step: int) -> None:
        nonlocal sent
        await resp.write(b"".join(_sse(ch) for ch in stream_step(plan, step)))
        n = tokens_at_step(plan, step)
        sent += n
        st.counters.tokens_written += n

    try:
        await resp.prepare(request)
        head = stream_head(plan)
        if head:
            await resp.write(b"".join(_sse(ch) for ch in head))
        outcome = await _run_schedule(st, ctx, plan, model, faults, write_step)
        if outcome == "cut":
            ctx.rec.disconnect = "server"
            if request.transport is not None:
                request.transport.abort()
        elif outcome == "error":
            err = E.internal_error("injected fault: error after the stream started")
            ctx.error_code = err.code
            await resp.write(_sse(err.body()))
            await resp.write_eof()
        else:
            tail = (_sse(stream_usage(plan)) if plan.include_usage else b"") + b"data: [DONE]\n\n"
            await resp.write(tail)
            await resp.write_eof()
    except ConnectionError:
        ctx.rec.disconnect = "client"
    except Exception as e:  # an error after the stream started: one error event, then the end
        log.exception("error inside a stream")
        err = E.internal_error(f"error while streaming: {type(e).__name__}")
        ctx.error_code = err.code
        try:
            await resp.write(_sse(err.body()))
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


# --- application ----------------------------------------------------------------------


def build_app(
    config: ServerConfig,
    truth_path: str | Path | None = None,
    state: ServerState | None = None,
) -> web.Application:
    """The aiohttp application; ``app[STATE]`` holds the keys, limiter and counters."""
    app = web.Application(middlewares=[core_middleware], client_max_size=config.max_body_bytes)
    st = state or ServerState(config, truth_path)
    app[STATE] = st
    r = app.router
    r.add_get(f"{BASE}/ai/models", list_models, name="models", allow_head=False)
    r.add_get(f"{BASE}/ai/models/{{model_id}}", get_model, name="model", allow_head=False)
    r.add_post(f"{BASE}/ai/chat/completions", chat_completions, name="chat")
    r.add_post(f"{BASE}/ai/completions", completions, name="completions")
    admin = r.add_resource(f"{BASE}/ai/admin/models", name="admin")
    admin.add_route("POST", create_model)
    one = r.add_resource(f"{BASE}/ai/admin/models/{{model_id}}", name="admin-model")
    one.add_route("PATCH", update_model)
    one.add_route("DELETE", delete_model)
    r.add_resource(f"{BASE}/ai/admin/stats", name="admin-stats").add_route("GET", admin_stats)
    r.add_resource(f"{BASE}/ai/admin/stats/reset", name="admin-stats-reset").add_route(
        "POST", admin_stats_reset
    )

    async def _close(_app: web.Application) -> None:
        st.close()

    app.on_cleanup.append(_close)
    return app


for _n in ("admin-model", "admin-stats", "admin-stats-reset"):
    ROUTES[_n] = ("admin", True)
