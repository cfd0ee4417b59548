"""Verdicts on window promises whose requests weigh: tokens per window (``tokens`` per
``token_window_s``, counting input, output or total) and requests per day (every request
weighs 1), per key or per (key, model). The same rules as ``verdicts.py`` for requests,
with each request's weight: *enforced* (the most admitted volume in any window span:
certain for requests wholly inside it, possible for requests touching it), *honoured* (a
refusal for this limit while even the most the window can have held, plus the refused
request's own weight, stays within the promise is unjustified), the remaining-tokens
header against the volume the client saw, and reset honesty (a request sent after the
advertised delay is not refused for the same limit, unless another admission took the
room). Pure: arrays in, frozen dataclasses out; O(n log n).

What a request weighs is what the server charged at admission (``loadkit.server.
token_limiter``): the prompt tokens as the service counts them, and the output as
``max_tokens`` x choices reserved then (OpenAI's rule), not what was delivered. A client
knows it from what it asked, or from ``usage`` (``weights`` says how, and what is left
unknown); an unknown weight is bounded, never guessed: a certain volume counts what is
certain, a possible one what is possible."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadkit.analysis.codec import JsonRecord
from loadkit.analysis.intervals import Fenwick
from loadkit.analysis.outcome import HeaderAgreement, Verdict

TOKENS = "tokens"
REQUESTS_PER_DAY = "requests_per_day"
COUNTS = ("input", "output", "total")
IdLookup = Callable[[np.ndarray], list[str]]
_BRUTE_CELLS = 4_000_000  # above this many (interval, query) pairs, sweep a Fenwick tree


# ---------------------------------------------------------------------------------------
# Promises, as run.json's tiers hold them (``loadkit.scenario.model.TierSpec.promised``)


@dataclass(frozen=True)
class WindowPromise(JsonRecord):
    """At most ``limit`` units admitted in any span of ``window_s``: tokens (counted as
    ``counts`` says) or requests (``requests_per_day``); per key, or per (key, ``model``)."""

    kind: str  # TOKENS | REQUESTS_PER_DAY
    limit: int
    window_s: float
    counts: str | None = None  # tokens: input | output | total
    model: str | None = None  # None: the key's requests to every model

    @property
    def unit(self) -> str:
        return "tokens" if self.kind == TOKENS else "requests"


def window_promises(tier: str, d: Mapping[str, Any]) -> tuple[WindowPromise, ...]:
    """Every token and per-day promise of run.json's ``tiers.TIER`` (the tier's, then each
    model's); () for a tier that makes none (every run.json written before them)."""
    out = list(_promises_in(d, None, f"tiers.{tier}"))
    models = d.get("models") or {}
    if not isinstance(models, Mapping):
        raise ValueError(f"run.json tiers.{tier}.models: expected a table, got {models!r}")
    for m, md in models.items():
        if not isinstance(md, Mapping):
            raise ValueError(f"run.json tiers.{tier}.models.{m}: expected a table, got {md!r}")
        out += _promises_in(md, str(m), f"tiers.{tier}.models.{m}")
    return tuple(out)


def _promises_in(d: Mapping[str, Any], model: str | None, where: str) -> list[WindowPromise]:
    out = []
    try:
        if d.get("tokens") is not None:
            counts = str(d.get("token_counts", "total"))
            if counts not in COUNTS:
                raise ValueError(f"token_counts {counts!r}")
            out.append(
                WindowPromise(
                    TOKENS, int(d["tokens"]), float(d.get("token_window_s", 60.0)), counts, model
                )
            )
        if d.get("requests_per_day") is not None:
            out.append(
                WindowPromise(
                    REQUESTS_PER_DAY,
                    int(d["requests_per_day"]),
                    float(d.get("day_window_s", 86_400.0)),
                    model=model,
                )
            )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"run.json {where}: {exc}") from None
    for p in out:
        if p.limit < 1 or not (p.window_s > 0 and math.isfinite(p.window_s)):
            raise ValueError(f"run.json {where}: limits must be positive, got {dict(d)}")
    return out


