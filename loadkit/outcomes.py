"""What one response says about the target's limiter, decided once for the engines (back off,
stop a run whose target fails everything) and for analysis (which requests are evidence).

A request is *admitted* only when the answer shows the limiter let it through: a 2xx, or the
API's own JSON error for a request it had admitted (``model_not_found``, a 400, 402, 403,
an injected 500). A 404 without the API's error body (a wrong route), 405, 501, an HTML
error page of a proxy, or no response at all say nothing about the limiter. Pure.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from loadkit import records as R


class Outcome(enum.Enum):
    OK = "ok"  # 2xx
    API_ERROR = "api_error"  # the API's own JSON error, after the limiter admitted it
    LIMITED = "limited"  # 429
    AUTH = "auth"  # 401 (or a 403 that is not the API's error): the key was not accepted
    NOT_API = "not_api"  # a wrong route, 405/501, a non-JSON error page: not the API
    NO_RESPONSE = "no_response"  # a transport failure before any status
    CANCELLED = "cancelled"  # the run stopped while it was open or queued: not the target's doing


#: Outcomes that say the limiter let the request through.
ADMITTED = frozenset({Outcome.OK, Outcome.API_ERROR})
#: Outcomes that are evidence about the limiter, either way.
EVIDENCE = frozenset({Outcome.OK, Outcome.API_ERROR, Outcome.LIMITED})
#: Outcomes that mean the target (or the way loadkit addresses it) is not usable.
UNUSABLE = frozenset({Outcome.AUTH, Outcome.NOT_API, Outcome.NO_RESPONSE})


#: Error codes of a 404 that says "no such model" (the request reached the API).
MODEL_NOT_FOUND = frozenset({"model_not_found"})

# Queued behind a client-side cap when the run stopped: never sent (loadkit.records).
_NOT_SENT = "not_sent"


def is_json(content_type: str | None) -> bool:
    return content_type is None or "json" in content_type


def classify(
    status: int,
    error_code: str | None,
    content_type: str | None,
    transport_error: str | None,
) -> Outcome:
    """The outcome of one request. ``content_type`` None (a version-1 record) is trusted to
    be the API's: then only the error code tells an API error from a page."""
    if status == 0:
        if transport_error in (R.CANCELLED, _NOT_SENT):
            return Outcome.CANCELLED
        return Outcome.NO_RESPONSE
    if 200 <= status < 300:
        return Outcome.OK
    if status == 429:
        return Outcome.LIMITED
    api_error = error_code is not None and is_json(content_type)
    if status == 401:
        return Outcome.AUTH
    if status == 403:
        return Outcome.API_ERROR if api_error else Outcome.AUTH
    if status == 404:
        # The API answers an unknown model with its own error after admitting the request;
        # any other 404 (a JSON "not found" included) is a route the target does not have.
        return Outcome.API_ERROR if api_error and error_code in MODEL_NOT_FOUND else Outcome.NOT_API
    if status in (405, 501) or not api_error:
        return Outcome.NOT_API
    return Outcome.API_ERROR


def describe_status(status: int) -> str:
    """``404 Not Found``; ``no response`` for 0."""
    if status == 0:
        return "no response"
    from http import HTTPStatus

    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


# ---------------------------------------------------------------------------------------
# Closed-loop backoff


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a closed-loop user pauses after a request. After a 429: the advertised
    Retry-After (capped), else ``limited_s``; after any other failure (a non-2xx or no
    response): ``base_s`` doubling with each consecutive failure up to ``max_s``. Without
    these a refused user spins thousands of requests per second at the target."""

    limited_s: float | None = None  # a fixed pause after a 429 (None: Retry-After)
    retry_after_cap_s: float = 5.0
    retry_after_default_s: float = 1.0
    base_s: float = 1.0
    max_s: float = 10.0

    def pause(
        self,
        think_s: float,
        status: int,
        retry_after_s: float | None,
        transport_error: str | None,
        failures: int,
    ) -> float:
        """``failures``: consecutive failed requests of this user, this one included (0
        when this one succeeded)."""
        pause = think_s
        if status == 429:
            if self.limited_s is not None:
                wait = self.limited_s
            elif retry_after_s is not None:
                wait = min(self.retry_after_cap_s, retry_after_s)
            else:
                wait = self.retry_after_default_s
            return max(pause, wait)
        if transport_error == R.CANCELLED:
            return pause
        if failures > 0 and not 200 <= status < 300:
            wait = min(self.max_s, self.base_s * 2.0 ** min(failures - 1, 30))
            pause = max(pause, wait)
        return pause


# ---------------------------------------------------------------------------------------
# A target that fails everything


@dataclass
class FailureWatch:
    """Watches finished requests and says when a run should stop because its target fails
    everything: ``threshold`` consecutive requests (over at least ``min_span_s``) whose
    outcome is unusable (auth refused, not the API, no response). Open-loop arrivals keep
    their schedule until then; this stops the hammering, not the measurement."""

    threshold: int = 50
    min_span_s: float = 2.0
    run: int = 0
    first_s: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)

    def observe(self, outcome: Outcome, status: int, transport_error: str | None, t: float) -> bool:
        """Record one finished request (``t`` its end time); True when the run should stop."""
        if outcome is Outcome.CANCELLED:
            return False
        if outcome not in UNUSABLE:
            if self.run:  # (once per request: nothing to clear after a usable answer)
                self.run = 0
                self.statuses.clear()
                self.kinds.clear()
            return False
        if self.run == 0:
            self.first_s = t
        self.run += 1
        self.statuses[status] += 1
        if status == 0 and transport_error:
            self.kinds[transport_error] += 1
        return self.run >= self.threshold and t - self.first_s >= self.min_span_s

    def reason(self) -> str:
        """``target failing: the last 50 requests all failed (404 Not Found ×50)``."""
        parts = []
        for status, n in self.statuses.most_common(3):
            what = describe_status(status)
            if status == 0 and self.kinds:
                what = "no response (" + ", ".join(k for k, _ in self.kinds.most_common(2)) + ")"
            parts.append(f"{what} ×{n}")
        return f"target failing: the last {self.run} requests all failed ({', '.join(parts)})"
