"""Limit verdicts per key: was the promised requests-per-window and concurrency limit
*enforced* (never more admitted than promised) and *honoured* (never refused when the
promise allowed the request)? Every verdict accounts for the client's timing
uncertainty: a request's admission instant is only known to lie in [send, headers].
``docs/verdicts.md`` states the rules; this module is their only implementation."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from loadkit.analysis.columns import INFERENCE_ENDPOINTS, OUTCOMES, Codes, Columns
from loadkit.analysis.intervals import (
    Intervals,
    holding_mask,
    touching_mask,
)
from loadkit.analysis.limits import (
    ConcurrencyEnforcedEvidence,
    ConcurrencyEvidence,
    ConcurrencyHonouredEvidence,
    ConcurrencyVerdict,
    FlightRefusal,
    Offered,
    RefusalCounts,
    RequestsEnforcedEvidence,
    RequestsEvidence,
    RequestsHonouredEvidence,
    RequestsVerdict,
    Tolerance,
    WindowRefusal,
)
from loadkit.analysis.outcome import Refused, Verdict
from loadkit.outcomes import ADMITTED, Outcome

IdLookup = Callable[[np.ndarray], list[str]]


@dataclass(frozen=True)
class Policy:
    """A tier's promise: ``requests`` per ``window_s`` seconds, ``concurrency`` in flight."""

    requests: int
    window_s: float
    concurrency: int

    @classmethod
    def from_dict(cls, tier: str, d: Mapping[str, Any]) -> Policy:
        try:
            p = cls(int(d["requests"]), float(d["window_s"]), int(d["concurrency"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"run.json tiers.{tier}: needs requests, window_s, concurrency ({exc})"
            ) from None
        if p.requests < 1 or p.window_s <= 0 or p.concurrency < 1:
            raise ValueError(f"run.json tiers.{tier}: limits must be positive, got {d}")
        return p


@dataclass(frozen=True)
class ModelPolicy:
    """A model's own request window and/or concurrency promise in a tier (run.json
    ``tiers.T.models.M``), judged on each key's requests to the model. ``policy`` holds
    them; a promise the model does not make is the tier's there, and is not judged."""

    model: str
    policy: Policy
    requests: bool
    concurrency: bool


def model_policies(tier: str, d: Mapping[str, Any], base: Policy) -> tuple[ModelPolicy, ...]:
    """The models of run.json's ``tiers.TIER`` that promise a request window or a
    concurrency cap of their own (a window left out is the tier's)."""
    models = d.get("models") or {}
    if not isinstance(models, Mapping):
        raise ValueError(f"run.json tiers.{tier}.models: expected a table, got {models!r}")
    out = []
    for m, md in models.items():
        where = f"run.json tiers.{tier}.models.{m}"
        if not isinstance(md, Mapping):
            raise ValueError(f"{where}: expected a table, got {md!r}")
        req, conc = md.get("requests"), md.get("concurrency")
        if req is None and conc is None:
            continue
        try:
            window = md.get("window_s")
            p = Policy(
                base.requests if req is None else int(req),
                base.window_s if window is None else float(window),
                base.concurrency if conc is None else int(conc),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        if p.requests < 1 or p.window_s <= 0 or p.concurrency < 1:
            raise ValueError(f"{where}: limits must be positive, got {dict(md)}")
        out.append(ModelPolicy(str(m), p, req is not None, conc is not None))
    return tuple(out)


@dataclass(frozen=True)
class VerdictSettings:
    """Tolerances of the verdicts; all are stated in summary.json."""

    concurrency_margin_s: float = 0.002  # delivery / event-loop slack before end_s
    under_admission_tolerance: float = 0.05  # honoured needs >= (1 - tol) * N admitted
    burst_window_s: float = 1.0  # "largest burst" = most requests sent within this span
    max_examples: int = 20  # refusals / disagreements listed as examples
    # A requests limit reads ``held`` with a possible excess only while the shortfall of the
    # span is at most this part of the window (and within the timing uncertainty): a cap on
    # what a held verdict accepts, so a coarse clock can only weaken a verdict.
    max_shortfall_fraction: float = 0.05


@dataclass(frozen=True)
class KeyView:
    """One key's requests to the limited endpoints (all of them, or those to one model for
    a model's own promise: ``model``), as arrays aligned by position.

    ``hi`` is the latest instant the request can have been admitted: headers_s, or end_s
    when no headers arrived. ``rate429`` and ``conc429`` are the refusals of the requests
    and concurrency limits the view judges (the key's, or the model's own); ``other429``
    the unattributed ones (judged against both of the key's limits, and by no model's:
    ``judge_unattributed``); ``elsewhere429`` those of a limit neither verdict judges
    (tokens, per day, the other scope's limits), which never reached these limits.
    ``tok429`` and ``model429`` count the token and model-scoped refusals."""

    rows: np.ndarray
    s: np.ndarray
    hi: np.ndarray
    e: np.ndarray
    status: np.ndarray
    admitted: np.ndarray  # the answer shows the limiter let it through (outcomes.ADMITTED)
    possible: np.ndarray  # no response: the server may or may not have admitted it
    rate429: np.ndarray
    conc429: np.ndarray
    tok429: np.ndarray
    other429: np.ndarray
    elsewhere429: np.ndarray
    model429: np.ndarray
    auth: np.ndarray  # the key was not accepted (401, a 403 that is not the API's)
    retry_after: np.ndarray
    rl_limit: np.ndarray
    rl_remaining: np.ndarray
    signal: Codes  # limit_signal: what in a 429 named its limit
    stream: np.ndarray  # streamed: the headers came before the body
    model: str | None = None
    judge_unattributed: bool = True
    # what the verdicts computed on these requests, shared between them (``intervals``,
    # ``offered_load``); ``forget`` drops it
    memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n(self) -> int:
        return int(self.rows.size)

    def intervals(self, which: str) -> Intervals:
        """The view's requests as intervals, sorted once: ``admitted`` [s, hi] of the
        admitted, ``maybe`` [s, hi] and ``maybe_end`` [s, e] of the admitted-or-unknown,
        ``reached_end`` [s, e] of those that reached the limiters."""
        iv = self.memo.get(which)
        if iv is None:
            masks = {
                "admitted": self.admitted,
                "maybe": self.maybe,
                "maybe_end": self.maybe,
                "reached_end": self.reached,
            }
            ends = self.hi if which in ("admitted", "maybe") else self.e
            mask = masks[which]
            # The same requests with the same ends (no request of unknown fate, or no 429):
            # one set of sorted copies, not two (~56 bytes a request).
            alike = _ALIKE[which]
            iv = self.memo.get(alike)
            if iv is None or not np.array_equal(mask, masks[alike]):
                iv = Intervals(self.s[mask], ends[mask])
            self.memo[which] = iv
        assert isinstance(iv, Intervals)
        return iv

    def forget(self) -> None:
        """Drop what the verdicts shared (sorted copies of the view's times)."""
        self.memo.clear()

    @property
    def maybe(self) -> np.ndarray:
        return np.asarray(self.admitted | self.possible)

    @property
    def reached(self) -> np.ndarray:
        """Requests the target's limiters decided on, or may have: admitted, refused with
        429, or no response. Not a wrong route, a page that is not the API's, a refused key,
        a refused connection or a request never sent."""
        return np.asarray(self.maybe | (self.status == 429))


# The interval kind that shares its ends with each (``KeyView.intervals``).
_ALIKE = {
    "admitted": "maybe",
    "maybe": "admitted",
    "maybe_end": "reached_end",
    "reached_end": "maybe_end",
}


def key_view(cols: Columns, key_code: int, rows: np.ndarray | None = None) -> KeyView:
    """The key's requests to the inference endpoints; ``rows``: those rows, when the
    caller found them already (``rows_by_key``)."""
    if rows is None:
        sel = (cols.key.codes == key_code) & cols.endpoint.isin(INFERENCE_ENDPOINTS)
        rows = np.flatnonzero(sel)
    return view_of_rows(cols, rows)


def rows_by_key(cols: Columns) -> list[np.ndarray]:
    """Each key code's rows to the inference endpoints, ascending (one sort for all keys,
    not one scan of every row per key)."""
    inference = np.flatnonzero(cols.endpoint.isin(INFERENCE_ENDPOINTS))
    if cols.n < 2**31:  # the views keep their rows until the charts: half the memory
        inference = inference.astype(np.int32)
    codes = cols.key.codes[inference]
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(cols.key.names) + 1), side="left")
    return [
        np.asarray(inference[order[bounds[c] : bounds[c + 1]]]) for c in range(len(cols.key.names))
    ]


def model_view(cols: Columns, key_code: int, model: str) -> KeyView:
    """The key's requests to ``model``, for that model's own promise: the same verdicts
    on the subset, judging the model-scoped refusals (``model_requests``,
    ``model_concurrency``) as the key's view judges the key's."""
    sel = (cols.key.codes == key_code) & cols.endpoint.isin(INFERENCE_ENDPOINTS)
    if cols.tokens is None:
        sel = np.zeros(cols.n, dtype=bool)
    else:
        sel &= cols.tokens.model_rows(model)
    return view_of_rows(cols, np.flatnonzero(sel), model)


_ADMITTED = [OUTCOMES.index(o) for o in ADMITTED]
_NO_RESPONSE = OUTCOMES.index(Outcome.NO_RESPONSE)
_AUTH = OUTCOMES.index(Outcome.AUTH)


_MODEL_KINDS = (Refused.MODEL_REQUESTS, Refused.MODEL_CONCURRENCY)
# Refusals of limits that no requests/concurrency verdict of a key's view judges.
_KEY_ELSEWHERE = (Refused.TOKENS, Refused.DAILY, *_MODEL_KINDS)


def view_of_rows(cols: Columns, rows: np.ndarray, model: str | None = None) -> KeyView:
    """``rows``' view; ``model`` set: judged against that model's own limits."""
    s = cols.send[rows]
    e = cols.end[rows]
    hdr = cols.headers[rows]
    hi = np.where(np.isnan(hdr), e, hdr)
    st = cols.status[rows]
    out = cols.outcome[rows]
    te = cols.transport_error.codes[rows]
    refused = cols.refused[rows]
    # No response: the server may have admitted it, unless the connection was refused (it
    # never reached the server) or the request was never sent; one cancelled while open may
    # have been admitted.
    no_answer = (out == _NO_RESPONSE) & (te != cols.transport_error.code_of("refused"))
    cancelled_open = (st == 0) & (te == cols.transport_error.code_of("cancelled"))
    unattributed = refused == Refused.UNATTRIBUTED
    if model is None:
        rate, conc = refused == Refused.REQUESTS, refused == Refused.CONCURRENCY
        elsewhere = np.isin(refused, _KEY_ELSEWHERE)
    else:
        rate, conc = refused == Refused.MODEL_REQUESTS, refused == Refused.MODEL_CONCURRENCY
        # The key's refusals, tokens, per day, and the unattributed (judged by the key's
        # verdicts, as ever: a client that cannot tell the limits apart cannot judge a
        # model's by them).
        elsewhere = (refused != Refused.NOT_REFUSED) & ~rate & ~conc
    return KeyView(
        rows=rows,
        s=s,
        hi=hi,
        e=e,
        status=st,
        admitted=np.isin(out, _ADMITTED),
        possible=no_answer | cancelled_open,
        rate429=rate,
        conc429=conc,
        tok429=refused == Refused.TOKENS,
        other429=unattributed,
        elsewhere429=elsewhere,
        model429=np.isin(refused, _MODEL_KINDS),
        auth=out == _AUTH,
        retry_after=cols.retry_after[rows],
        rl_limit=cols.rl_limit[rows],
        rl_remaining=cols.rl_remaining[rows],
        signal=Codes(cols.limit_signal.codes[rows], cols.limit_signal.names),
        stream=cols.stream[rows],
        model=model,
        judge_unattributed=model is None,
    )


MAX_SIGNALS = 10


def signal_counts(signal: Codes) -> dict[str, int]:
    """How often each ``limit_signal`` decided (most common first; "none" for a 429 that
    named no limit)."""
    vals, counts = np.unique(signal.codes, return_counts=True)
    order = sorted(zip(vals.tolist(), counts.tolist(), strict=True), key=lambda x: (-x[1], x[0]))
    return {(signal.label(v) or "none"): c for v, c in order[:MAX_SIGNALS]}


def refusal_counts(kv: KeyView) -> RefusalCounts:
    """The key's 429s by the limit that refused them, and what said so."""
    refused = kv.status == 429
    return RefusalCounts(
        requests=int(kv.rate429.sum()),
        concurrency=int(kv.conc429.sum()),
        tokens=int(kv.tok429.sum()),
        unattributed=int(kv.other429.sum()),
        signals=signal_counts(Codes(kv.signal.codes[refused], kv.signal.names)),
        # A model's view counts its own as requests / concurrency.
        models=(int(kv.model429.sum()) or None) if kv.model is None else None,
    )


def _count_le(sorted_vals: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.searchsorted(sorted_vals, x, side="right")


def _count_lt(sorted_vals: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.searchsorted(sorted_vals, x, side="left")


def offered_load(kv: KeyView, policy: Policy, settings: VerdictSettings) -> Offered:
    """What the client asked of the limiter: a limiter is only caught doing what this provoked.
    The maxima count the requests that reached it (``KeyView.reached``)."""
    memo_key = ("offered", policy, settings.burst_window_s)
    done = kv.memo.get(memo_key)
    if isinstance(done, Offered):
        return done
    reached = kv.intervals("reached_end")
    in_window, w_start = reached.span_max(policy.window_s)
    burst, _ = reached.span_max(settings.burst_window_s)
    conc, c_at = reached.overlap_max(closed=True)
    kv.memo[memo_key] = offered = Offered(
        requests=kv.n,
        admitted=int(kv.admitted.sum()),
        possibly_admitted=int(kv.possible.sum()),
        refused_rate_limit=int(kv.rate429.sum()),
        refused_concurrency=int(kv.conc429.sum()),
        refused_other_429=int(kv.other429.sum()),
        unauthorized=int(kv.auth.sum()),
        max_in_window=in_window,
        max_in_window_start_s=rounded_s(w_start),
        max_in_burst=burst,
        burst_window_s=settings.burst_window_s,
        max_concurrent=conc,
        max_concurrent_at_s=rounded_s(c_at),
        refused_tokens=int(kv.tok429.sum()),
    )
    return offered


def rounded_s(x: float) -> float | None:
    """An instant for the evidence: seconds to the microsecond (the records' precision);
    None for NaN."""
    return None if x != x else round(float(x), 6)


def _subset(kv: KeyView, mask: np.ndarray, whole: str) -> Intervals:
    """The intervals of ``kv.intervals(whole)``'s kind for the requests of ``mask`` (a
    subset of them): the shared ones, already sorted and counted, when it is all of them."""
    iv = kv.intervals(whole)
    if int(np.count_nonzero(mask)) == iv.n:
        return iv
    ends = kv.e if whole.endswith("_end") else kv.hi
    return Intervals(kv.s[mask], ends[mask])


def _pick(mask: np.ndarray) -> np.ndarray:
    return np.asarray(np.flatnonzero(mask))


def requests_verdict(
    kv: KeyView, policy: Policy, settings: VerdictSettings, ids: IdLookup
) -> RequestsVerdict:
    """Requests-per-window: enforced, honoured, observed maxima and their evidence."""
    n_lim, w = policy.requests, policy.window_s
    adm, maybe = kv.admitted, kv.maybe
    sa, ha, rows_a = kv.s[adm], kv.hi[adm], kv.rows[adm]
    sp, hp = kv.s[maybe], kv.hi[maybe]

    # Certain: the most admitted intervals that fit wholly inside one [s_i, s_i + W).
    certain = 0
    ev_enf = RequestsEnforcedEvidence()
    if sa.size:
        certain, at = kv.intervals("admitted").contained_max(w)
        members = _pick((sa >= at) & (ha < at + w))
        members = members[np.argsort(ha[members], kind="stable")]
        if certain > n_lim:
            members = members[: n_lim + 1]
        if members.size:
            ev_enf = RequestsEnforcedEvidence(
                certain_span_s=(rounded_s(at), rounded_s(float(ha[members].max()))),
                certain_count=certain,
                request_ids=tuple(ids(rows_a[members])),
            )
    # Possible: the most admitted-or-unknown intervals touching one [t, t + W).
    possible, t = kv.intervals("maybe").touching_max(w)
    if sp.size:
        ev_enf = replace(ev_enf, possible_span_s=(rounded_s(t), rounded_s(t + w)))
        if possible > n_lim and certain <= n_lim:
            touch = _pick(touching_mask(sp, hp, t, w))
            ev_enf = replace(
                ev_enf, possible_request_ids=tuple(ids(kv.rows[maybe][touch][: n_lim + 1]))
            )

    offered = offered_load(kv, policy, settings)
    tolerance, within = requests_tolerance(kv, policy, settings)
    enforced = _enforced(certain, possible, offered.max_in_window, n_lim, within)

    honoured, ev_hon = _requests_honoured(kv, policy, settings, possible, ids)
    return RequestsVerdict(
        promised=n_lim,
        window_s=w,
        observed_max=certain,
        observed_max_possible=possible,
        enforced=enforced,
        honoured=honoured,
        evidence=RequestsEvidence(enforced=ev_enf, honoured=ev_hon),
        offered=offered,
        tolerance=tolerance,
    )


def justified_by_requests(kv: KeyView, refused: np.ndarray, policy: Policy) -> np.ndarray:
    """For each refused position r: an upper bound on the admitted requests in its window,
    #(admitted-or-unknown j with [s_j, h_j] meeting [s_r - W, h_r])."""
    maybe = kv.intervals("maybe")
    sp, hp = maybe.s_sorted, maybe.h_sorted
    s_r, h_r = kv.s[refused], kv.hi[refused]
    return np.asarray(_count_le(sp, h_r) - _count_lt(hp, s_r - policy.window_s))


def in_flight_upper(kv: KeyView, refused: np.ndarray) -> np.ndarray:
    """For each refused position r: #(admitted-or-unknown j with [s_j, e_j] meeting
    [s_r, h_r]), an upper bound on what was in flight when it was refused."""
    maybe = kv.intervals("maybe_end")
    sp, ep = maybe.s_sorted, maybe.h_sorted
    s_r, h_r = kv.s[refused], kv.hi[refused]
    return np.asarray(_count_le(sp, h_r) - _count_lt(ep, s_r))


def _window_examples(
    kv: KeyView, pos: np.ndarray, counts: np.ndarray, ids: IdLookup, limit: int
) -> tuple[WindowRefusal, ...]:
    pos, counts = pos[:limit], counts[:limit]
    names = ids(kv.rows[pos])
    return tuple(
        WindowRefusal(rid, rounded_s(kv.s[p]), rounded_s(kv.hi[p]), int(c))
        for rid, p, c in zip(names, pos.tolist(), counts.tolist(), strict=True)
    )


def _flight_examples(
    kv: KeyView, pos: np.ndarray, counts: np.ndarray, ids: IdLookup, limit: int
) -> tuple[FlightRefusal, ...]:
    pos, counts = pos[:limit], counts[:limit]
    names = ids(kv.rows[pos])
    return tuple(
        FlightRefusal(rid, rounded_s(kv.s[p]), rounded_s(kv.hi[p]), int(c))
        for rid, p, c in zip(names, pos.tolist(), counts.tolist(), strict=True)
    )


def _enforced(certain: int, possible: int, offered_max: int, limit: int, within: bool) -> Verdict:
    """violated when proven; possible when only timing uncertainty allows it and more than
    the measured tolerance (``within``: the possible excess fits in it); inconclusive when
    the load never exceeded the limit; held otherwise (both kinds of limit)."""
    if certain > limit:
        return Verdict.VIOLATED
    if possible > limit and not within:
        return Verdict.POSSIBLE
    if offered_max <= limit:
        return Verdict.INCONCLUSIVE
    return Verdict.HELD


REQUESTS_BASIS = (
    "the two longest [send, headers] intervals of the key's admitted requests: N + 1 "
    "admissions of a correct limiter, W apart, can look closer by at most the first one's "
    "(admitted at its send, seen at its headers) and the last one's (sent before it was "
    "admitted)"
)
CONCURRENCY_BASIS = (
    "twice the longest [send, headers] interval of the key's refusals and streamed "
    "requests, whose headers are the limiter's answer: a request can have been admitted "
    "that long after it was sent, and the end of the one it replaced seen that long after"
)
NOT_STREAMED = (
    "none of this key's admitted requests was streamed: a non-streamed response's headers "
    "come with its last byte, so the client never knows such a request was in flight before "
    "it ended, and a cap set too high can never be proven from its timestamps (at most "
    "possible)"
)


def _longest_two(x: np.ndarray) -> float:
    if x.size == 0:
        return float("nan")
    top = np.sort(x)[-2:]
    return float(top.sum())


def requests_tolerance(
    kv: KeyView, policy: Policy, settings: VerdictSettings
) -> tuple[Tolerance, bool]:
    """The requests limit's timing tolerance and margin, and whether the possible excess
    (if any) lies within it. A correct limiter admits the N + 1 requests closest together
    at least W apart: a_last - a_first >= W. The client can only place them as close as
    s_last - h_first >= W - (h_first - a_first) - (a_last - s_last), so a correct limiter
    looks short of W by at most two requests' [send, headers] widths. The sum of the two
    longest widths measured on the key bounds that for every N + 1 at once: a correct
    limiter always reads held, and the statement it reads ("never more than N in any
    W + margin span") is proven by the timestamps whatever the tolerance. A shortfall is
    accepted only up to ``max_shortfall_fraction`` of W, however coarse the timing."""
    w = policy.window_s
    gap, _ = kv.intervals("maybe").shortest_touching_span(policy.requests + 1)
    margin = gap - w if np.isfinite(gap) else None
    adm = kv.admitted
    tau = _longest_two(kv.hi[adm] - kv.s[adm])
    tol = Tolerance(
        timing_uncertainty_s=rounded_s(tau),
        margin_s=None if margin is None else rounded_s(margin),
        basis=REQUESTS_BASIS,
    )
    within = (
        margin is None
        or margin >= 0
        or (-margin <= tau and -margin <= settings.max_shortfall_fraction * w)
    )
    return tol, within


def concurrency_tolerance(
    kv: KeyView, policy: Policy, settings: VerdictSettings
) -> tuple[Tolerance, bool]:
    """The concurrency limit's timing tolerance and margin, and whether the possible excess
    (if any) lies within it. C + 1 requests of a correct limiter are never in flight
    together: one (x) was admitted after another (y) ended. The client may still see all
    C + 1 open together for up to (a_x - s_x) + (e_y - r_y): x's wait for its decision and
    the delay before y's end reached it. Both are bounded by the longest round trip in
    which the key heard the limiter's own answer (a refusal, or a stream's headers).
    Applied to non-streamed requests this assumes they were decided as fast; a key with
    none streamed is therefore never decided by a tolerance (``limitation``)."""
    overlap, _ = kv.intervals("maybe_end").longest_common_overlap(policy.concurrency + 1)
    margin = -overlap if np.isfinite(overlap) else None
    decisive = (kv.status == 429) | (kv.admitted & kv.stream)
    widths = kv.hi[decisive] - kv.s[decisive]
    tau = 2.0 * float(widths.max()) if widths.size else float("nan")
    streamed = bool((kv.admitted & kv.stream).any())
    tol = Tolerance(
        timing_uncertainty_s=rounded_s(tau),
        margin_s=None if margin is None else rounded_s(margin),
        basis=CONCURRENCY_BASIS,
        limitation=None if streamed or not kv.admitted.any() else NOT_STREAMED,
    )
    within = margin is None or margin > 0 or (streamed and tau == tau and -margin <= tau)
    return tol, within


def _uncoded_unjustified(kv: KeyView, policy: Policy) -> tuple[np.ndarray, np.ndarray]:
    pos = _pick(kv.other429 & kv.judge_unattributed)
    if pos.size == 0:
        return pos, pos
    by_req = justified_by_requests(kv, pos, policy)
    by_conc = in_flight_upper(kv, pos)
    bad = (by_req < policy.requests) & (by_conc < policy.concurrency)
    return pos[bad], by_req[bad]


def _requests_honoured(
    kv: KeyView, policy: Policy, settings: VerdictSettings, possible_max: int, ids: IdLookup
) -> tuple[Verdict, RequestsHonouredEvidence]:
    n_lim = policy.requests
    rate_pos = _pick(kv.rate429)
    in_window = justified_by_requests(kv, rate_pos, policy)
    bad = in_window < n_lim
    unc_pos, unc_cnt = _uncoded_unjustified(kv, policy)
    # Load that the requests limiter had to decide on: what reached the target, less the
    # refusals of the other limits (an unattributed 429 that the concurrency cap could
    # explain counts as one of those).
    eligible = kv.reached & ~kv.conc429 & ~kv.elsewhere429
    other_pos = _pick(kv.other429 & kv.judge_unattributed)
    if other_pos.size:
        eligible[other_pos[in_flight_upper(kv, other_pos) >= policy.concurrency]] = False
    eligible_max, _ = _subset(kv, eligible, "reached_end").span_max(policy.window_s)
    floor = (1.0 - settings.under_admission_tolerance) * n_lim
    under = eligible_max > n_lim and possible_max < floor
    ev = RequestsHonouredEvidence(
        rate_limit_429s=int(rate_pos.size),
        unjustified_429s=int(bad.sum()),
        unjustified_examples=_window_examples(
            kv, rate_pos[bad], in_window[bad], ids, settings.max_examples
        ),
        unjustified_uncoded_429s=int(unc_pos.size),
        unjustified_uncoded_examples=_window_examples(
            kv, unc_pos, unc_cnt, ids, settings.max_examples
        ),
        offered_max_in_window=eligible_max,
        under_admission=under,
        admitted_floor=floor,
        tolerance=settings.under_admission_tolerance,
        refusals=refusal_counts(kv),
    )
    if bad.any() or unc_pos.size or under:
        return Verdict.VIOLATED, ev
    if eligible_max <= n_lim:
        return Verdict.INCONCLUSIVE, ev
    return Verdict.HELD, ev


def concurrency_verdict(
    kv: KeyView, policy: Policy, settings: VerdictSettings, ids: IdLookup
) -> ConcurrencyVerdict:
    """Concurrent requests in flight: enforced and honoured, with evidence."""
    c_lim = policy.concurrency
    adm, maybe = kv.admitted, kv.maybe
    # Certainly in flight: headers received .. end minus the delivery margin (admitted only).
    c_start, c_end = kv.hi[adm], kv.e[adm] - settings.concurrency_margin_s
    certain, t_c = Intervals(c_start, c_end).overlap_max(closed=False)
    # Possibly in flight: send .. end (admitted or unknown).
    possible, t_p = kv.intervals("maybe_end").overlap_max(closed=True)
    ev_enf = ConcurrencyEnforcedEvidence()
    if certain:
        held = _pick(holding_mask(c_start, c_end, t_c, closed=False))
        ev_enf = replace(
            ev_enf,
            certain_instant_s=rounded_s(t_c),
            request_ids=tuple(ids(kv.rows[adm][held][: max(c_lim + 1, 1)])),
        )
    if possible:
        ev_enf = replace(ev_enf, possible_instant_s=rounded_s(t_p))
        if possible > c_lim and certain <= c_lim:
            held = _pick(holding_mask(kv.s[maybe], kv.e[maybe], t_p, closed=True))
            ev_enf = replace(
                ev_enf, possible_request_ids=tuple(ids(kv.rows[maybe][held][: c_lim + 1]))
            )
    offered = offered_load(kv, policy, settings)
    tolerance, within = concurrency_tolerance(kv, policy, settings)
    enforced = _enforced(certain, possible, offered.max_concurrent, c_lim, within)

    conc_pos = _pick(kv.conc429)
    in_flight = in_flight_upper(kv, conc_pos)
    bad = in_flight < c_lim
    unc_pos, _ = _uncoded_unjustified(kv, policy)
    unc_flight = in_flight_upper(kv, unc_pos)
    eligible = kv.reached & ~kv.rate429 & ~kv.elsewhere429
    eligible_max, _ = _subset(kv, eligible, "reached_end").overlap_max(closed=True)
    ev_hon = ConcurrencyHonouredEvidence(
        concurrency_429s=int(conc_pos.size),
        unjustified_429s=int(bad.sum()),
        unjustified_examples=_flight_examples(
            kv, conc_pos[bad], in_flight[bad], ids, settings.max_examples
        ),
        unjustified_uncoded_429s=int(unc_pos.size),
        unjustified_uncoded_examples=_flight_examples(
            kv, unc_pos, unc_flight, ids, settings.max_examples
        ),
        offered_max_concurrent=eligible_max,
        refusals=refusal_counts(kv),
    )
    if bad.any() or unc_pos.size:
        honoured = Verdict.VIOLATED
    elif eligible_max < c_lim:
        # Driven at its cap (C open at once) the key tested honouring: a request sent with
        # C - 1 in flight must be admitted (a slot freed late refuses it).
        honoured = Verdict.INCONCLUSIVE
    else:
        honoured = Verdict.HELD
    return ConcurrencyVerdict(
        promised=c_lim,
        observed_max=certain,
        observed_max_possible=possible,
        enforced=enforced,
        honoured=honoured,
        margin_s=settings.concurrency_margin_s,
        evidence=ConcurrencyEvidence(enforced=ev_enf, honoured=ev_hon),
        offered=offered,
        tolerance=tolerance,
    )
