"""summary.json's ``tokens``: the token and per-day promises of every judged key (per key,
and per (key, model) for a model's own promise), judged from the records by
``tokens.py``'s verdicts, with the evidence and a few plain sentences for the report. A
violated verdict fails the run as a request verdict does (``overall``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from loadkit.analysis.codec import JsonRecord
from loadkit.analysis.columns import INFERENCE_ENDPOINTS, Columns
from loadkit.analysis.outcome import Verdict
from loadkit.analysis.token_columns import PromptCalibration, TokenColumns
from loadkit.analysis.tokens import (
    REQUESTS_PER_DAY,
    TOKENS,
    RemainingTokensCheck,
    Requests,
    ResetCheck,
    WindowPromise,
    WindowVerdict,
    justified,
    remaining_check,
    reset_check,
    window_promises,
    window_verdict,
)
from loadkit.analysis.verdicts import KeyView, key_view
from loadkit.runmeta import RunMeta


@dataclass(frozen=True)
class WeightSources(JsonRecord):
    """How the scope's requests' tokens were known: from ``usage``, from the client's own
    count of what it sent (calibrated against usage: ``count_ratio``), or not at all."""

    requests: int
    from_usage: int
    from_client_count: int
    unknown: int
    count_ratio: tuple[float, float] | None  # usage / client count: min, max (None: no pairs)


@dataclass(frozen=True)
class TokenLimit(JsonRecord):
    """One key's entry for one token or per-day promise (``model`` None: the key's requests
    to every model)."""

    json_tag: ClassVar[tuple[str, str]] = ("kind", "window")

    tier: str
    key: str
    model: str | None
    verdict: WindowVerdict
    remaining_header: RemainingTokensCheck | None
    reset: ResetCheck
    weights: WeightSources | None
    explanation: tuple[str, ...] = field(kw_only=True)

    @property
    def kind(self) -> str:
        """How the run's reasons name it: ``tokens``, ``requests_per_day``,
        ``models.M.tokens``."""
        k = self.verdict.promise.kind
        return k if self.model is None else f"models.{self.model}.{k}"


def _refused_kind(tc: TokenColumns, rows: np.ndarray, kind: str) -> np.ndarray:
    return np.asarray(tc.kind_is(kind)[rows])


def _scope_requests(
    kv: KeyView,
    tc: TokenColumns,
    promise: WindowPromise,
    cal: PromptCalibration,
    mask: np.ndarray,
    headers: bool,
) -> Requests:
    """The scope's requests (``mask`` over the key's positions) weighed for ``promise``."""
    pos = np.flatnonzero(mask)
    rows = kv.rows[pos]
    refused_status = kv.status[pos] == 429
    mine = refused_status & _refused_kind(tc, rows, promise.kind)
    if promise.kind == TOKENS:
        lo, up = tc.weight_bounds(rows, promise.counts or "total", cal)
    else:
        lo = up = np.ones(pos.size)
    nan = np.full(pos.size, np.nan)
    return Requests(
        rows=rows,
        s=kv.s[pos],
        hi=kv.hi[pos],
        admitted=kv.admitted[pos],
        possible=kv.possible[pos],
        refused=mine,
        refused_other=refused_status & ~mine,
        lo=lo,
        up=up,
        retry_after=np.where(mine, kv.retry_after[pos], np.nan),
        rl_limit=tc.rl_limit[rows] if headers else nan,
        rl_remaining=tc.rl_remaining[rows] if headers else nan,
        rl_reset=tc.rl_reset[rows] if headers else nan,
    )


def _sources(r: Requests, tc: TokenColumns, cal: PromptCalibration) -> WeightSources:
    usage = ~np.isnan(tc.usage_prompt[r.rows])
    counted = ~usage & ~np.isnan(tc.sent_prompt[r.rows])
    ratio = (round(cal.low, 4), round(cal.high, 4)) if cal.pairs else None
    return WeightSources(
        r.n, int(usage.sum()), int(counted.sum()), int(r.n - usage.sum() - counted.sum()), ratio
    )


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x == int(x) else f"{x:,.1f}"


def explain(v: WindowVerdict, weights: WeightSources | None, reset: ResetCheck) -> list[str]:
    """A few sentences on one promise's verdicts, with the evidence that decided them."""
    p = v.promise
    scope = "per key" if p.model is None else f"per key for model {p.model}"
    what = f"{p.unit} ({p.counts})" if p.kind == TOKENS else p.unit
    lines = [
        f"Promise: at most {p.limit:,} {what} admitted in any {p.window_s:g} s, {scope}.",
        f"Enforced {v.enforced.upper()}: at most {_fmt(v.observed_max)} certainly admitted "
        f"in one window (up to {_fmt(v.observed_max_possible)} possible); the load offered "
        f"up to {_fmt(v.offered_max)} in one window.",
    ]
    if v.refusals:
        text = f"Honoured {v.honoured.upper()}: {v.refusals} refusals for this limit"
        if v.unjustified:
            ex = v.examples[0]
            text += (
                f", {v.unjustified} unjustified (e.g. {ex.request_id}: the window held at "
                f"most {_fmt(ex.window_upper)} and it asked {_fmt(ex.asked)}, within "
                f"{p.limit:,})"
            )
        if v.unjudged:
            text += f"; {v.unjudged} could not be judged (their own size is unknown)"
        lines.append(text + ".")
    else:
        lines.append(f"Honoured {v.honoured.upper()}: no refusal for this limit.")
    if reset.broken:
        rex = reset.examples[0]
        lines.append(
            f"Reset promise broken {reset.broken} times (e.g. {rex.followup_id}, sent after "
            f"{rex.source} {rex.delay_s:g} s of {rex.request_id}, was refused again)."
        )
    if v.reach:
        lines.append(f"This promise {v.reach}.")
    if weights is not None and weights.unknown:
        lines.append(f"{weights.unknown} requests' tokens are unknown (no usage, no count).")
    if weights is not None and weights.from_client_count and weights.count_ratio is None:
        lines.append(
            "Tokens of requests without usage are the client's own count, uncalibrated: "
            "no response carried usage to compare it with."
        )
    return lines


