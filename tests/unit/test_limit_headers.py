"""Rate-limit headers: requests and tokens counters, OpenAI reset durations, Retry-After as
seconds or an HTTP date, the short content type; garbage is absent, never an error."""

from __future__ import annotations

import pytest

from loadkit.limit_headers import (
    parse_count,
    parse_limit_headers,
    parse_retry_after,
    short_content_type,
)

# An OpenAI 429 as the API sends it (header names from
# https://platform.openai.com/docs/guides/rate-limits#rate-limits-in-headers).
OPENAI_429 = {
    "Date": "Tue, 01 Dec 2026 10:00:00 GMT",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "2000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "0",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "1m30.5s",
    "retry-after": "2",
}


def test_requests_and_tokens_counters_and_resets():
    h = parse_limit_headers(OPENAI_429)
    assert (h.limit_requests, h.remaining_requests) == (10000, 9999)
    assert h.reset_requests_s == pytest.approx(0.006)
    assert (h.limit_tokens, h.remaining_tokens, h.reset_tokens_s) == (2000000, 0, 90.5)
    assert h.retry_after_s == 2.0


def test_header_names_are_case_insensitive():
    h = parse_limit_headers({"X-RateLimit-Reset-Tokens": "6m0s", "RETRY-AFTER": "0.5"})
    assert (h.reset_tokens_s, h.retry_after_s) == (360.0, 0.5)


def test_retry_after_ms_is_preferred():
    assert parse_limit_headers({"retry-after": "2", "retry-after-ms": "1500"}).retry_after_s == 1.5


@pytest.mark.parametrize(
    ("value", "date", "expected"),
    [
        ("3", None, 3.0),
        ("0", None, 0.0),
        # An HTTP date is measured against the response's own Date header...
        ("Tue, 01 Dec 2026 10:00:30 GMT", "Tue, 01 Dec 2026 10:00:00 GMT", 30.0),
        ("Tuesday, 01-Dec-26 10:01:00 GMT", "Tue, 01 Dec 2026 10:00:00 GMT", 60.0),  # RFC 850
        ("Tue Dec  1 10:00:05 2026", "Tue, 01 Dec 2026 10:00:00 GMT", 5.0),  # asctime
        # ...a date already past means "now"...
        ("Tue, 01 Dec 2026 09:59:00 GMT", "Tue, 01 Dec 2026 10:00:00 GMT", 0.0),
        # ...and without a Date header there is no reference but our own clock: absent.
        ("Tue, 01 Dec 2026 10:00:30 GMT", None, None),
        ("Tue, 01 Dec 2026 10:00:30 GMT", "yesterday", None),
        ("soon", "Tue, 01 Dec 2026 10:00:00 GMT", None),
        ("-1", None, None),
        ("nan", None, None),
        ("inf", None, None),
        ("1e999", None, None),
    ],
)
def test_retry_after(value, date, expected):
    assert parse_retry_after(value, date) == expected


def test_retry_after_date_through_the_headers():
    h = parse_limit_headers(
        {"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT", "Date": "Wed, 21 Oct 2015 07:28:00 GMT"}
    )
    assert h.retry_after_s == 10.0


@pytest.mark.parametrize(
    "value", ["many", "1.5", "", " ", "9" * 30, "99999999999999999999", "1" * 100_000]
)
def test_counts_that_are_not_int64_are_absent(value):
    assert parse_count(value) is None


def test_garbage_is_absent_not_an_error():
    h = parse_limit_headers(
        {
            "x-ratelimit-remaining-requests": "many",
            "x-ratelimit-reset-requests": "soon",
            "x-ratelimit-reset-tokens": "9" * 400 + "s",  # would overflow a float
            "x-ratelimit-limit-tokens": "1" * 1_000_000,
            "retry-after-ms": "NaN",
            "retry-after": "Infinity",
        }
    )
    assert h == type(h)()  # every field None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/json", "application/json"),
        ("Application/JSON; charset=utf-8", "application/json"),
        ("text/event-stream;charset=UTF-8", "text/event-stream"),
        ("text/html", "text/html"),
        ("", None),
        (None, None),
        ("x" * 1000, "x" * 100),
    ],
)
def test_short_content_type(value, expected):
    assert short_content_type(value) == expected
