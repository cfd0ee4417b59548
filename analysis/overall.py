"""The run's overall verdict, its one-line headline and its reasons, from the limit
verdicts, the SLO checks, each key's answers and what is missing from the records.

``error`` (a key's answers are not evidence) beats ``incomplete`` (records are missing),
which beats ``fail`` / ``pass`` / ``inconclusive`` decided on what was recorded; the
verdicts of the keys that could be judged are kept and listed either way."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from loadkit.analysis.completeness import Completeness
from loadkit.analysis.limits import Limit, RequestsLimit
from loadkit.analysis.outcome import Effect, RunVerdict, Verdict
from loadkit.analysis.slo import SloResult
from loadkit.analysis.token_verdicts import TokenLimit, token_reasons
from loadkit.analysis.token_verdicts import fails as token_fails
from loadkit.analysis.usability import KeyAnswers


@dataclass(frozen=True)
class RunOutcome:
    verdict: RunVerdict
    headline: str
    reasons: tuple[str, ...]


UNTESTED = "not tested by this scenario (the load never provoked them):"


def _limit_reasons(e: Limit, fails: list[str], doubts: list[str], untested: list[str]) -> int:
    """Adds the entry's failures, doubts and untested verdicts; returns how many of its
    verdicts held."""
    who = f"{e.key} {e.kind}"
    held = 0
    for aspect, v in (("enforced", e.verdict.enforced), ("honoured", e.verdict.honoured)):
        if v.effect is Effect.FAILS:
            fails.append(f"{who}: not {aspect}")
        elif v.effect is Effect.SHOWN:
            held += 1
        elif v is Verdict.INCONCLUSIVE:
            untested.append(f"{who} {aspect}: {v}")
        else:
            doubts.append(f"{who} {aspect}: {v}")
    if isinstance(e, RequestsLimit) and e.retry_after.verdict.effect is Effect.FAILS:
        fails.append(f"{who}: Retry-After promise broken {e.retry_after.broken} times")
    return held


def _judged(limits: Iterable[Limit]) -> list[Limit]:
    """The entries with verdicts (an unusable key's entries have none)."""
    return [e for e in limits if e.verdict.enforced.effect is not Effect.ERROR]


def overall_verdict(
    limits: Iterable[Limit], slo: SloResult, tokens: Sequence[TokenLimit] = ()
) -> tuple[RunVerdict, list[str]]:
    """On what was recorded: fail on any violated verdict or missed SLO; pass when nothing
    failed and at least one limit verdict held (what could not be shown either way is
    listed with it); inconclusive when no limit verdict held, i.e. the load never provoked
    any promise. Unusable keys' entries are left out. Returns the verdict and the reasons."""
    fails: list[str] = []
    doubts: list[str] = []
    untested: list[str] = []
    held = 0
    judged = False
    for e in _judged(limits):
        judged = True
        held += _limit_reasons(e, fails, doubts, untested)
    token_held, token_judged = token_reasons(tokens, fails, doubts)
    held += token_held
    judged = judged or token_judged
    for c in slo.checks:
        if c.met is False:
            assert c.observed is not None
            fails.append(f"SLO {c.name} missed: {c.observed:.4g} vs {c.direction} {c.threshold:g}")
        elif c.met is None:
            doubts.append(f"SLO {c.name}: no data")
    if not judged:
        doubts.append("no limit could be judged (no requests to limited endpoints with a promise)")
    # Verdicts the scenario did not set out to provoke are listed apart from the ones it
    # provoked but could not decide.
    apart = [UNTESTED, *untested] if untested else []
    if fails:
        return RunVerdict.FAIL, fails + doubts + apart
    if not held:
        return RunVerdict.INCONCLUSIVE, [
            "no limit verdict held: the offered load never provoked a promise",
            *doubts,
            *untested,
        ]
    if doubts:
        return RunVerdict.PASS, [
            f"no violation and every SLO met; {held} verdicts held, "
            f"{len(doubts)} could not be shown either way:",
            *doubts,
            *apart,
        ]
    if untested:
        return RunVerdict.PASS, [
            f"no violation and every SLO met; {held} verdicts held, {len(untested)} {UNTESTED}",
            *untested,
        ]
    return RunVerdict.PASS, ["every limit verdict held and every SLO was met"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _recorded_text(
    verdict: RunVerdict, limits: Sequence[Limit], slo: SloResult, tokens: Sequence[TokenLimit] = ()
) -> str:
    """What the verdicts on the recorded part say, in a few words."""
    if verdict is RunVerdict.FAIL:
        violated = sum(
            1
            for e in _judged(limits)
            if Effect.FAILS
            in (
                e.verdict.enforced.effect,
                e.verdict.honoured.effect,
                e.retry_after.verdict.effect if isinstance(e, RequestsLimit) else None,
            )
        )
        violated += sum(1 for e in tokens if token_fails(e))
        missed = sum(1 for c in slo.checks if c.met is False)
        parts = []
        if violated:
            parts.append(_plural(violated, "limit") + " violated")
        if missed:
            parts.append(_plural(missed, "SLO") + " missed")
        return ", ".join(parts)
    if verdict is RunVerdict.PASS:
        return "no violation"
    return "no limit was provoked"


def headline(
    verdict: RunVerdict,
    recorded: RunVerdict,
    limits: Sequence[Limit],
    slo: SloResult,
    unusable: Sequence[KeyAnswers],
    tokens: Sequence[TokenLimit] = (),
) -> str:
    """``INCOMPLETE — 1 limit violated on what was recorded``."""
    what = _recorded_text(recorded, limits, slo, tokens)
    if verdict is RunVerdict.ERROR:
        names = ", ".join(k.key for k in unusable)
        text = f"ERROR — {_plural(len(unusable), 'key')} unusable ({names})"
        if _judged(limits):
            text += f"; the other keys: {what}"
        return text
    if verdict is RunVerdict.INCOMPLETE:
        return f"INCOMPLETE — {what} on what was recorded"
    if verdict is RunVerdict.PASS:
        return "PASS — no violation and every SLO met"
    if verdict is RunVerdict.INCONCLUSIVE:
        return "INCONCLUSIVE — the offered load never provoked a promise"
    return f"FAIL — {what}"


def run_outcome(
    limits: Sequence[Limit],
    slo: SloResult,
    keys: Sequence[KeyAnswers],
    complete: Completeness,
    tokens: Sequence[TokenLimit] = (),
) -> RunOutcome:
    """The overall verdict: error when a key is unusable, else incomplete when records are
    missing, else what the recorded part says. The reasons list the problems first (each
    unusable key, each gap in the records), then the recorded part's reasons."""
    recorded, reasons = overall_verdict(limits, slo, tokens)
    unusable = [k for k in keys if not k.usable]
    problems = [k.problem or f"{k.key}: unusable" for k in unusable]
    problems += list(complete.reasons)
    if unusable:
        verdict = RunVerdict.ERROR
    elif not complete.complete:
        verdict = RunVerdict.INCOMPLETE
    else:
        verdict = recorded
    if unusable and not _judged(limits):
        # Nothing else could be judged: the recorded part's reasons would only repeat it.
        reasons = [r for r in reasons if not r.startswith("no limit")]
    return RunOutcome(
        verdict=verdict,
        headline=headline(verdict, recorded, limits, slo, unusable, tokens),
        reasons=tuple(problems + reasons),
    )