def scope_requests(cols: Columns, label: str, promise: WindowPromise) -> Requests | None:
    """One key's requests under ``promise`` (its model's, for a model's promise), weighed
    as the verdicts weigh them (the charts draw from it); None for a key without any."""
    tc = cols.tokens
    if tc is None or label not in cols.key.names:
        return None
    kv = key_view(cols, cols.key.names.index(label))
    inference = cols.endpoint.isin(INFERENCE_ENDPOINTS)
    mask = (
        np.ones(kv.n, dtype=bool)
        if promise.model is None
        else tc.model_rows(promise.model)[kv.rows]
    )
    return _scope_requests(kv, tc, promise, _calibration(tc, inference), mask, False)


def _unusable(e: TokenLimit, problem: str) -> TokenLimit:
    u = Verdict.UNUSABLE
    return replace(
        e,
        verdict=replace(e.verdict, enforced=u, honoured=u),
        reset=replace(e.reset, verdict=u),
        explanation=(f"UNUSABLE: {problem}",),
    )


def key_token_limits(
    cols: Columns,
    code: int,
    label: str,
    tier: str,
    promises: Sequence[WindowPromise],
    *,
    tier_has_key_tokens: bool,
    cal: PromptCalibration,
    run_s: float | None,
    max_examples: int = 20,
) -> list[TokenLimit]:
    """Every promise's entry for one key."""
    tc = cols.tokens
    assert tc is not None
    kv = key_view(cols, code)
    if kv.n == 0:
        return []
    scopes: list[tuple[WindowPromise, np.ndarray, bool]] = []
    for p in promises:
        mask = np.ones(kv.n, dtype=bool) if p.model is None else tc.model_rows(p.model)[kv.rows]
        # The token headers describe the key's token promise when the tier has one, else
        # the requested model's (the reference server's rule, ``Rules.header_rule``).
        headers = p.kind == TOKENS and (p.model is None or not tier_has_key_tokens)
        scopes.append((p, mask, headers))
    built = [(p, _scope_requests(kv, tc, p, cal, m, h), h) for p, m, h in scopes]
    # A refusal either promise of the same kind can justify is justified: the client
    # cannot tell the key's limit from the model's.
    may_by_row: dict[str, np.ndarray] = {}
    for p, r, _ in built:
        _, may = justified(r, p)
        acc = may_by_row.setdefault(p.kind, np.zeros(cols.n, dtype=bool))
        acc[r.rows[r.refused]] |= may
    out = []
    for p, r, headers in built:
        verdict = window_verdict(
            r,
            p,
            ids=cols.ids,
            also_justified=may_by_row[p.kind][r.rows],
            run_s=run_s,
            max_examples=max_examples,
        )
        remaining = (
            remaining_check(r, p, ids=cols.ids, max_examples=max_examples) if headers else None
        )
        reset = reset_check(r, p, ids=cols.ids, max_examples=max_examples)
        weights = _sources(r, tc, cal) if p.kind == TOKENS else None
        out.append(
            TokenLimit(
                tier,
                label,
                p.model,
                verdict,
                remaining,
                reset,
                weights,
                explanation=tuple(explain(verdict, weights, reset)),
            )
        )
    return out


