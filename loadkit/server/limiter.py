"""The per-key limiter, pure (time is passed in as integer nanoseconds): the request
limit as an exact sliding log, the concurrency limit as an in-flight count, and the
deliberately wrong modes that loadkit must catch (fixed window aligned to the clock or
anchored at a key's first request, token bucket, concurrency off by one, a slot freed
late, under-admission, off)."""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

RATE_LIMITED = "rate_limit_exceeded"
CONCURRENCY_LIMITED = "concurrency_limit_exceeded"


@dataclass(frozen=True)
class LimitSpec:
    requests: int
    window_ns: int
    concurrency: int

    @classmethod
    def of(cls, requests: int, window_s: float, concurrency: int) -> LimitSpec:
        return cls(requests, max(1, round(window_s * 1e9)), concurrency)


@dataclass(frozen=True)
class Decision:
    admitted: bool
    reason: str | None  # RATE_LIMITED | CONCURRENCY_LIMITED | None
    now_ns: int
    limit_requests: int
    remaining_requests: int  # after this decision
    reset_requests_ns: int  # until the window is back to its full allowance
    retry_after_ns: int | None  # on a refusal: a promise (rate) or a hint (concurrency)
    limit_concurrency: int
    remaining_concurrency: int  # after this decision


class _Exact:
    """At most N admissions in any span (t - W, t]: admit at t iff fewer than ``cap``
    admissions in (t - W, t]. ``cap`` < N is the under-admitting mode."""

    def __init__(self, spec: LimitSpec, cap: int) -> None:
        self.spec = spec
        self.cap = cap
        self.log: deque[int] = deque()

    def _prune(self, now: int) -> None:
        edge = now - self.spec.window_ns
        log = self.log
        while log and log[0] <= edge:
            log.popleft()

    def check(self, now: int) -> int | None:
        """None if a request may be admitted now, else the ns until it may."""
        self._prune(now)
        if len(self.log) < self.cap:
            return None
        # The (len - cap + 1)-th oldest must leave the window: at t = its time + W it has.
        return self.log[len(self.log) - self.cap] + self.spec.window_ns - now

    def admit(self, now: int) -> None:
        self.log.append(now)

    def remaining(self, now: int) -> int:
        self._prune(now)
        return max(0, self.spec.requests - len(self.log))

    def reset_ns(self, now: int) -> int:
        self._prune(now)
        return self.log[-1] + self.spec.window_ns - now if self.log else 0


class _FixedWindow:
    """Windows aligned to multiples of W on the clock: up to 2N in a straddling span."""

    def __init__(self, spec: LimitSpec) -> None:
        self.spec = spec
        self.window = -1
        self.count = 0

    def _roll(self, now: int) -> None:
        w = now // self.spec.window_ns
        if w != self.window:
            self.window, self.count = w, 0

    def _end(self) -> int:
        return (self.window + 1) * self.spec.window_ns

    def check(self, now: int) -> int | None:
        self._roll(now)
        return None if self.count < self.spec.requests else self._end() - now

    def admit(self, now: int) -> None:
        self.count += 1

    def remaining(self, now: int) -> int:
        self._roll(now)
        return max(0, self.spec.requests - self.count)

    def reset_ns(self, now: int) -> int:
        self._roll(now)
        return self._end() - now if self.count else 0


class _AnchoredWindow:
    """A window of W opened by the first admission when none is open (the common
    ``INCR`` + ``EXPIRE`` counter): not aligned to the clock, so bursts at a fixed period
    can miss its edges, but up to 2N - 1 in a span straddling the end of the window
    opened by a lone request."""

    def __init__(self, spec: LimitSpec) -> None:
        self.spec = spec
        self.start: int | None = None
        self.count = 0

    def _roll(self, now: int) -> None:
        if self.start is not None and now >= self.start + self.spec.window_ns:
            self.start, self.count = None, 0

    def check(self, now: int) -> int | None:
        self._roll(now)
        if self.start is None or self.count < self.spec.requests:
            return None
        return self.start + self.spec.window_ns - now

    def admit(self, now: int) -> None:
        self._roll(now)
        if self.start is None:
            self.start = now
        self.count += 1

    def remaining(self, now: int) -> int:
        self._roll(now)
        return max(0, self.spec.requests - self.count)

    def reset_ns(self, now: int) -> int:
        self._roll(now)
        return 0 if self.start is None else self.start + self.spec.window_ns - now


