"""The typed limit results in summary.json's ``limits``: what each verdict found about a
key's requests-per-window and concurrency promises, with the offered load and the evidence
(``verdicts.py`` and ``promises.py`` compute them; ``docs/verdicts.md`` defines them)."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import ClassVar

from loadkit.analysis.codec import JsonRecord, flatten, omit_none
from loadkit.analysis.outcome import HeaderAgreement, LimitKind, Verdict

Span = tuple[float | None, float | None]


@dataclass(frozen=True)
class Offered(JsonRecord):
    """What the client asked of one key's limiter (a limiter is only caught doing what this
    provoked)."""

    requests: int
    admitted: int
    possibly_admitted: int
    refused_rate_limit: int
    refused_concurrency: int
    refused_other_429: int
    unauthorized: int
    max_in_window: int
    max_in_window_start_s: float | None
    max_in_burst: int
    burst_window_s: float
    max_concurrent: int
    max_concurrent_at_s: float | None
    refused_tokens: int | None = omit_none()  # summary/2: 429s of a token limit


@dataclass(frozen=True)
class RefusalCounts(JsonRecord):
    """A key's 429s by the limit that refused them (the records' ``limit_kind``; loadkit's
    error codes for version-1 records), and the signals that said so (``limit_signal``,
    most common first; "none" for a 429 that named no limit)."""

    requests: int
    concurrency: int
    tokens: int  # judged by neither limit until token limits have verdicts
    unattributed: int  # judged against both limits
    signals: dict[str, int]
    # A model's own request window or concurrency (``model_requests``,
    # ``model_concurrency``): judged per (key, model), never against the key's limits.
    # Absent when there were none (and from summaries written before them).
    models: int | None = omit_none()


@dataclass(frozen=True)
class WindowRefusal(JsonRecord):
    """A rate-limit refusal (or an uncoded 429) that the window count cannot justify."""

    request_id: str
    send_s: float | None
    headers_s: float | None
    max_admitted_in_window: int

    @property
    def bound(self) -> int:
        return self.max_admitted_in_window


@dataclass(frozen=True)
class FlightRefusal(JsonRecord):
    """A concurrency refusal (or an uncoded 429) that the in-flight count cannot justify."""

    request_id: str
    send_s: float | None
    headers_s: float | None
    max_in_flight: int

    @property
    def bound(self) -> int:
        return self.max_in_flight


@dataclass(frozen=True)
class RequestsEnforcedEvidence(JsonRecord):
    certain_span_s: Span | None = omit_none()
    certain_count: int | None = omit_none()
    request_ids: tuple[str, ...] | None = omit_none()
    possible_span_s: Span | None = omit_none()
    possible_request_ids: tuple[str, ...] | None = omit_none()


@dataclass(frozen=True)
class RequestsHonouredEvidence(JsonRecord):
    rate_limit_429s: int
    unjustified_429s: int
    unjustified_examples: tuple[WindowRefusal, ...]
    unjustified_uncoded_429s: int
    unjustified_uncoded_examples: tuple[WindowRefusal, ...]
    offered_max_in_window: int
    under_admission: bool
    admitted_floor: float
    tolerance: float
    refusals: RefusalCounts | None = omit_none()  # summary/2


@dataclass(frozen=True)
class RequestsEvidence(JsonRecord):
    enforced: RequestsEnforcedEvidence
    honoured: RequestsHonouredEvidence


@dataclass(frozen=True)
class ConcurrencyEnforcedEvidence(JsonRecord):
    certain_instant_s: float | None = omit_none()
    request_ids: tuple[str, ...] | None = omit_none()
    possible_instant_s: float | None = omit_none()
    possible_request_ids: tuple[str, ...] | None = omit_none()


@dataclass(frozen=True)
class ConcurrencyHonouredEvidence(JsonRecord):
    concurrency_429s: int
    unjustified_429s: int
    unjustified_examples: tuple[FlightRefusal, ...]
    unjustified_uncoded_429s: int
    unjustified_uncoded_examples: tuple[FlightRefusal, ...]
    offered_max_concurrent: int
    refusals: RefusalCounts | None = omit_none()  # summary/2


@dataclass(frozen=True)
class ConcurrencyEvidence(JsonRecord):
    enforced: ConcurrencyEnforcedEvidence
    honoured: ConcurrencyHonouredEvidence


@dataclass(frozen=True)
class Tolerance(JsonRecord):
    """How finely a limit verdict was decided (summary/2, added): the client's timing
    uncertainty, measured on the key's own requests, and how close the key came to the
    limit. ``docs/verdicts.md``, "Decided at a tolerance", derives both.

    ``margin_s``: for requests, the shortest span that could hold N + 1 admissions minus W;
    for concurrency, minus the longest time C + 1 requests could all have been in flight.
    At 0 or above the limit held whatever the timing; below 0 it may have been exceeded by
    that much, which the verdict accepts (``held``) only within ``timing_uncertainty_s``.
    None when the key never had N + 1 (C + 1) requests that could have been admitted."""

    timing_uncertainty_s: float | None  # None: nothing measured it (no accepted tolerance)
    margin_s: float | None
    basis: str  # which measured intervals the uncertainty comes from
    limitation: str | None = omit_none()  # why this key's traffic cannot decide a bug class


@dataclass(frozen=True, kw_only=True)
class RequestsVerdict(JsonRecord):
    """Requests per window: was the promise enforced and honoured?"""

    kind: LimitKind = field(default=LimitKind.REQUESTS, init=False)
    promised: int
    window_s: float
    observed_max: int  # most admissions certainly inside one window
    observed_max_possible: int  # most the timing uncertainty allows
    enforced: Verdict
    honoured: Verdict
    evidence: RequestsEvidence
    offered: Offered
    tolerance: Tolerance | None = omit_none()  # None in summaries written before it

    @property
    def offered_max(self) -> int:
        """The offered load this limit is compared with: most requests sent in one window."""
        return self.offered.max_in_window


@dataclass(frozen=True, kw_only=True)
class ConcurrencyVerdict(JsonRecord):
    """Requests in flight at once: was the promise enforced and honoured?"""

    kind: LimitKind = field(default=LimitKind.CONCURRENCY, init=False)
    promised: int
    window_s: None = None
    observed_max: int  # most admitted requests certainly in flight at one instant
    observed_max_possible: int
    enforced: Verdict
    honoured: Verdict
    margin_s: float
    evidence: ConcurrencyEvidence
    offered: Offered
    tolerance: Tolerance | None = omit_none()  # None in summaries written before it

    @property
    def offered_max(self) -> int:
        """The offered load this limit is compared with: most requests open at once."""
        return self.offered.max_concurrent


@dataclass(frozen=True)
class RetryAfterExample(JsonRecord):
    refused_id: str
    retry_after_s: float | None
    refused_headers_s: float | None
    followup_id: str
    followup_send_s: float | None


@dataclass(frozen=True)
class RetryAfterCheck(JsonRecord):
    """Was a request sent after the advised Retry-After delay refused again while no other
    request could have taken the freed slot?"""

    rate_limit_429s: int
    missing_retry_after: int
    checked: int
    followups_admitted: int
    followups_refused_slot_taken: int
    broken: int
    examples: tuple[RetryAfterExample, ...]
    verdict: Verdict


@dataclass(frozen=True)
class RemainingExample(JsonRecord):
    request_id: str
    send_s: float | None
    reported_used: int
    lower: int
    upper: int


@dataclass(frozen=True)
class RemainingHeaderCheck(JsonRecord):
    """Do x-ratelimit-limit/remaining agree with the observed admissions (informational)?"""

    checked: int
    verdict: HeaderAgreement
    disagreements: int
    examples: tuple[RemainingExample, ...]
    advertised_limits: dict[str, int]
    limit_mismatches: int


def scoped_kind(kind: LimitKind, model: str | None) -> str:
    """How the run's reasons and tables name a limit: ``requests``, or
    ``models.MODEL.requests`` for a model's own (as the token entries name theirs)."""
    return kind if model is None else f"models.{model}.{kind.value}"


