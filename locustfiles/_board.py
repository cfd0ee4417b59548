"""Live figures by tier and by key for Locust's web UI, from the records the master
receives (every request of the run, exact): requests per second and TTFT percentiles over
the last ``window_s``, 2xx, 429s and other failures so far, and what each key is doing now
(answered, limited and waiting out Retry-After, failing and backing off). Plain state fed
record by record; no Locust or gevent import."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from loadkit import records as R
from loadkit.records import RequestRecord

WINDOW_S = 10.0  # the "now" figures cover this much of the run's end


@dataclass
class _Tally:
    """Counts over the whole run, and the recent answers for the windowed figures."""

    requests: int = 0
    ok: int = 0
    limited: int = 0
    failed: int = 0
    cancelled: int = 0
    # (end_s, ttft_s or None) of the answers that ended within the window
    recent: deque[tuple[float, float | None]] = field(default_factory=deque)

    def add(self, rec: RequestRecord, window_s: float) -> None:
        self.requests += 1
        if rec.transport_error in (R.CANCELLED, R.NOT_SENT):
            self.cancelled += 1
        elif rec.status == 429:
            self.limited += 1
        elif 200 <= rec.status < 300 and rec.transport_error is None and not rec.error_code:
            self.ok += 1
        else:
            self.failed += 1
        ttft = None
        if rec.first_token_s is not None and rec.transport_error is None:
            ttft = rec.first_token_s - rec.send_s
        self.recent.append((rec.end_s, ttft))
        self._trim(rec.end_s - window_s)

    def _trim(self, since: float) -> None:
        while self.recent and self.recent[0][0] < since:
            self.recent.popleft()

    def figures(self, now: float, window_s: float) -> dict[str, Any]:
        since = now - window_s
        self._trim(since)
        # Records from several processes arrive a little out of order: count by time.
        recent = [t for end, t in self.recent if since <= end <= now]
        span = min(window_s, now) if now > 0 else window_s
        ttfts = sorted(t for t in recent if t is not None)
        return {
            "requests": self.requests,
            "rps": round(len(recent) / span, 2),
            "ok": self.ok,
            "limited": self.limited,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "ttft_p50": _ms(_percentile(ttfts, 0.50)),
            "ttft_p95": _ms(_percentile(ttfts, 0.95)),
        }


def _percentile(values: list[float], q: float) -> float | None:
    """The exact ``q`` quantile of sorted ``values`` (nearest rank), None when empty."""
    if not values:
        return None
    rank = max(1, -(-len(values) * q // 1))  # ceil(n * q), at least the first
    return values[int(rank) - 1]


def _ms(seconds: float | None) -> float | str:
    return "" if seconds is None else round(seconds * 1000.0, 1)


def key_status(rec: RequestRecord | None, now: float, window_s: float) -> str:
    """What a key is doing, from its latest record: ``ok``; ``limited (429 …), waits
    1.0 s``; ``failing (404), backs off 2.0 s``; ``stopped``; ``idle`` after a window
    without an answer."""
    if rec is None:
        return "no answer yet"
    if rec.transport_error in (R.CANCELLED, R.NOT_SENT):
        return "stopped"
    if now - rec.end_s > window_s:
        return f"idle {now - rec.end_s:.0f} s"
    wait = f", waits {rec.pause_s:.1f} s" if rec.pause_s else ""
    if rec.status == 429:
        what = rec.limit_kind or rec.error_code
        why = f"429 {what}" if what else "429"
        return f"limited ({why}){wait}"
    if 200 <= rec.status < 300 and rec.transport_error is None and not rec.error_code:
        return "ok"
    what = rec.transport_error or rec.error_code or str(rec.status)
    if rec.status and rec.error_code:
        what = f"{rec.status} {rec.error_code}"
    backs = f", backs off {rec.pause_s:.1f} s" if rec.pause_s else ""
    return f"failing ({what}){backs}"


class TierBoard:
    """The web UI's tables by tier and by key, fed every record of the run."""

    def __init__(self, keys: Iterable[tuple[str, str]] = (), window_s: float = WINDOW_S) -> None:
        """``keys``: (label, tier) of the run's keys, shown before their first answer."""
        self.window_s = window_s
        self.tiers: dict[str, _Tally] = {}
        self.keys: dict[str, _Tally] = {}
        self.tier_of: dict[str, str] = {}
        self.last: dict[str, RequestRecord] = {}
        for label, tier in keys:
            self.tiers.setdefault(tier, _Tally())
            self.keys[label] = _Tally()
            self.tier_of[label] = tier

    def add(self, rec: RequestRecord) -> None:
        if rec.endpoint == "models":  # not inference: no tier figure is about it
            return
        self.tiers.setdefault(rec.tier, _Tally()).add(rec, self.window_s)
        self.keys.setdefault(rec.key, _Tally()).add(rec, self.window_s)
        self.tier_of[rec.key] = rec.tier
        last = self.last.get(rec.key)
        if last is None or rec.end_s >= last.end_s:
            self.last[rec.key] = rec

    def tier_rows(self, now: float) -> list[dict[str, Any]]:
        rows = []
        for tier in sorted(self.tiers):
            keys = sum(t == tier for t in self.tier_of.values())
            row = {"tier": tier, "keys": keys}
            row.update(self.tiers[tier].figures(now, self.window_s))
            rows.append(row)
        return rows

    def key_rows(self, now: float) -> list[dict[str, Any]]:
        rows = []
        for key in sorted(self.keys, key=lambda k: (self.tier_of[k], k)):
            row: dict[str, Any] = {"key": key, "tier": self.tier_of[key]}
            row.update(self.keys[key].figures(now, self.window_s))
            row["status"] = key_status(self.last.get(key), now, self.window_s)
            rows.append(row)
        return rows
