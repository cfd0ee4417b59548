"""Plain-language sentences for each limit verdict, for people who did not run the test
(used by summary.json, the console table and the HTML report)."""

from __future__ import annotations

import math

from loadkit.analysis.limits import (
    ConcurrencyVerdict,
    RemainingHeaderCheck,
    RequestsVerdict,
    RetryAfterCheck,
    Tolerance,
)
from loadkit.analysis.outcome import HeaderAgreement, Verdict


def _s(x: float | None) -> str:
    return "?" if x is None else f"{x:.3f} s"


def _window(w: float) -> str:
    return f"{w:g} s"


def duration(x: float | None) -> str:
    """A timing figure as a reader wants it: ms under a second, else seconds."""
    if x is None:
        return "?"
    if abs(x) < 1.0:
        return f"{x * 1000:.3g} ms"
    return f"{x:.3g} s"


def _floor_s(x: float) -> str:
    """A span the statement must not overstate: rounded down to the millisecond."""
    v = math.floor(x * 1000 + 1e-6) / 1000
    return f"{v:.3f}".rstrip("0").rstrip(".") + " s"


def held_requests_text(n: int, w: float, tol: Tolerance | None) -> str:
    """``held: never more than 60 in any 59.95 s span; timing uncertainty 50 ms``: what a
    held requests verdict proves, at the tolerance it was decided at."""
    if tol is None or tol.margin_s is None or tol.margin_s >= 0:
        text = f"held: never more than {n} in any {_window(w)} span, whatever the timing"
    else:
        text = f"held: never more than {n} in any {_floor_s(w + tol.margin_s)} span"
    if tol is not None and tol.timing_uncertainty_s is not None:
        text += f"; timing uncertainty {duration(tol.timing_uncertainty_s)}"
    return text


def held_concurrency_text(c: int, tol: Tolerance | None) -> str:
    """``held: never more than 3 in flight at once; timing uncertainty 200 ms``."""
    if tol is None or tol.margin_s is None or tol.margin_s > 0:
        text = f"held: never more than {c} in flight at once, whatever the timing"
    else:
        text = (
            f"held: never more than {c} in flight at once ({c + 1} could only look open "
            f"together for {duration(-tol.margin_s)})"
        )
    if tol is not None and tol.timing_uncertainty_s is not None:
        text += f"; timing uncertainty {duration(tol.timing_uncertainty_s)}"
    return text


def explain_requests(
    e: RequestsVerdict,
    ra: RetryAfterCheck | None,
    rh: RemainingHeaderCheck | None,
    refusals: str = "rate_limit_exceeded",
) -> list[str]:
    """``refusals``: what the limit's refusals are called (a model's own window:
    ``model_rate_limit_exceeded``)."""
    n, w, off = e.promised, e.window_s, e.offered
    ev, hon = e.evidence.enforced, e.evidence.honoured
    out = [
        f"Promise: at most {n} admitted requests in any {_window(w)} span. The client offered "
        f"up to {off.max_in_window} requests in one {_window(w)} span, "
        f"{off.max_in_burst} within {off.burst_window_s:g} s."
    ]
    enf = e.enforced
    if enf == Verdict.VIOLATED:
        span = ev.certain_span_s or (None, None)
        out.append(
            f"NOT ENFORCED: {e.observed_max} requests were certainly admitted inside "
            f"one span shorter than {_window(w)} (from {_s(span[0])} to {_s(span[1])}); "
            f"the first {n + 1} request ids are listed as evidence."
        )
    elif enf == Verdict.POSSIBLE:
        out.append(
            f"Possibly exceeded: timing uncertainty allows {e.observed_max_possible} "
            f"admissions in one span, but at most {e.observed_max} are certain, so no "
            "violation can be proven (not a failure)." + _requests_beyond(e)
        )
    elif enf == Verdict.INCONCLUSIVE:
        out.append(
            f"Enforcement not tested by this scenario: the client never offered more than "
            f"{n} requests in a {_window(w)} span."
        )
    else:
        out.append("Enforced, " + held_requests_text(n, w, e.tolerance) + "." + _within(e))
    h = e.honoured
    if h == Verdict.VIOLATED:
        parts = []
        if hon.unjustified_429s:
            parts.append(
                f"{hon.unjustified_429s} of {hon.rate_limit_429s} "
                f"{refusals} refusals came when fewer than "
                f"{n} requests could have been admitted in their window"
            )
        if hon.unjustified_uncoded_429s:
            parts.append(
                f"{hon.unjustified_uncoded_429s} uncoded 429s were justified by neither limit"
            )
        if hon.under_admission:
            parts.append(
                f"the load exceeded the limit but at most {e.observed_max_possible} "
                f"requests were admitted in any span (< {hon.admitted_floor:.1f}, "
                f"tolerance {hon.tolerance:.0%})"
            )
        out.append("NOT HONOURED: " + "; ".join(parts) + ".")
    elif h == Verdict.INCONCLUSIVE:
        out.append(
            "Honouring not tested by this scenario: the offered load never exceeded the "
            "limit, and no refusal was unjustified."
        )
    else:
        out.append(
            "Honoured: every rate-limit refusal was justified and the limit was reached "
            "when the load exceeded it."
        )
    if ra:
        if ra.verdict == Verdict.VIOLATED:
            out.append(
                f"Retry-After BROKEN {ra.broken} times: a request sent after the "
                "advised delay was refused again while no other request could have taken "
                "the slot."
            )
        elif ra.verdict == Verdict.HELD:
            out.append(f"Retry-After kept ({ra.checked} refusals followed up).")
    if rh and rh.verdict == HeaderAgreement.DISAGREES:
        out.append(
            f"x-ratelimit-remaining disagrees with the observed count on "
            f"{rh.disagreements} of {rh.checked} responses."
        )
    if rh and rh.limit_mismatches:
        out.append(
            f"x-ratelimit-limit-requests differs from the promised {n} on "
            f"{rh.limit_mismatches} responses ({rh.advertised_limits})."
        )
    return out


