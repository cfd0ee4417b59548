"""Plain-language sentences for each limit verdict, for people who did not run the test
(used by summary.json, the console table and the HTML report)."""

from __future__ import annotations

from loadkit.analysis.limits import (
    ConcurrencyVerdict,
    RemainingHeaderCheck,
    RequestsVerdict,
    RetryAfterCheck,
)
from loadkit.analysis.outcome import HeaderAgreement, Verdict


def _s(x: float | None) -> str:
    return "?" if x is None else f"{x:.3f} s"


def _window(w: float) -> str:
    return f"{w:g} s"


def explain_requests(
    e: RequestsVerdict, ra: RetryAfterCheck | None, rh: RemainingHeaderCheck | None
) -> list[str]:
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
            "violation can be proven (not a failure)."
        )
    elif enf == Verdict.INCONCLUSIVE:
        out.append(
            f"Enforcement not tested: the client never offered more than {n} requests in "
            f"a {_window(w)} span."
        )
    else:
        out.append(
            f"Enforced: at most {e.observed_max_possible} admissions could fall in any "
            f"{_window(w)} span."
        )
    h = e.honoured
    if h == Verdict.VIOLATED:
        parts = []
        if hon.unjustified_429s:
            parts.append(
                f"{hon.unjustified_429s} of {hon.rate_limit_429s} "
                "rate_limit_exceeded refusals came when fewer than "
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
            "Honouring not tested: the offered load never exceeded the limit, and no "
            "refusal was unjustified."
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
            f"flight, {e.observed_max} certainly (not a failure)."
        )
    elif enf == Verdict.INCONCLUSIVE:
        out.append(f"Enforcement not tested: the client never had more than {c} requests open.")
    else:
        out.append(f"Enforced: never more than {e.observed_max_possible} possibly in flight.")
    h = e.honoured
    if h == Verdict.VIOLATED:
        out.append(
            f"NOT HONOURED: {hon.unjustified_429s + hon.unjustified_uncoded_429s} "
            f"concurrency refusals came when fewer than {c} requests could have been in "
            "flight."
        )
    elif h == Verdict.INCONCLUSIVE:
        out.append("Honouring not tested: the client never offered more than the cap.")
    else:
        out.append("Honoured: every concurrency refusal was justified.")
    return out