class _TokenBucket:
    """Capacity B > N, refilled at N per W: admits B + N in a span of W after a quiet spell."""

    def __init__(self, spec: LimitSpec, burst_factor: float) -> None:
        self.spec = spec
        self.capacity = max(spec.requests + 1, math.ceil(spec.requests * burst_factor))
        self.tokens = float(self.capacity)
        self.rate = spec.requests / spec.window_ns  # tokens per ns
        self.last: int | None = None

    def _refill(self, now: int) -> None:
        if self.last is not None and now > self.last:
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now if self.last is None else max(self.last, now)

    def check(self, now: int) -> int | None:
        self._refill(now)
        if self.tokens >= 1.0:
            return None
        return math.ceil((1.0 - self.tokens) / self.rate)

    def admit(self, now: int) -> None:
        self.tokens -= 1.0

    def remaining(self, now: int) -> int:
        self._refill(now)
        return min(self.spec.requests, int(self.tokens))

    def reset_ns(self, now: int) -> int:
        self._refill(now)
        return math.ceil((self.capacity - self.tokens) / self.rate)


_Policy = _Exact | _FixedWindow | _AnchoredWindow | _TokenBucket


class _KeyState:
    __slots__ = ("spec", "requests", "in_flight", "late")

    def __init__(self, spec: LimitSpec, requests: _Policy) -> None:
        self.spec = spec
        self.requests = requests
        self.in_flight = 0
        self.late: list[int] = []  # late_release: sorted instants the freed slots free up

    def held(self, now: int) -> int:
        """Slots taken at ``now``: requests in flight, and slots not yet freed after their
        request ended (late_release only)."""
        late = self.late
        if late:
            del late[: bisect.bisect_right(late, now)]
        return self.in_flight + len(late)


class Limiter:
    """Decides per key. ``acquire`` admits (counting the request and taking a slot) or
    refuses (using neither); every admitted request must be ``release``d exactly once, at
    the instant it ended."""

    def __init__(
        self,
        mode: str = "exact",
        burst_factor: float = 2.0,
        under_admit_fraction: float = 0.8,
        release_delay_ns: int = 20_000_000,
    ) -> None:
        self.mode = mode
        self.burst_factor = burst_factor
        self.under_admit_fraction = under_admit_fraction
        self.release_delay_ns = release_delay_ns
        self._keys: dict[str, _KeyState] = {}

    def _state(self, key: str, spec: LimitSpec) -> _KeyState:
        st = self._keys.get(key)
        if st is None or st.spec != spec:
            new = _KeyState(spec, self._policy(spec))
            if st is not None:
                new.in_flight, new.late = st.in_flight, st.late
            st = self._keys[key] = new
        return st

    def _policy(self, spec: LimitSpec) -> _Policy:
        if self.mode == "fixed_window":
            return _FixedWindow(spec)
        if self.mode == "fixed_window_anchored":
            return _AnchoredWindow(spec)
        if self.mode == "token_bucket":
            return _TokenBucket(spec, self.burst_factor)
        if self.mode == "under_admit":
            return _Exact(spec, max(1, math.floor(spec.requests * self.under_admit_fraction)))
        return _Exact(spec, spec.requests)

    def concurrency_cap(self, spec: LimitSpec) -> int | None:
        if self.mode == "off":
            return None
        if self.mode == "concurrency_off_by_one":
            return spec.concurrency + 1
        return spec.concurrency

    def acquire(self, key: str, spec: LimitSpec, now_ns: int) -> Decision:
        st = self._state(key, spec)
        pol = st.requests
        wait = None if self.mode == "off" else pol.check(now_ns)
        reason = None
        retry = None
        cap = self.concurrency_cap(spec)
        if wait is not None:
            reason, retry = RATE_LIMITED, max(1, wait)
        elif cap is not None and st.held(now_ns) >= cap:
            # No promise is possible: when a slot frees depends on other requests.
            reason = CONCURRENCY_LIMITED
            retry = min(1_000_000_000, max(50_000_000, spec.window_ns // spec.requests))
        else:
            pol.admit(now_ns)
            st.in_flight += 1
        return Decision(
            admitted=reason is None,
            reason=reason,
            now_ns=now_ns,
            limit_requests=spec.requests,
            remaining_requests=pol.remaining(now_ns),
            reset_requests_ns=pol.reset_ns(now_ns),
            retry_after_ns=retry,
            limit_concurrency=spec.concurrency,
            remaining_concurrency=max(0, spec.concurrency - st.held(now_ns)),
        )

    def release(self, key: str, now_ns: int) -> None:
        """The admitted request of ``key`` ended at ``now_ns``: its slot is free (in
        late_release mode, only ``release_delay_ns`` later)."""
        st = self._keys.get(key)
        if st is None or st.in_flight <= 0:
            raise RuntimeError(f"release without acquire for key {key!r}")
        st.in_flight -= 1
        if self.mode == "late_release":
            bisect.insort(st.late, now_ns + self.release_delay_ns)

    def in_flight(self, key: str) -> int:
        """Admitted requests of ``key`` not yet ended (a slot freed late is not one)."""
        st = self._keys.get(key)
        return st.in_flight if st is not None else 0

    def in_flight_by_key(self) -> dict[str, int]:
        return {k: s.in_flight for k, s in self._keys.items()}
