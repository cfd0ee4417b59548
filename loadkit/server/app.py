"""The aiohttp adapter of the reference server: the routes of API.md in one of two path
layouts (``seed``: under ``/api/v1/ai``; ``openai``: under ``/v1``), one middleware that
authenticates, asks the limiter, answers errors as OpenAI error bodies, holds the
concurrency slot until the last byte is written and logs the ground truth."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from loadkit.server import admission
from loadkit.server import errors as E
from loadkit.server.completion_handlers import chat_completions, completions
from loadkit.server.config import ConfigError, ServerConfig, model_from_dict
from loadkit.server.errors import ApiError
from loadkit.server.keys import bearer_token
from loadkit.server.state import CTX, STATE, RequestCtx, ServerState
from loadkit.server.truth import TruthRecord
from loadkit.server.wire import (
    ClientGone,
    error_response,
    json_response,
    read_json,
    xrid_headers,
)

__all__ = ["LAYOUTS", "STATE", "ServerState", "api_root", "base_path", "build_app"]

log = logging.getLogger("loadkit.server")

# layout -> (base path: what a client's base URL ends with, prefix of the API under it)
LAYOUTS: dict[str, tuple[str, str]] = {"seed": ("/api/v1", "/ai"), "openai": ("/v1", "")}
# route name -> (truth endpoint, needs a key)
ROUTES: dict[str, tuple[str, bool]] = {
    "models": ("models", False),
    "model": ("model", False),
    "chat": ("chat", True),
    "completions": ("completions", True),
    "admin": ("admin", True),
    "admin-model": ("admin", True),
    "admin-stats": ("admin", True),
    "admin-stats-reset": ("admin", True),
}
# every method some route answers (the Allow of a method the HTTP parser cannot read)
METHODS = ("DELETE", "GET", "PATCH", "POST")


def base_path(api: str) -> str:
    """The path a base URL of this layout ends with: ``/api/v1`` or ``/v1``."""
    return LAYOUTS[api][0]


def api_root(api: str) -> str:
    """The path an OpenAI client's ``base_url`` points at: ``/api/v1/ai`` or ``/v1``."""
    base, prefix = LAYOUTS[api]
    return base + prefix


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
    resp: web.StreamResponse | None = None
    gone = False
    try:
        try:
            if needs_key:
                key = st.keys.lookup(bearer_token(request.headers.get("Authorization")))
                if key is None:
                    rec.decision = "unauthenticated"
                    c.rejected["unauthenticated"] += 1
                    raise E.unauthorized()
                rec.key, rec.tier = key.label, key.tier
                admission.start(request, key, endpoint)  # the limits decide (429), or wait
            resp = await handler(request)
        except ApiError as e:
            resp = error_response(admission.settle(request, e))
        except web.HTTPException as e:
            resp = _http_exception_response(e)
        except ClientGone:
            # Hung up mid-upload: nothing to answer, and nothing went wrong here.
            admission.settle(request, E.internal_error())
            gone = True
            rec.disconnect = "client"
            resp = web.Response(status=400)
            resp.force_close()
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            resp = error_response(admission.settle(request, E.internal_error()))
        if not resp.prepared:
            resp.headers.update(ctx.headers)
            resp.headers.update(xrid_headers(request))
        if ctx.finish_ns is None:
            if not gone:
                try:
                    await resp.prepare(request)
                    await resp.write_eof()
                    ctx.sent = True
                    if resp.status == 408:  # do not wait (linger) for the rest of a late body
                        request.protocol.force_close()
                except ConnectionError:
                    rec.disconnect = rec.disconnect or "client"
            ctx.finish_ns = time.perf_counter_ns()
    finally:
        rec.finish_ns = ctx.finish_ns if ctx.finish_ns is not None else time.perf_counter_ns()
        admission.release(request, rec.finish_ns)
        # Status and code of what was sent; none for a response that never left.
        if resp is not None and ctx.sent:
            rec.status = resp.status
            rec.error_code = ctx.error_code or getattr(resp, "loadkit_error_code", None)
        st.record(rec)
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
    return json_response({"object": "list", "data": [m.to_api() for m in st.models.values()]})


async def get_model(request: web.Request) -> web.Response:
    st = request.app[STATE]
    mid = request.match_info["model_id"]
    m = st.models.get(mid)
    if m is None:
        raise E.model_not_found(mid)
    return json_response(m.to_api())


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
    body = await read_json(request)
    try:
        m = model_from_dict(body, "")
    except ConfigError as e:
        raise _config_error(e) from None
    if m.id in st.models:
        raise E.invalid("id", f"the model {m.id!r} already exists")
    st.models[m.id] = m
    return json_response(m.to_api(), 201)


async def update_model(request: web.Request) -> web.Response:
    st = _require_admin(request)
    mid = request.match_info["model_id"]
    body = await read_json(request)
    cur = st.models.get(mid)
    if cur is None:
        raise E.model_not_found(mid)
    try:
        m = model_from_dict(body, "", base=cur)
    except ConfigError as e:
        raise _config_error(e) from None
    st.models[mid] = m
    return json_response(m.to_api())


async def delete_model(request: web.Request) -> web.Response:
    st = _require_admin(request)
    mid = request.match_info["model_id"]
    if st.models.pop(mid, None) is None:
        raise E.model_not_found(mid)
    return json_response({"id": mid, "object": "model", "deleted": True})


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
    return json_response(out)


async def admin_stats_reset(request: web.Request) -> web.Response:
    st = _require_admin(request)
    st.counters.reset()
    return json_response({"object": "loadkit.stats", "reset": True})


# --- application ----------------------------------------------------------------------


def build_app(
    config: ServerConfig,
    truth_path: str | Path | None = None,
    state: ServerState | None = None,
) -> web.Application:
    """The aiohttp application in ``config.api``'s layout; ``app[STATE]`` holds the
    keys, limiter and counters."""
    app = web.Application(middlewares=[core_middleware], client_max_size=config.max_body_bytes)
    st = state or ServerState(config, truth_path)
    app[STATE] = st
    app[admission.GATE] = admission.Gate(config)
    r = app.router
    root = api_root(config.api)
    r.add_get(f"{root}/models", list_models, name="models", allow_head=False)
    r.add_get(f"{root}/models/{{model_id}}", get_model, name="model", allow_head=False)
    r.add_post(f"{root}/chat/completions", chat_completions, name="chat")
    r.add_post(f"{root}/completions", completions, name="completions")
    admin = r.add_resource(f"{root}/admin/models", name="admin")
    admin.add_route("POST", create_model)
    one = r.add_resource(f"{root}/admin/models/{{model_id}}", name="admin-model")
    one.add_route("PATCH", update_model)
    one.add_route("DELETE", delete_model)
    r.add_resource(f"{root}/admin/stats", name="admin-stats").add_route("GET", admin_stats)
    r.add_resource(f"{root}/admin/stats/reset", name="admin-stats-reset").add_route(
        "POST", admin_stats_reset
    )

    async def _close(_app: web.Application) -> None:
        st.close()

    app.on_cleanup.append(_close)
    return app
