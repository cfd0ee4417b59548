"""The values a verdict can take and what each one means for the run.

``Verdict`` judges one aspect of one promise (a limit enforced, a limit honoured, the
Retry-After promise); ``HeaderAgreement`` is the informational x-ratelimit check;
``RunVerdict`` is the run's overall outcome. Adding a value means adding a member here and
its line in the table below it (a test checks that every member has one)."""

from __future__ import annotations

import enum


class Effect(enum.Enum):
    """What a verdict does to the overall outcome."""

    FAILS = "fails"  # the run fails, and the verdict is listed as a reason
    SHOWN = "shown"  # evidence that the promise held
    UNSHOWN = "unshown"  # could not be shown either way; listed with a passing run
    ERROR = "error"  # nothing could be judged: the run's verdict is error


class Verdict(enum.StrEnum):
    """One aspect of one promise. ``docs/verdicts.md`` defines each value."""

    HELD = "held"
    VIOLATED = "violated"
    POSSIBLE = "possible"  # only the client's timing uncertainty allows a violation
    INCONCLUSIVE = "inconclusive"  # the load never provoked the promise
    UNUSABLE = "unusable"  # the key's answers are not the API's (wrong URL, auth, no answer)

    @property
    def effect(self) -> Effect:
        return VERDICT_EFFECT[self]


VERDICT_EFFECT: dict[Verdict, Effect] = {
    Verdict.HELD: Effect.SHOWN,
    Verdict.VIOLATED: Effect.FAILS,
    Verdict.POSSIBLE: Effect.UNSHOWN,
    Verdict.INCONCLUSIVE: Effect.UNSHOWN,
    Verdict.UNUSABLE: Effect.ERROR,
}


class HeaderAgreement(enum.StrEnum):
    """Do the x-ratelimit-remaining headers agree with the observed count (informational:
    never fails a run)."""

    AGREES = "agrees"
    DISAGREES = "disagrees"
    INCONCLUSIVE = "inconclusive"  # no admitted response carried the headers


class RunVerdict(enum.StrEnum):
    """The run's outcome (``verdict`` in summary.json); the exit status of ``loadkit
    analyze`` follows from it (``cli.EXIT_STATUS``). ``error`` beats ``incomplete``, which
    beats the other three."""

    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"  # a key's answers are not evidence: wrong URL or layout, auth, no answer
    INCOMPLETE = "incomplete"  # records are missing: interrupted, killed, a worker lost


class LimitKind(enum.StrEnum):
    REQUESTS = "requests"
    CONCURRENCY = "concurrency"


class Refused(enum.IntEnum):
    """Which limit a response was refused by, as analysis judges it (``Columns.refused``):
    the record's ``limit_kind``; for a version-1 record, loadkit's error code."""

    NOT_REFUSED = 0  # not a 429
    REQUESTS = 1
    CONCURRENCY = 2
    TOKENS = 3  # not judged until token limits have verdicts
    UNATTRIBUTED = 4  # judged against both limits
    DAILY = 5  # requests per day: judged with the token verdicts (``token_verdicts``)
    # A model's own request window / concurrency (the record's ``model`` names it): judged
    # per (key, model), never against the key's limits.
    MODEL_REQUESTS = 6
    MODEL_CONCURRENCY = 7
