"""What a server tells its clients about the requests limit, checked against what it did:
the Retry-After promise on ``rate_limit_exceeded`` and the ``x-ratelimit-*`` headers."""

from __future__ import annotations

import numpy as np

from loadkit.analysis.intervals import count_covering
from loadkit.analysis.limits import (
    RemainingExample,
    RemainingHeaderCheck,
    RetryAfterCheck,
    RetryAfterExample,
)
from loadkit.analysis.outcome import HeaderAgreement, Verdict
from loadkit.analysis.verdicts import IdLookup, KeyView, Policy, rounded_s


def retry_after_check(kv: KeyView, max_examples: int, ids: IdLookup) -> RetryAfterCheck:
    """A ``rate_limit_exceeded`` with Retry-After D promises that a request sent D after
    the refusal is not refused for the same limit. Broken when the first request of the
    key sent at or after h_r + D is refused with ``rate_limit_exceeded`` and no other
    admitted-or-unknown request of the key overlaps (s_r, h_k) (nobody else took the slot)."""
    rate = np.flatnonzero(kv.rate429)
    has_d = rate[~np.isnan(kv.retry_after[rate])]
    order = np.argsort(kv.s, kind="stable")
    s_sorted = kv.s[order]
    due = kv.hi[has_d] + kv.retry_after[has_d]
    nxt = np.searchsorted(s_sorted, due, side="left")
    followed = nxt < s_sorted.size
    r_pos = has_d[followed]
    k_pos = order[nxt[followed]]
    distinct = k_pos != r_pos  # only with D = 0 and a zero-length refusal
    r_pos, k_pos = r_pos[distinct], k_pos[distinct]
    k_refused = kv.rate429[k_pos]
    maybe = kv.intervals("maybe")
    sp, hp = maybe.s_sorted, maybe.h_sorted
    # others meeting (s_r, h_k): s_j < h_k and h_j > s_r (k itself is a refusal, not counted)
    others = np.searchsorted(sp, kv.hi[k_pos], side="left") - np.searchsorted(
        hp, kv.s[r_pos], side="right"
    )
    broken = k_refused & (others <= 0)
    names_r = ids(kv.rows[r_pos[broken][:max_examples]])
    names_k = ids(kv.rows[k_pos[broken][:max_examples]])
    examples = tuple(
        RetryAfterExample(
            refused_id=a,
            retry_after_s=rounded_s(kv.retry_after[r]),
            refused_headers_s=rounded_s(kv.hi[r]),
            followup_id=b,
            followup_send_s=rounded_s(kv.s[k]),
        )
        for a, b, r, k in zip(
            names_r, names_k, r_pos[broken].tolist(), k_pos[broken].tolist(), strict=False
        )
    )
    if broken.any():
        verdict = Verdict.VIOLATED
    elif r_pos.size == 0:
        verdict = Verdict.INCONCLUSIVE
    else:
        verdict = Verdict.HELD
    return RetryAfterCheck(
        rate_limit_429s=int(rate.size),
        missing_retry_after=int(rate.size - has_d.size),
        checked=int(r_pos.size),
        followups_admitted=int((kv.admitted[k_pos] | kv.possible[k_pos]).sum()),
        followups_refused_slot_taken=int((k_refused & (others > 0)).sum()),
        broken=int(broken.sum()),
        examples=examples,
        verdict=verdict,
    )


def remaining_bounds(
    kv: KeyView, policy: Policy, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For admitted positions i: bounds on the admitted count in (a_i - W, a_i], i included.

    lower = 1 + #(admitted j != i with s_j > h_i - W and h_j <= s_i)  (certainly before i,
    certainly inside its window); upper = #(admitted-or-unknown j with h_j > s_i - W and
    s_j <= h_i)."""
    w = policy.window_s
    admitted = kv.intervals("admitted")
    sa, ha = admitted.s, admitted.h
    sa_sorted, ha_sorted = admitted.s_sorted, admitted.h_sorted
    s_i, h_i = kv.s[rows], kv.hi[rows]
    x = h_i - w
    ended_before = np.searchsorted(ha_sorted, s_i, side="right")  # h_j <= s_i
    started_early = np.searchsorted(sa_sorted, x, side="right")  # s_j <= h_i - W
    spanning = count_covering(sa, ha, x, s_i)  # s_j <= h_i - W and h_j > s_i
    self_counted = (h_i <= s_i).astype(np.int64)
    lower = ended_before - (started_early - spanning) - self_counted + 1
    maybe = kv.intervals("maybe")
    sp, hp = maybe.s_sorted, maybe.h_sorted
    upper = np.searchsorted(sp, h_i, side="right") - np.searchsorted(hp, s_i - w, side="right")
    return lower, upper


def remaining_header_check(
    kv: KeyView, policy: Policy, max_examples: int, ids: IdLookup
) -> RemainingHeaderCheck:
    """Does limit - remaining equal the admitted count in the request's window (within the
    timing bounds), and is the advertised limit the promised one?"""
    have = kv.admitted & ~np.isnan(kv.rl_limit) & ~np.isnan(kv.rl_remaining)
    pos = np.flatnonzero(have)
    if pos.size == 0:
        return RemainingHeaderCheck(
            checked=0,
            verdict=HeaderAgreement.INCONCLUSIVE,
            disagreements=0,
            examples=(),
            advertised_limits={},
            limit_mismatches=0,
        )
    lower, upper = remaining_bounds(kv, policy, pos)
    reported = kv.rl_limit[pos] - kv.rl_remaining[pos]
    bad = (reported < lower) | (reported > upper)
    bad_pos = pos[bad][:max_examples]
    names = ids(kv.rows[bad_pos])
    b_rep, b_lo, b_hi = (
        reported[bad][:max_examples],
        lower[bad][:max_examples],
        upper[bad][:max_examples],
    )
    limits, counts = np.unique(kv.rl_limit[pos], return_counts=True)
    return RemainingHeaderCheck(
        checked=int(pos.size),
        verdict=HeaderAgreement.DISAGREES if bad.any() else HeaderAgreement.AGREES,
        disagreements=int(bad.sum()),
        examples=tuple(
            RemainingExample(
                request_id=rid,
                send_s=rounded_s(kv.s[p]),
                reported_used=int(r),
                lower=int(lo),
                upper=int(hi),
            )
            for rid, p, r, lo, hi in zip(
                names, bad_pos.tolist(), b_rep.tolist(), b_lo.tolist(), b_hi.tolist(), strict=True
            )
        ),
        advertised_limits={str(int(v)): int(c) for v, c in zip(limits, counts, strict=True)},
        limit_mismatches=int((kv.rl_limit[pos] != policy.requests).sum()),
    )
