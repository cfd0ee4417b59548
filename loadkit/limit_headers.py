"""What a response's headers say about rate limits: OpenAI-style ``x-ratelimit-*`` for
requests and tokens, ``retry-after(-ms)`` as seconds or an HTTP date, and the short content
type. Pure: an HTTP-date ``retry-after`` is measured against the response's own ``Date``
header, never against a clock read here. A value that does not parse is absent, never an
error: a hostile or sloppy server must not fail the request's record."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from loadkit.durations import parse_duration

__all__ = [
    "LimitHeaders",
    "header_getter",
    "limit_headers_from",
    "parse_count",
    "parse_limit_headers",
    "parse_retry_after",
    "short_content_type",
]

# Longer values are not numbers, durations or dates any server sends: skip them unparsed so
# a megabyte header costs nothing.
_MAX_VALUE = 64
_INT64 = 2**63  # what the record's Arrow columns hold


@dataclass(frozen=True, slots=True)
class LimitHeaders:
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None


def header_getter(headers: Mapping[str, str]) -> Callable[[str], str | None]:
    """A case-insensitive ``get`` for lower-case names. aiohttp's CIMultiDictProxy and
    requests' CaseInsensitiveDict already are; a plain dict is lower-cased once."""
    if hasattr(headers, "getall") or type(headers).__name__ == "CaseInsensitiveDict":
        return headers.get
    return {k.lower(): v for k, v in headers.items()}.get


def parse_limit_headers(headers: Mapping[str, str]) -> LimitHeaders:
    """Read ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` and ``retry-after-ms``
    (preferred when sent) or ``retry-after``; header names case-insensitive."""
    return limit_headers_from(header_getter(headers))


_NO_LIMIT_HEADERS = LimitHeaders()


def limit_headers_from(get: Callable[[str], str | None]) -> LimitHeaders:
    """The same from a ``get`` of lower-case names (see :func:`header_getter`)."""
    lr, rr, sr = (
        get("x-ratelimit-limit-requests"),
        get("x-ratelimit-remaining-requests"),
        get("x-ratelimit-reset-requests"),
    )
    lt, rt, st = (
        get("x-ratelimit-limit-tokens"),
        get("x-ratelimit-remaining-tokens"),
        get("x-ratelimit-reset-tokens"),
    )
    ra_ms, ra = get("retry-after-ms"), get("retry-after")
    if lr is rr is sr is lt is rt is st is ra_ms is ra is None:
        return _NO_LIMIT_HEADERS  # the common answer of a server without limit headers
    ms = _seconds(ra_ms)
    retry = ms / 1000.0 if ms is not None else parse_retry_after(ra, get("date"))
    return LimitHeaders(
        limit_requests=parse_count(lr),
        remaining_requests=parse_count(rr),
        reset_requests_s=_duration(sr),
        limit_tokens=parse_count(lt),
        remaining_tokens=parse_count(rt),
        reset_tokens_s=_duration(st),
        retry_after_s=retry,
    )


def parse_retry_after(value: str | None, date: str | None = None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds, or an HTTP date taken relative to
    the response's ``Date`` header (RFC 9110 §10.2.3). An HTTP date without a ``Date``
    header is None: the only other reference would be this machine's clock, which is not
    the server's. A date already past is 0."""
    secs = _seconds(value)
    if secs is not None or value is None or date is None:
        return secs
    when, now = _http_date(value), _http_date(date)
    if when is None or now is None:
        return None
    return max(0.0, (when - now).total_seconds())


def parse_count(value: str | None) -> int | None:
    """An integer header (limits, remaining counts), within the record's int64 columns."""
    if value is None or len(value) > _MAX_VALUE:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        return None
    return n if -_INT64 <= n < _INT64 else None


def short_content_type(value: str | None) -> str | None:
    """``application/json; charset=utf-8`` -> ``application/json``: the media type only,
    lower case, at most 100 characters."""
    if value is None:
        return None
    media = value.split(";", 1)[0].strip().lower()
    return media[:100] or None


def _seconds(value: str | None) -> float | None:
    if value is None or len(value) > _MAX_VALUE:
        return None
    try:
        v = float(value.strip())
    except ValueError:
        return None
    return v if math.isfinite(v) and v >= 0 else None


def _duration(value: str | None) -> float | None:
    if not value or len(value) > _MAX_VALUE:
        return None
    try:
        return parse_duration(value)
    except ValueError:
        return None


def _http_date(value: str) -> datetime | None:
    if len(value) > _MAX_VALUE:
        return None
    try:
        d = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # A date without a zone is UTC by RFC 9110; make both sides comparable.
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d