@dataclass(frozen=True)
class RequestsLimit(JsonRecord):
    """One key's requests-per-window entry in ``limits``: the key's promise, or (``model``
    set) a model's own promise, judged on the key's requests to that model."""

    json_tag: ClassVar[tuple[str, str]] = ("kind", LimitKind.REQUESTS.value)

    tier: str
    key: str
    _: KW_ONLY
    model: str | None = omit_none()
    verdict: RequestsVerdict = flatten()
    retry_after: RetryAfterCheck
    # None for a model's entry: x-ratelimit-*-requests describe the key's limit.
    remaining_header: RemainingHeaderCheck | None = omit_none()
    explanation: tuple[str, ...]

    @property
    def kind(self) -> str:
        return scoped_kind(LimitKind.REQUESTS, self.model)


@dataclass(frozen=True)
class ConcurrencyLimit(JsonRecord):
    """One key's concurrency entry in ``limits`` (``model`` set: a model's own promise)."""

    json_tag: ClassVar[tuple[str, str]] = ("kind", LimitKind.CONCURRENCY.value)

    tier: str
    key: str
    _: KW_ONLY
    model: str | None = omit_none()
    verdict: ConcurrencyVerdict = flatten()
    explanation: tuple[str, ...]

    @property
    def kind(self) -> str:
        return scoped_kind(LimitKind.CONCURRENCY, self.model)


Limit = RequestsLimit | ConcurrencyLimit
