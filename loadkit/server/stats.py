"""Server counters and the server's own timing honesty: per-token write lateness
(actual hand-off to the transport minus its deadline), kept as raw samples in a ring
so percentiles are exact over the last ``capacity`` tokens."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from typing import Any


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class LatenessRing:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._buf = array("q")
        self._next = 0
        self.total = 0

    def add(self, ns: int) -> None:
        self.total += 1
        if len(self._buf) < self.capacity:
            self._buf.append(ns)
        else:
            self._buf[self._next] = ns
            self._next = (self._next + 1) % self.capacity

    def reset(self) -> None:
        self._buf = array("q")
        self._next = 0
        self.total = 0

    def summary(self) -> dict[str, Any]:
        vals = sorted(self._buf)
        out: dict[str, Any] = {"count": len(vals), "total": self.total}
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
            out[f"{name}_ms"] = None if not vals else percentile(vals, q) / 1e6
        out["max_ms"] = vals[-1] / 1e6 if vals else None
        out["mean_ms"] = sum(vals) / len(vals) / 1e6 if vals else None
        return out


_ALWAYS_REJECTED = ("unauthenticated", "rate_limit_exceeded", "concurrency_limit_exceeded")


class Counters:
    def __init__(self, lateness_capacity: int) -> None:
        self.seen = 0
        self.admitted = 0
        self.rejected: Counter[str] = Counter()
        self.status: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.disconnects: Counter[str] = Counter()
        self.tokens_written = 0
        self.lateness = LatenessRing(lateness_capacity)

    def reset(self) -> None:
        """Zero every counter in place (streams in progress keep feeding the same ring)."""
        self.seen = self.admitted = self.tokens_written = 0
        for c in (self.rejected, self.status, self.errors, self.disconnects):
            c.clear()
        self.lateness.reset()

    def snapshot(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "admitted": self.admitted,
            # API.md's three always; any other refusal (tokens, per day, a model's
            # limits) under its own code once counted.
            "rejected": {**dict.fromkeys(_ALWAYS_REJECTED, 0), **self.rejected},
            "status": {str(k): v for k, v in sorted(self.status.items())},
            "errors": dict(self.errors),
            "disconnects": dict(self.disconnects),
            "tokens_written": self.tokens_written,
            "lateness": self.lateness.summary(),
        }
