"""HTTP wire helpers of the reference server: JSON and error responses, rate-limit
headers, SSE framing, reading a JSON body within the size limit."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from loadkit.durations import format_duration_ms
from loadkit.server.errors import ApiError
from loadkit.server.limiter import Decision
from loadkit.server.state import STATE
from loadkit.server.validation import parse_json_body


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(obj, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(err: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    r = json_response(err.body(), err.status, headers)
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


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[STATE].config.max_body_bytes
        raise ApiError(
            413, "request_too_large", f"the request body exceeds {limit} bytes"
        ) from None
    return parse_json_body(raw)


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def xrid_headers(request: web.Request) -> dict[str, str]:
    rid = request.headers.get("x-loadkit-request-id")
    return {"x-request-id": rid} if rid else {}