# ---------------------------------------------------------------------------------------
# What each request weighs


def weights(
    counts: str,
    *,
    usage_prompt: np.ndarray,
    usage_completion: np.ndarray,
    finish_length: np.ndarray,
    sent_prompt: np.ndarray | None = None,
    sent_output: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) bounds on each request's tokens as the server charged them under a promise
    counting ``counts``; NaN in ``hi`` where no bound is known. Arrays are per request, NaN
    where a value is missing.

    Input: ``usage.prompt_tokens`` when the response had it (the service's own count, so
    exact); else ``sent_prompt``, the client's count of the prompt it sent (exact for the
    reference server, whose tokenizer counts words; an estimate elsewhere, so pass it
    only when it is a bound); else unknown (lo 0).

    Output, reserved at admission as ``max_tokens`` x choices: ``sent_output`` when the
    client recorded what it asked (exact); else ``usage.completion_tokens`` of a choice
    that ended for its length (``finish_length``: it generated exactly ``max_tokens``, so
    with one choice that is the reservation); else at least what was delivered (lo), with
    no upper bound."""
    n = usage_prompt.size
    sp = _or_nan(sent_prompt, n)
    so = _or_nan(sent_output, n)
    inp = np.where(np.isnan(usage_prompt), sp, usage_prompt)
    in_lo = np.nan_to_num(inp, nan=0.0)
    by_length = np.where(finish_length, usage_completion, np.nan)
    out = np.where(np.isnan(so), by_length, so)
    out_lo = np.where(np.isnan(out), np.nan_to_num(usage_completion, nan=0.0), out)
    if counts == "input":
        return in_lo, inp
    if counts == "output":
        return out_lo, out
    return in_lo + out_lo, inp + out


def _or_nan(a: np.ndarray | None, n: int) -> np.ndarray:
    return np.full(n, np.nan) if a is None else np.asarray(a, dtype=np.float64)


# ---------------------------------------------------------------------------------------
# The requests of one scope


@dataclass(frozen=True)
class Requests:
    """One scope's requests (a key's, or a key's to one model) to the limited endpoints,
    as arrays aligned by position, in any order.

    ``hi``: the latest instant the request can have been admitted (headers_s, or end_s
    without headers). ``refused``: a 429 attributed to this promise's kind (``limit_kind``
    "tokens" or "requests_per_day"); ``refused_other``: a 429 attributed to another limit
    (never provokes this one). ``lo``/``up``: bounds on the request's weight (``weights``;
    1 and 1 for requests per day); ``up`` NaN: unbounded. The ``rl_*`` arrays are the
    token headers (NaN where absent), ``retry_after`` the 429's delay in seconds."""

    rows: np.ndarray
    s: np.ndarray
    hi: np.ndarray
    admitted: np.ndarray
    possible: np.ndarray  # no response: the server may have admitted it
    refused: np.ndarray
    refused_other: np.ndarray
    lo: np.ndarray
    up: np.ndarray
    retry_after: np.ndarray
    rl_limit: np.ndarray
    rl_remaining: np.ndarray
    rl_reset: np.ndarray

    @property
    def n(self) -> int:
        return int(self.rows.size)

    @property
    def maybe(self) -> np.ndarray:
        return np.asarray(self.admitted | self.possible)

    @classmethod
    def of(
        cls,
        s: np.ndarray,
        hi: np.ndarray,
        admitted: np.ndarray,
        refused: np.ndarray,
        lo: np.ndarray | float = 1.0,
        up: np.ndarray | float = 1.0,
        **optional: np.ndarray,
    ) -> Requests:
        """Built from the required arrays; the rest default to "nothing of the kind"
        (``rows`` to positions, flags to False, headers and delays to NaN)."""
        n = s.size
        none, nan = np.zeros(n, dtype=bool), np.full(n, np.nan)
        fields = {
            "rows": np.arange(n),
            "possible": none,
            "refused_other": none,
            "retry_after": nan,
            "rl_limit": nan,
            "rl_remaining": nan,
            "rl_reset": nan,
            **optional,
        }
        return cls(
            s=np.asarray(s, dtype=np.float64),
            hi=np.asarray(hi, dtype=np.float64),
            admitted=np.asarray(admitted, dtype=bool),
            refused=np.asarray(refused, dtype=bool),
            lo=np.broadcast_to(np.asarray(lo, dtype=np.float64), (n,)).copy(),
            up=np.broadcast_to(np.asarray(up, dtype=np.float64), (n,)).copy(),
            **fields,
        )