def explain_concurrency(e: ConcurrencyVerdict) -> list[str]:
    c, off = e.promised, e.offered
    ev, hon = e.evidence.enforced, e.evidence.honoured
    out = [
        f"Promise: at most {c} admitted requests in flight at once. The client had up to "
        f"{off.max_concurrent} requests open at once."
    ]
    enf = e.enforced
    if enf == Verdict.VIOLATED:
        out.append(
            f"NOT ENFORCED: {e.observed_max} admitted requests were certainly in flight "
            f"at {_s(ev.certain_instant_s)} (between their headers and their end "
            f"minus {e.margin_s * 1000:g} ms)."
        )
    elif enf == Verdict.POSSIBLE:
        out.append(
            f"Possibly exceeded: up to {e.observed_max_possible} may have been in "
            f"flight, {e.observed_max} certainly (not a failure)." + _concurrency_beyond(e)
        )
    elif enf == Verdict.INCONCLUSIVE:
        out.append(
            f"Enforcement not tested by this scenario: the client never had more than {c} "
            "requests open."
        )
    else:
        out.append("Enforced, " + held_concurrency_text(c, e.tolerance) + "." + _within(e))
    tol = e.tolerance
    if tol is not None and tol.limitation and enf != Verdict.VIOLATED:
        out.append(f"This key cannot decide a concurrency overrun: {tol.limitation}.")
    h = e.honoured
    if h == Verdict.VIOLATED:
        out.append(
            f"NOT HONOURED: {hon.unjustified_429s + hon.unjustified_uncoded_429s} "
            f"concurrency refusals came when fewer than {c} requests could have been in "
            "flight."
        )
    elif h == Verdict.INCONCLUSIVE:
        out.append(
            f"Honouring not tested by this scenario: the client never had {c} requests "
            "open at once."
        )
    elif hon.concurrency_429s or hon.offered_max_concurrent > c:
        out.append("Honoured: every concurrency refusal was justified.")
    else:
        out.append(
            f"Honoured: driven at its cap ({c} open at once), the key was never refused "
            "for concurrency."
        )
    return out


def _within(e: RequestsVerdict | ConcurrencyVerdict) -> str:
    """Why a held verdict with a shortfall inside the tolerance is still held."""
    tol = e.tolerance
    if tol is None or tol.margin_s is None or tol.margin_s > 0:
        return ""
    if tol.margin_s == 0 and isinstance(e, RequestsVerdict):
        return ""
    return (
        " Only the timing uncertainty allows more: a correct limiter looks like this, and "
        "any excess would be smaller than it."
    )


def _requests_beyond(e: RequestsVerdict) -> str:
    tol = e.tolerance
    if tol is None or tol.margin_s is None or tol.timing_uncertainty_s is None:
        return ""
    short = duration(-tol.margin_s)
    unc = duration(tol.timing_uncertainty_s)
    if -tol.margin_s <= tol.timing_uncertainty_s:
        return (
            f" The possible excess ({e.promised + 1} within {short} less than the window) "
            f"is within the timing uncertainty ({unc}), but too large a part of the "
            f"{_window(e.window_s)} window for a held verdict."
        )
    return (
        f" {e.promised + 1} could fall in a span {short} shorter than the window: more "
        f"than the timing uncertainty ({unc}) explains."
    )


def _concurrency_beyond(e: ConcurrencyVerdict) -> str:
    tol = e.tolerance
    if tol is None or tol.margin_s is None or tol.limitation:
        return ""
    unc = duration(tol.timing_uncertainty_s)
    return (
        f" {e.promised + 1} could have been open together for {duration(-tol.margin_s)}, "
        f"more than the timing uncertainty ({unc}) explains."
    )
