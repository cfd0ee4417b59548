"""HTTP wire helpers of the reference server: JSON and error responses, rate-limit
headers, SSE framing, reading a JSON body within the size, time and nesting limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from loadkit.durations import format_duration_ms
from loadkit.server.errors import ApiError, invalid
from loadkit.server.limiter import Decision
from loadkit.server.state import STATE
from loadkit.server.validation import parse_json_body

# Bodies up to this size are parsed inline; larger ones take a turn in the work lane.
INLINE_PARSE_BYTES = 65_536


class ClientGone(Exception):
    """The client closed the connection before its request was read: no one to answer."""


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
    if err.status == 408:
        r.force_close()  # the rest of a late body may still be on its way
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


def client_gone(request: web.BaseRequest) -> bool:
    t = request.transport
    return t is None or t.is_closing()


async def read_body(request: web.Request) -> bytes:
    """The raw body, or 413 (too large), 408 (too slow), 415 (compressed), 400
    (malformed framing); ``ClientGone`` when the client hung up while sending it."""
    cfg = request.app[STATE].config
    enc = request.headers.get("Content-Encoding", "").strip().lower()
    if enc not in ("", "identity"):
        raise ApiError(
            415,
            "invalid_parameters",
            f"Content-Encoding {enc!r:.40} is not supported: send the body uncompressed",
        )
    timeout_s = cfg.limits.body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(
            413, "request_too_large", f"the request body exceeds {cfg.max_body_bytes} bytes"
        ) from None
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the request body did not arrive within {timeout_s:g} s (limits.body_timeout_s)",
        ) from None
    except (ConnectionError, RequestPayloadError, HttpProcessingError) as e:
        if client_gone(request):
            raise ClientGone from None
        # The framing is broken (chunk sizes, lengths): say so without quoting its bytes.
        raise invalid(None, f"the request body is malformed ({type(e).__name__})") from None


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request)
    st = request.app[STATE]
    depth = st.config.limits.max_json_depth
    if len(raw) <= INLINE_PARSE_BYTES:
        return parse_json_body(raw, depth)
    return await st.lane.call(parse_json_body, raw, depth)


def xrid_headers(request: web.Request) -> dict[str, str]:
    rid = request.headers.get("x-loadkit-request-id")
    return {"x-request-id": rid} if rid else {}