def _upper(r: Requests, promise: WindowPromise) -> np.ndarray:
    """Upper weights: an unbounded one as ``limit + 1``, which alone fills any window (so
    no window holding it can be shown to have had room, and none is certain either)."""
    return np.where(np.isnan(r.up), promise.limit + 1.0, r.up)


# ---------------------------------------------------------------------------------------
# Weighted counting over intervals [s, h] (verdicts.py's primitives, each request weighing w)


def _cum(keys: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``keys`` sorted, and the prefix sums of ``w`` in that order (prefix[0] = 0)."""
    order = np.argsort(keys, kind="stable")
    return keys[order], np.concatenate(([0.0], np.cumsum(w[order])))


def _sum_le(sorted_keys: np.ndarray, prefix: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray(prefix[np.searchsorted(sorted_keys, x, side="right")])


def _sum_lt(sorted_keys: np.ndarray, prefix: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.asarray(prefix[np.searchsorted(sorted_keys, x, side="left")])


def weight_meeting(
    s: np.ndarray, h: np.ndarray, w: np.ndarray, a: np.ndarray, b: np.ndarray
) -> np.ndarray:
    """For each query [a, b]: the weight of the intervals [s, h] that meet it (s <= b and
    h >= a). Those with h < a have s < b too, so it is a difference of prefix sums."""
    ks, ps = _cum(s, w)
    kh, ph = _cum(h, w)
    return np.asarray(_sum_le(ks, ps, b) - _sum_lt(kh, ph, a))


def weight_covering(
    s: np.ndarray, h: np.ndarray, w: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """For each query: the weight of the intervals with ``s <= x`` and ``h > y`` (reaching
    over (x, y]). As in ``intervals.count_covering``, only intervals longer than the
    shortest y - x can count, almost none in a real run: they are summed directly when
    few, else by a sweep over a Fenwick tree."""
    out = np.zeros(x.size)
    if s.size == 0 or x.size == 0:
        return out
    cand = (h - s) > (y - x).min()
    if not cand.any():
        return out
    cs, ch, cw = s[cand], h[cand], w[cand]
    if cs.size * x.size <= _BRUTE_CELLS:
        step = max(1, _BRUTE_CELLS // (4 * cs.size))
        for lo in range(0, x.size, step):
            hit = (cs[None, :] <= x[lo : lo + step, None]) & (ch[None, :] > y[lo : lo + step, None])
            out[lo : lo + step] = (hit * cw[None, :]).sum(axis=1)
        return out
    return _covering_sweep(cs, ch, cw, x, y)


def _covering_sweep(
    s: np.ndarray, h: np.ndarray, w: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    # Weights are whole numbers of tokens: the Fenwick tree sums them exactly as integers.
    order_s = np.argsort(s, kind="stable")
    s_sorted, h_by_s, w_by_s = s[order_s], h[order_s], w[order_s].astype(np.int64)
    h_sorted = np.sort(h)
    h_rank = np.searchsorted(h_sorted, h_by_s, side="left")
    y_rank = np.searchsorted(h_sorted, y, side="right")  # h <= y  <=>  rank < y_rank
    tree = Fenwick(s.size)
    res = np.zeros(x.size)
    inserted, total = 0, 0
    limit = np.searchsorted(s_sorted, x, side="right")
    for qi in np.argsort(x, kind="stable").tolist():
        upto = int(limit[qi])
        while inserted < upto:
            weight = int(w_by_s[inserted])
            tree.add(int(h_rank[inserted]), weight)
            total += weight
            inserted += 1
        res[qi] = total - tree.prefix(int(y_rank[qi]))
    return res


def weight_contained(s: np.ndarray, h: np.ndarray, w: np.ndarray, width: float) -> np.ndarray:
    """For each anchor i: the weight of the intervals wholly inside [s_i, s_i + width)
    (s_j >= s_i and h_j < s_i + width), ``intervals.contained_counts`` with weights."""
    if s.size == 0:
        return np.zeros(0)
    a, b = s, s + width
    ks, ps = _cum(s, w)
    kh, ph = _cum(h, w)
    total = ps[-1]
    starts_after = total - _sum_lt(ks, ps, a)
    ends_at_or_after = total - _sum_lt(kh, ph, b)
    # those with s < a and h >= b were taken away twice: they reach over the whole span
    over = weight_covering(s, h, w, np.nextafter(a, -np.inf), np.nextafter(b, -np.inf))
    return np.asarray(starts_after - ends_at_or_after + over)


def weight_touching_max(
    s: np.ndarray, h: np.ndarray, w: np.ndarray, width: float
) -> tuple[float, float]:
    """The most weight of intervals [s, h] meeting one span [t, t + width), and that t
    (nan when there is none): ``intervals.touching_max`` with weights."""
    if s.size == 0:
        return 0.0, float("nan")
    t = np.sort(h)
    ks, ps = _cum(s, w)
    kh, ph = _cum(h, w)
    tot = _sum_lt(ks, ps, t + width) - _sum_lt(kh, ph, t)
    k = int(np.argmax(tot))
    return float(tot[k]), float(t[k])


def weight_span_max(points: np.ndarray, w: np.ndarray, width: float) -> tuple[float, float]:
    """The most weight of points in one span [p, p + width), and its start."""
    if points.size == 0:
        return 0.0, float("nan")
    kp, pp = _cum(points, w)
    tot = _sum_lt(kp, pp, kp + width) - pp[:-1]
    k = int(np.argmax(tot))
    return float(tot[k]), float(kp[k])


# ---------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class RefusalExample(JsonRecord):
    """A refusal for this limit that the window cannot justify: even the most the window
    can have held (``window_upper``) plus what the request asked stays within the promise."""

    request_id: str
    send_s: float | None
    headers_s: float | None
    window_upper: float
    asked: float


@dataclass(frozen=True)
class WindowVerdict(JsonRecord):
    """One window promise of one scope: was it enforced and honoured?"""

    promise: WindowPromise
    observed_max: float  # the most admitted volume certainly inside one window span
    observed_max_possible: float  # the most the timing (and unknown weights) allow
    certain_span_s: tuple[float | None, float | None] | None
    certain_request_ids: tuple[str, ...]
    offered_max: float  # the most volume sent (at least) in one window span
    enforced: Verdict
    refusals: int  # 429s attributed to this kind
    unjustified: int
    unjudged: int  # refusals whose own weight has no upper bound: cannot be judged
    examples: tuple[RefusalExample, ...]
    honoured: Verdict
    reach: str | None  # why the run could not provoke the promise, when it could not


@dataclass(frozen=True)
class RemainingExample(JsonRecord):
    request_id: str
    send_s: float | None
    reported_used: float
    lower: float
    upper: float


@dataclass(frozen=True)
class RemainingTokensCheck(JsonRecord):
    """Does x-ratelimit-limit-tokens minus -remaining-tokens agree with the volume of the
    request's window (within the timing bounds; informational)?"""

    checked: int
    verdict: HeaderAgreement
    disagreements: int
    examples: tuple[RemainingExample, ...]
    limit_mismatches: int  # responses advertising a limit other than the promise


@dataclass(frozen=True)
class ResetExample(JsonRecord):
    source: str  # "retry-after" (a 429's delay) | "reset" (x-ratelimit-reset-tokens)
    request_id: str
    delay_s: float
    followup_id: str
    followup_send_s: float | None


@dataclass(frozen=True)
class ResetCheck(JsonRecord):
    """After a 429's Retry-After (the room for that request) or a response's
    x-ratelimit-reset-tokens (the whole allowance), the next request of the scope, asking
    no more, is not refused for this limit unless another admission came between (at the
    same instant as either end counts: it may have come between)."""

    checked: int
    broken: int
    examples: tuple[ResetExample, ...]
    verdict: Verdict


# ---------------------------------------------------------------------------------------
# Verdicts


def _rounded(x: float) -> float | None:
    return None if x != x else round(float(x), 6)


def _ids(ids: IdLookup | None, rows: np.ndarray) -> list[str]:
    return ids(rows) if ids is not None else [str(int(r)) for r in rows]


def justified(r: Requests, promise: WindowPromise) -> tuple[np.ndarray, np.ndarray]:
    """For each refused position: (the most weight its window can have held, whether the
    refusal may be justified). A refusal at some instant of [s_r, h_r] saw the admissions
    of (t - W, t]: any admitted-or-unknown j with [s_j, h_j] meeting [s_r - W, h_r]. It is
    unjustified only if that weight plus its own upper weight fits the promise; with an
    unbounded own weight it may always be justified."""
    pos = np.flatnonzero(r.refused)
    up = _upper(r, promise)
    maybe = r.maybe
    window = weight_meeting(
        r.s[maybe], r.hi[maybe], up[maybe], r.s[pos] - promise.window_s, r.hi[pos]
    )
    own = r.up[pos]
    fits = ~np.isnan(own) & (window + np.nan_to_num(own) <= promise.limit)
    return window, ~fits


def window_verdict(
    r: Requests,
    promise: WindowPromise,
    *,
    ids: IdLookup | None = None,
    also_justified: np.ndarray | None = None,
    run_s: float | None = None,
    max_examples: int = 20,
) -> WindowVerdict:
    """Enforced and honoured for one promise over one scope's requests.

    ``also_justified``: per position, refusals another promise of the same kind justifies
    (a tier promising tokens per key and per model: the client cannot tell which refused,
    so a refusal either can justify is justified; OR the second result of ``justified``
    over each). ``run_s``: the run's length, named when the run cannot reach the promise."""
    lim, w = promise.limit, promise.window_s
    adm, maybe = r.admitted, r.maybe
    up = _upper(r, promise)
    # Certain: the most admitted (lower) weight wholly inside one [s_i, s_i + W).
    certain, span, members = 0.0, None, np.zeros(0, dtype=np.int64)
    sa, ha, la = r.s[adm], r.hi[adm], r.lo[adm]
    if sa.size:
        vol = weight_contained(sa, ha, la, w)
        i = int(np.argmax(vol))
        certain = float(vol[i])
        inside = np.flatnonzero((sa >= sa[i]) & (ha < sa[i] + w))
        members = r.rows[adm][inside]
        span = (_rounded(sa[i]), _rounded(float(ha[inside].max())) if inside.size else None)
    possible, _ = weight_touching_max(r.s[maybe], r.hi[maybe], up[maybe], w)
    reached = maybe | r.refused | r.refused_other
    offered, _ = weight_span_max(r.s[reached], r.lo[reached], w)
    if certain > lim:
        enforced = Verdict.VIOLATED
    elif possible > lim:
        enforced = Verdict.POSSIBLE
    elif offered <= lim:
        enforced = Verdict.INCONCLUSIVE
    else:
        enforced = Verdict.HELD

    pos = np.flatnonzero(r.refused)
    window, may = justified(r, promise)
    if also_justified is not None:
        may = may | np.asarray(also_justified, dtype=bool)[pos]
    bad = ~may
    unjudged = int(np.isnan(r.up[pos]).sum())
    # Load this limit had to decide on: not refusals by other limits.
    eligible = maybe | r.refused
    eligible_max, _ = weight_span_max(r.s[eligible], r.lo[eligible], w)
    if bad.any():
        honoured = Verdict.VIOLATED
    elif eligible_max <= lim:
        honoured = Verdict.INCONCLUSIVE
    else:
        honoured = Verdict.HELD
    bad_pos = pos[bad][:max_examples]
    examples = tuple(
        RefusalExample(rid, _rounded(r.s[p]), _rounded(r.hi[p]), float(wv), float(r.up[p]))
        for rid, p, wv in zip(
            _ids(ids, r.rows[bad_pos]), bad_pos.tolist(), window[bad][:max_examples], strict=True
        )
    )
    return WindowVerdict(
        promise=promise,
        observed_max=certain,
        observed_max_possible=possible,
        certain_span_s=span,
        certain_request_ids=tuple(_ids(ids, members[:max_examples])),
        offered_max=offered,
        enforced=enforced,
        refusals=int(pos.size),
        unjustified=int(bad.sum()),
        unjudged=unjudged,
        examples=examples,
        honoured=honoured,
        reach=_reach(promise, offered, run_s),
    )


def _reach(promise: WindowPromise, offered: float, run_s: float | None) -> str | None:
    if offered > promise.limit:
        return None
    text = (
        f"cannot be reached in this run: at most {offered:g} {promise.unit} sent in any "
        f"{promise.window_s:g} s span, the promise is {promise.limit}"
    )
    if run_s is not None and run_s < promise.window_s:
        text += (
            f"; the run lasted {run_s:g} s, so a load that reaches it sends over "
            f"{promise.limit} {promise.unit} within the run"
        )
    return text


def remaining_bounds(
    r: Requests, promise: WindowPromise, pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For admitted positions i: bounds on the volume of (a_i - W, a_i], i's own included,
    as a server's remaining-tokens header after admitting i reports it.

    lower = lo_i + lo of the admitted j certainly before i (h_j < s_i: at a tie, j may
    have come after) and certainly inside its window (s_j > h_i - W); upper = up of every
    admitted-or-unknown j with s_j <= h_i and h_j > s_i - W."""
    w = promise.window_s
    adm = r.admitted
    sa, ha, la = r.s[adm], r.hi[adm], r.lo[adm]
    s_i, h_i = r.s[pos], r.hi[pos]
    x = h_i - w
    kh, ph = _cum(ha, la)
    ks, ps = _cum(sa, la)
    ended_before = _sum_lt(kh, ph, s_i)  # h_j < s_i
    started_early = _sum_le(ks, ps, x)  # s_j <= h_i - W
    # ... of which those not ended before (h_j >= s_i) were never in ended_before
    spanning = weight_covering(sa, ha, la, x, np.nextafter(s_i, -np.inf))
    lower = ended_before - (started_early - spanning) + r.lo[pos]
    maybe = r.maybe
    up = _upper(r, promise)
    ks2, ps2 = _cum(r.s[maybe], up[maybe])
    kh2, ph2 = _cum(r.hi[maybe], up[maybe])
    upper = _sum_le(ks2, ps2, h_i) - _sum_le(kh2, ph2, s_i - w)
    return lower, upper


def remaining_check(
    r: Requests, promise: WindowPromise, *, ids: IdLookup | None = None, max_examples: int = 20
) -> RemainingTokensCheck:
    """The token headers of admitted responses against the volume the client saw. Call it
    with the promise the headers describe: the key's token promise when the tier has one,
    else the requested model's (the reference server's rule)."""
    pos = np.flatnonzero(r.admitted & ~np.isnan(r.rl_limit) & ~np.isnan(r.rl_remaining))
    if pos.size == 0:
        return RemainingTokensCheck(0, HeaderAgreement.INCONCLUSIVE, 0, (), 0)
    lower, upper = remaining_bounds(r, promise, pos)
    used = r.rl_limit[pos] - r.rl_remaining[pos]
    spent = r.rl_remaining[pos] <= 0  # remaining is clipped at 0: only "at least the limit"
    bad = np.where(spent, upper < r.rl_limit[pos], (used < lower) | (used > upper))
    bp = pos[bad][:max_examples]
    examples = tuple(
        RemainingExample(rid, _rounded(r.s[p]), float(u), float(lo), float(hi))
        for rid, p, u, lo, hi in zip(
            _ids(ids, r.rows[bp]),
            bp.tolist(),
            used[bad][:max_examples],
            lower[bad][:max_examples],
            upper[bad][:max_examples],
            strict=True,
        )
    )
    return RemainingTokensCheck(
        checked=int(pos.size),
        verdict=HeaderAgreement.DISAGREES if bad.any() else HeaderAgreement.AGREES,
        disagreements=int(bad.sum()),
        examples=examples,
        limit_mismatches=int((r.rl_limit[pos] != promise.limit).sum()),
    )


def reset_check(
    r: Requests, promise: WindowPromise, *, ids: IdLookup | None = None, max_examples: int = 20
) -> ResetCheck:
    """Retry-After of this limit's 429s, and x-ratelimit-reset-tokens of any response:
    the first request of the scope sent at or after headers + delay is broken if refused
    for this limit while it asked no more (than the refused request; than the promise,
    after a reset to the whole allowance) and no other admitted-or-unknown request meets
    [s_i, h_k] (closed: a tie may have come between)."""
    order = np.argsort(r.s, kind="stable")
    s_sorted = r.s[order]
    maybe = r.maybe
    sp, hp = np.sort(r.s[maybe]), np.sort(r.hi[maybe])
    checked, broken_total = 0, 0
    examples: list[ResetExample] = []
    refused_with = r.refused & ~np.isnan(r.retry_after)
    has_reset = (maybe | r.refused) & ~np.isnan(r.rl_reset)
    sources = (
        ("retry-after", np.flatnonzero(refused_with), r.retry_after, r.lo),
        ("reset", np.flatnonzero(has_reset), r.rl_reset, np.full(r.n, float(promise.limit))),
    )
    for name, src, delay, allowed in sources:
        due = r.hi[src] + delay[src]
        nxt = np.searchsorted(s_sorted, due, side="left")
        followed = nxt < s_sorted.size
        i_pos, k_pos = src[followed], order[nxt[followed]]
        keep = k_pos != i_pos
        i_pos, k_pos = i_pos[keep], k_pos[keep]
        # others meeting [s_i, h_k]: s_j <= h_k and h_j >= s_i, less i itself when it
        # counts. Closed: one admitted at the same instant as i or k may have come after i
        # (taking the room) or before k.
        others = np.searchsorted(sp, r.hi[k_pos], side="right") - np.searchsorted(
            hp, r.s[i_pos], side="left"
        )
        others -= maybe[i_pos].astype(np.int64)
        asks_no_more = ~np.isnan(r.up[k_pos]) & (r.up[k_pos] <= allowed[i_pos])
        bad = r.refused[k_pos] & (others <= 0) & asks_no_more
        checked += int(i_pos.size)
        broken_total += int(bad.sum())
        bi, bk = i_pos[bad], k_pos[bad]
        room = max_examples - len(examples)
        examples += [
            ResetExample(name, a, float(delay[i]), b, _rounded(r.s[k]))
            for a, b, i, k in zip(
                _ids(ids, r.rows[bi[:room]]),
                _ids(ids, r.rows[bk[:room]]),
                bi[:room].tolist(),
                bk[:room].tolist(),
                strict=True,
            )
        ]
    if broken_total:
        verdict = Verdict.VIOLATED
    elif checked == 0:
        verdict = Verdict.INCONCLUSIVE
    else:
        verdict = Verdict.HELD
    return ResetCheck(checked, broken_total, tuple(examples), verdict)
