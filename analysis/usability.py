"""Per key, what the target answered (status classes, 429s by the limit that refused them)
and whether those answers are evidence about its limits at all. A key whose requests mostly
got answers that are not the API's (a wrong URL or path layout, a refused key, no answer)
is *unusable*: its limits cannot be judged and the run's verdict is ``error``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadkit.analysis.codec import JsonRecord, omit_none
from loadkit.analysis.columns import INFERENCE_ENDPOINTS, OUTCOMES, Codes, Columns
from loadkit.analysis.limits import RefusalCounts
from loadkit.analysis.outcome import Refused
from loadkit.analysis.verdicts import signal_counts
from loadkit.api import SEED
from loadkit.outcomes import ADMITTED, UNUSABLE, Outcome, describe_status
from loadkit.runmeta import RunMeta

#: A key is unusable when more than this share of its requests (cancelled ones left out)
#: got answers that are not evidence about the limiter (``loadkit.outcomes.UNUSABLE``).
UNUSABLE_SHARE = 0.5
DEFAULT_AUTH = "Authorization: Bearer <key>"
_TRANSPORT_WORDS = {
    "refused": "connection refused",
    "timeout": "timed out",
    "reset": "connection reset",
}


@dataclass(frozen=True)
class KeyAnswers(JsonRecord):
    """summary.json's ``keys[]``: one key's inference requests (chat, completions; every
    attempt) by what the target answered."""

    key: str
    tier: str | None
    requests: int
    ok: int  # 2xx
    limited: RefusalCounts  # 429s by the limit that refused them
    client_error: int  # 4xx other than 429
    server_error: int  # 5xx
    other_status: int  # 1xx, 3xx
    no_response: int  # no status (transport failure)
    cancelled: int  # stopped with the run: open, or queued and never sent
    admitted: int  # the answer shows the limiter let it through
    not_api: int  # a wrong route, 405/501, an error page that is not the API's
    auth: int  # the key was not accepted (401, a 403 that is not the API's error)
    usable: bool
    problem: str | None = omit_none()  # why not, naming the count, status and URL

    @property
    def judged(self) -> int:
        """Requests whose answer is the target's doing (cancelled ones left out)."""
        return self.requests - self.cancelled


def endpoint_url(meta: RunMeta, endpoint: str) -> str:
    """The URL the run sent ``endpoint`` requests to: run.json's target and its
    ``target_api`` paths (the seed's layout when run.json predates them)."""
    api: Mapping[str, Any] = meta.target_api if isinstance(meta.target_api, Mapping) else {}
    paths = api.get("paths")
    path = paths.get(endpoint) if isinstance(paths, Mapping) else None
    if not isinstance(path, str):
        path = SEED.path(endpoint, "{model}")
    return str(meta.target).rstrip("/") + path


def _auth_style(meta: RunMeta) -> str:
    api = meta.target_api if isinstance(meta.target_api, Mapping) else {}
    auth = api.get("auth")
    return auth if isinstance(auth, str) and auth else DEFAULT_AUTH


def _count(what: Counter[Any], top: int = 3) -> list[tuple[Any, int]]:
    return sorted(what.items(), key=lambda kv: (-kv[1], str(kv[0])))[:top]


def _counts(values: np.ndarray) -> Counter[int]:
    vals, counts = np.unique(values, return_counts=True)
    return Counter(dict(zip(vals.tolist(), counts.tolist(), strict=True)))


def _no_response_text(kinds: Counter[str]) -> str:
    if not kinds:
        return "no response"
    if len(kinds) == 1:
        return f"no response ({next(iter(kinds))})"
    return "no response (" + ", ".join(f"{k} ×{n:,}" for k, n in _count(kinds)) + ")"


def _hint(outcome: Outcome, status: int, kind: str | None, media: str | None, auth: str) -> str:
    """What a user should check, from the commonest unusable answer."""
    if outcome is Outcome.AUTH:
        return f"check the key / auth header ({auth})"
    if outcome is Outcome.NO_RESPONSE:
        words = _TRANSPORT_WORDS.get(kind or "", kind or "no status")
        return f"the target did not answer ({words}): is it up, and reachable at that address?"
    if status in (404, 405):
        return "wrong base URL or api layout?"
    if status == 501:
        return "the target does not implement it: not an OpenAI-compatible API?"
    page = f"a {media} page" if media else "no JSON error body"
    if status >= 500:
        return f"the target, or a proxy in front of it, failed without the API's error ({page})"
    return f"the answers are not the API's ({page}): a proxy or another service at that address?"