def token_limits(
    meta: RunMeta,
    cols: Columns,
    tiers: Mapping[str, str],
    order: Sequence[str],
    unusable: Mapping[str, str] | None = None,
    max_examples: int = 20,
) -> tuple[TokenLimit, ...]:
    """Every key's token and per-day entries, keys in ``order`` (labels); ``tiers``: label
    -> tier; ``unusable``: label -> why its answers are not evidence."""
    if cols.tokens is None:
        return ()
    unusable = unusable or {}
    promises: dict[str, tuple[WindowPromise, ...]] = {}
    for t, d in meta.tiers.items():
        ps = window_promises(t, d)
        if ps:
            promises[t] = ps
    if not promises:
        return ()
    inference = cols.endpoint.isin(INFERENCE_ENDPOINTS)
    cal = _calibration(cols.tokens, inference)
    run_s = meta.duration_s if meta.duration_s else (float(cols.end.max()) if cols.n else None)
    out: list[TokenLimit] = []
    for label in order:
        tier = tiers.get(label)
        if tier not in promises or label not in cols.key.names:
            continue
        entries = key_token_limits(
            cols,
            cols.key.names.index(label),
            label,
            tier,
            promises[tier],
            tier_has_key_tokens=any(p.kind == TOKENS and p.model is None for p in promises[tier]),
            cal=cal,
            run_s=run_s,
            max_examples=max_examples,
        )
        problem = unusable.get(label)
        out += [_unusable(e, problem) for e in entries] if problem else entries
    return tuple(out)


def _calibration(tc: TokenColumns, rows: np.ndarray) -> PromptCalibration:
    sub = replace(tc, usage_prompt=np.where(rows, tc.usage_prompt, np.nan))
    return sub.calibration()


def fails(e: TokenLimit) -> list[str]:
    """The run's failure reasons this entry gives (``overall``)."""
    out = []
    who = f"{e.key} {e.kind}"
    for aspect, v in (("enforced", e.verdict.enforced), ("honoured", e.verdict.honoured)):
        if v is Verdict.VIOLATED:
            out.append(f"{who}: not {aspect}")
    if e.reset.verdict is Verdict.VIOLATED:
        out.append(f"{who}: reset promise broken {e.reset.broken} times")
    return out


def token_reasons(
    tokens: Sequence[TokenLimit], fails_out: list[str], doubts: list[str]
) -> tuple[int, bool]:
    """Adds the entries' failures and doubts to the run's reasons (a promise the run cannot
    reach says so); returns how many verdicts held, and whether any entry was judged."""
    held, judged = 0, False
    for e in tokens:
        if e.verdict.enforced is Verdict.UNUSABLE:
            continue
        judged = True
        fails_out += fails(e)
        who = f"{e.key} {e.kind}"
        for aspect, v in (("enforced", e.verdict.enforced), ("honoured", e.verdict.honoured)):
            if v is Verdict.HELD:
                held += 1
            elif v is not Verdict.VIOLATED:
                reach = f" ({e.verdict.reach})" if e.verdict.reach and aspect == "enforced" else ""
                doubts.append(f"{who} {aspect}: {v}{reach}")
    return held, judged


__all__ = [
    "REQUESTS_PER_DAY",
    "TOKENS",
    "TokenLimit",
    "WeightSources",
    "fails",
    "token_limits",
    "token_reasons",
]
