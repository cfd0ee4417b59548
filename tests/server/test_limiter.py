"""The limiter without sockets: the exact sliding log never admits more than N in any
span of W, its retry-after is a promise, and each wrong mode is wrong the way it claims."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from loadkit.server.limiter import (
    CONCURRENCY_LIMITED,
    RATE_LIMITED,
    Limiter,
    LimitSpec,
)
from loadkit.server.testing import max_admitted_in_window, max_in_flight

MS = 1_000_000
SPEC = LimitSpec(requests=5, window_ns=1000 * MS, concurrency=100)


def admit_all(lim: Limiter, times: list[int], spec: LimitSpec = SPEC) -> list[int]:
    out = []
    for t in times:
        d = lim.acquire("k", spec, t)
        if d.admitted:
            out.append(t)
            lim.release("k", t)
    return out


def test_exact_boundary_is_half_open() -> None:
    lim = Limiter()
    t0 = 10_000 * MS
    assert len(admit_all(lim, [t0] * 5)) == 5
    d = lim.acquire("k", SPEC, t0 + SPEC.window_ns - 1)
    assert not d.admitted and d.reason == RATE_LIMITED and d.retry_after_ns == 1
    # At exactly t0 + W the first admissions are out of (t - W, t].
    d = lim.acquire("k", SPEC, t0 + SPEC.window_ns)
    assert d.admitted


def test_headers_values() -> None:
    lim = Limiter()
    d = lim.acquire("k", SPEC, 0)
    assert (d.limit_requests, d.remaining_requests) == (5, 4)
    assert d.reset_requests_ns == SPEC.window_ns
    d = lim.acquire("k", SPEC, 300 * MS)
    assert d.remaining_requests == 3 and d.reset_requests_ns == SPEC.window_ns
    assert d.remaining_concurrency == SPEC.concurrency - 2
    d = lim.acquire("k", SPEC, 1100 * MS)  # the first has left the window
    assert d.remaining_requests == 3
    assert d.reset_requests_ns == SPEC.window_ns


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5000), min_size=1, max_size=80))
def test_exact_never_exceeds_and_retry_is_a_promise(gaps_ms: list[int]) -> None:
    lim = Limiter()
    t = 0
    admitted = []
    for g in gaps_ms:
        t += g * MS // 10
        d = lim.acquire("k", SPEC, t)
        if d.admitted:
            admitted.append(t)
            lim.release("k", t)
        else:
            assert d.reason == RATE_LIMITED
            # Promise: the same key, with no admission in between, is admitted then.
            probe = Limiter()
            for a in admitted:
                probe.acquire("k", SPEC, a)
                probe.release("k", a)
            assert d.retry_after_ns is not None
            assert probe.acquire("k", SPEC, t + d.retry_after_ns).admitted
    assert max_admitted_in_window(admitted, SPEC.window_ns) <= SPEC.requests


def test_concurrency_slot_and_refusal_uses_nothing() -> None:
    spec = LimitSpec(requests=100, window_ns=1000 * MS, concurrency=2)
    lim = Limiter()
    assert lim.acquire("k", spec, 0).admitted
    assert lim.acquire("k", spec, 1).admitted
    d = lim.acquire("k", spec, 2)
    assert not d.admitted and d.reason == CONCURRENCY_LIMITED and d.retry_after_ns
    assert d.remaining_requests == 98  # the refusal did not count as a request
    lim.release("k", 2)
    assert lim.acquire("k", spec, 3).admitted
    assert lim.in_flight("k") == 2
    assert lim.in_flight("other") == 0


def test_keys_are_independent() -> None:
    lim = Limiter()
    for _ in range(5):
        assert lim.acquire("a", SPEC, 0).admitted
    assert not lim.acquire("a", SPEC, 0).admitted
    assert lim.acquire("b", SPEC, 0).admitted


def test_fixed_window_admits_2n_across_an_edge() -> None:
    lim = Limiter("fixed_window")
    w = SPEC.window_ns
    edge = 7 * w
    times = [edge - 10 * MS] * 5 + [edge + 10 * MS] * 5 + [edge + 20 * MS]
    admitted = admit_all(lim, times)
    assert len(admitted) == 10
    assert max_admitted_in_window(admitted, w) == 2 * SPEC.requests
    d = lim.acquire("k", SPEC, edge + 30 * MS)
    assert not d.admitted and d.retry_after_ns == w - 30 * MS


def test_token_bucket_bursts_beyond_n() -> None:
    lim = Limiter("token_bucket", burst_factor=2.0)
    admitted = admit_all(lim, [0] * 20)
    assert len(admitted) == 10  # capacity 2N at once
    later = admit_all(lim, [500 * MS] * 10)  # refill N/W: 2.5 tokens in 0.5 s
    assert len(later) == 2
    assert max_admitted_in_window(admitted + later, SPEC.window_ns) > SPEC.requests


def test_concurrency_off_by_one() -> None:
    spec = LimitSpec(requests=100, window_ns=1000 * MS, concurrency=2)
    lim = Limiter("concurrency_off_by_one")
    results = [lim.acquire("k", spec, i).admitted for i in range(5)]
    assert results == [True, True, True, False, False]
    assert max_in_flight([(0, 10), (1, 10), (2, 10)]) == 3


def test_under_admit_refuses_at_80_percent() -> None:
    spec = LimitSpec(requests=10, window_ns=1000 * MS, concurrency=100)
    lim = Limiter("under_admit")
    admitted = admit_all(lim, list(range(10)), spec)
    assert len(admitted) == 8
    d = lim.acquire("k", spec, 20)
    assert not d.admitted and d.reason == RATE_LIMITED
    assert d.remaining_requests == 2  # the headers promise room the limiter refuses


def test_off_admits_everything() -> None:
    spec = LimitSpec(requests=3, window_ns=1000 * MS, concurrency=1)
    lim = Limiter("off")
    ds = [lim.acquire("k", spec, i) for i in range(10)]
    assert all(d.admitted for d in ds)
    assert ds[-1].remaining_requests == 0


def test_release_without_acquire_is_a_bug() -> None:
    import pytest

    with pytest.raises(RuntimeError):
        Limiter().release("nobody", 0)


def test_truth_checkers() -> None:
    assert max_admitted_in_window([0, 5, 10, 15], 10) == 2  # (t-10, t]: 5,10,15 -> 0 excluded
    assert max_admitted_in_window([0, 5, 9], 10) == 3
    assert max_in_flight([(0, 5), (5, 10)]) == 1
    assert max_in_flight([(0, 6), (5, 10)]) == 2
