"""Which answers are evidence about the limiter, the closed-loop backoff, and the watch that
stops a run whose target fails everything."""

from __future__ import annotations

import pytest

from loadkit.outcomes import ADMITTED, Backoff, FailureWatch, Outcome, classify


@pytest.mark.parametrize(
    ("status", "code", "ctype", "transport", "outcome"),
    [
        (200, None, "text/event-stream", None, Outcome.OK),
        (200, None, "application/json", "incomplete_stream", Outcome.OK),
        (429, "rate_limit_exceeded", "application/json", None, Outcome.LIMITED),
        (429, None, "text/html", None, Outcome.LIMITED),
        (401, "unauthorized", "application/json", None, Outcome.AUTH),
        (403, "forbidden", "application/json", None, Outcome.API_ERROR),  # the seed's role check
        (403, None, "text/html", None, Outcome.AUTH),  # a gateway's page
        (404, "model_not_found", "application/json", None, Outcome.API_ERROR),
        (404, None, "text/html", None, Outcome.NOT_API),  # a wrong route
        (404, None, "application/json", None, Outcome.NOT_API),  # {"detail": "Not Found"}
        (404, "not_found", "application/json", None, Outcome.NOT_API),  # an API's unknown path
        (405, "method_not_allowed", "application/json", None, Outcome.NOT_API),
        (501, None, "text/plain", None, Outcome.NOT_API),
        (502, None, "text/html", None, Outcome.NOT_API),  # a proxy with no upstream
        (500, "internal_error", "application/json", None, Outcome.API_ERROR),  # injected fault
        (400, "invalid_parameters", "application/json", None, Outcome.API_ERROR),
        (400, "invalid_parameters", None, None, Outcome.API_ERROR),  # a v1 record
        (0, None, None, "refused", Outcome.NO_RESPONSE),
        (0, None, None, "timeout", Outcome.NO_RESPONSE),
        (0, None, None, "cancelled", Outcome.CANCELLED),
        (0, None, None, "not_sent", Outcome.CANCELLED),
    ],
)
def test_classify(status, code, ctype, transport, outcome):
    assert classify(status, code, ctype, transport) is outcome


def test_admitted_means_the_limiter_let_it_through():
    assert {Outcome.OK, Outcome.API_ERROR} == ADMITTED


def test_backoff_doubles_to_a_cap_and_resets():
    b = Backoff()
    pauses = [b.pause(0.0, 404, None, None, n) for n in range(1, 8)]
    assert pauses == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert b.pause(0.0, 200, None, None, 0) == 0.0
    assert b.pause(0.25, 200, None, None, 0) == 0.25  # think time
    assert b.pause(0.0, 0, None, "refused", 3) == 4.0
    assert b.pause(0.0, 0, None, "cancelled", 3) == 0.0
    # A 429 keeps the limit probes pressing: Retry-After, not a growing backoff.
    assert b.pause(0.0, 429, 2.5, None, 9) == 2.5
    assert b.pause(0.0, 429, 60.0, None, 9) == 5.0
    assert b.pause(0.0, 429, None, None, 9) == 1.0
    assert Backoff(limited_s=0.1).pause(0.0, 429, 30.0, None, 1) == 0.1


def test_failure_watch_stops_a_target_that_fails_everything():
    w = FailureWatch(threshold=5, min_span_s=1.0)
    assert not any(w.observe(Outcome.NOT_API, 404, None, t * 0.1) for t in range(4))
    # Threshold reached but within 1 s: not yet.
    assert not w.observe(Outcome.NOT_API, 404, None, 0.4)
    assert w.observe(Outcome.NOT_API, 404, None, 1.2)
    assert w.reason() == "target failing: the last 6 requests all failed (404 Not Found ×6)"


def test_failure_watch_resets_on_evidence_and_ignores_cancelled():
    w = FailureWatch(threshold=3, min_span_s=0.0)
    w.observe(Outcome.AUTH, 401, None, 0.0)
    w.observe(Outcome.AUTH, 401, None, 0.1)
    w.observe(Outcome.LIMITED, 429, None, 0.2)  # the limiter answered: the target works
    assert not w.observe(Outcome.NO_RESPONSE, 0, "refused", 0.3)
    assert not w.observe(Outcome.CANCELLED, 0, "cancelled", 0.4)
    assert not w.observe(Outcome.NO_RESPONSE, 0, "refused", 0.5)
    assert w.observe(Outcome.NO_RESPONSE, 0, "refused", 0.6)
    assert "no response (refused) ×3" in w.reason()