def unusable_problem(cols: Columns, rows: np.ndarray, meta: RunMeta, label: str) -> str:
    """ "all 43,894 requests of free-2 got 404 Not Found from http://…/ai/chat/completions:
    wrong base URL or api layout?" for the key's unusable ``rows`` (its inference requests
    that were not cancelled are the denominator)."""
    out = cols.outcome[rows]
    bad_rows = rows[np.isin(out, [OUTCOMES.index(o) for o in UNUSABLE])]
    judged = int((out != OUTCOMES.index(Outcome.CANCELLED)).sum())
    statuses = _counts(cols.status[bad_rows])
    te = cols.transport_error.codes[bad_rows[cols.status[bad_rows] == 0]]
    kinds: Counter[str] = Counter(
        {cols.transport_error.names[c]: n for c, n in _counts(te[te >= 0]).items()}
    )
    labels = []
    for status, n in _count(statuses):
        text = _no_response_text(kinds) if status == 0 else describe_status(int(status))
        labels.append(text if len(statuses) == 1 else f"{text} ×{n:,}")
    if len(statuses) > 3:
        labels.append("…")
    # The hint and URL follow the commonest unusable answer.
    combos = np.stack(
        [
            cols.outcome[bad_rows].astype(np.int64),
            cols.status[bad_rows],
            cols.transport_error.codes[bad_rows].astype(np.int64),
            cols.content_type.codes[bad_rows].astype(np.int64),
            cols.endpoint.codes[bad_rows].astype(np.int64),
        ],
        axis=1,
    )
    uniq, n_of = np.unique(combos, axis=0, return_counts=True)
    o, status, te_code, ct, ep = (int(x) for x in uniq[int(np.argmax(n_of))])
    hint = _hint(
        OUTCOMES[o],
        status,
        cols.transport_error.label(te_code),
        cols.content_type.label(ct),
        _auth_style(meta),
    )
    url = endpoint_url(meta, cols.endpoint.label(ep) or "chat")
    bad = int(bad_rows.size)
    scope = f"all {judged:,}" if bad == judged else f"{bad:,} of {judged:,}"
    return f"{scope} requests of {label} got {', '.join(labels)} from {url}: {hint}"


def key_answers(meta: RunMeta, cols: Columns, tiers: Mapping[str, str]) -> list[KeyAnswers]:
    """Every key that sent inference requests, in the order of ``cols.key.names``."""
    inference = cols.endpoint.isin(INFERENCE_ENDPOINTS)
    k = cols.key.codes
    n_keys = len(cols.key.names)

    def per_key(mask: np.ndarray) -> list[int]:
        sel = inference & mask & (k >= 0)
        return [int(x) for x in np.bincount(k[sel], minlength=n_keys)]

    def outcome(*outs: Outcome) -> list[int]:
        return per_key(cols.outcome_in(set(outs)))

    st = cols.status
    total = per_key(np.ones(cols.n, dtype=bool))
    ok = per_key((st >= 200) & (st < 300))
    refused = {r: per_key(cols.refused == r) for r in Refused if r is not Refused.NOT_REFUSED}
    client = per_key((st >= 400) & (st < 500) & (st != 429))
    server = per_key(st >= 500)
    other = per_key(((st > 0) & (st < 200)) | ((st >= 300) & (st < 400)))
    no_resp = outcome(Outcome.NO_RESPONSE)
    cancelled = outcome(Outcome.CANCELLED)
    admitted = outcome(*ADMITTED)
    not_api = outcome(Outcome.NOT_API)
    auth = outcome(Outcome.AUTH)
    limited_rows = np.flatnonzero(inference & (st == 429))
    out = []
    for code, label in enumerate(cols.key.names):
        if total[code] == 0:
            continue
        judged = total[code] - cancelled[code]
        bad = not_api[code] + auth[code] + no_resp[code]
        usable = not (judged > 0 and bad > UNUSABLE_SHARE * judged)
        mine = limited_rows[k[limited_rows] == code]
        problem = None
        if not usable:
            rows = np.flatnonzero(inference & (k == code))
            problem = unusable_problem(cols, rows, meta, label)
        out.append(
            KeyAnswers(
                key=label,
                tier=tiers.get(label),
                requests=total[code],
                ok=ok[code],
                limited=RefusalCounts(
                    requests=refused[Refused.REQUESTS][code],
                    concurrency=refused[Refused.CONCURRENCY][code],
                    tokens=refused[Refused.TOKENS][code],
                    unattributed=refused[Refused.UNATTRIBUTED][code],
                    models=refused[Refused.MODEL_REQUESTS][code]
                    + refused[Refused.MODEL_CONCURRENCY][code]
                    or None,
                    signals=signal_counts(
                        Codes(cols.limit_signal.codes[mine], cols.limit_signal.names)
                    ),
                ),
                client_error=client[code],
                server_error=server[code],
                other_status=other[code],
                no_response=no_resp[code],
                cancelled=cancelled[code],
                admitted=admitted[code],
                not_api=not_api[code],
                auth=auth[code],
                usable=usable,
                problem=problem,
            )
        )
    return out
