"""The two limiter bugs the older modes did not model, each shown to misbehave exactly as
intended: a fixed window anchored at a key's first request (``fixed_window_anchored``) and
a concurrency slot freed a little after the response ended (``late_release``). First the
pure limiter, then a real server judged from its truth log."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from loadkit.server.config import ConfigError, config_from_dict
from loadkit.server.limiter import CONCURRENCY_LIMITED, RATE_LIMITED, Limiter, LimitSpec
from loadkit.server.testing import ServerThread, max_admitted_in_window
from tests.server.conftest import Raw, truth_of
from tests.server.test_limits import CHAT, _admitted, _fire, tier

MS = 1_000_000
W = 1000 * MS
SPEC = LimitSpec(requests=5, window_ns=W, concurrency=100)


def admit(lim: Limiter, times: list[int], spec: LimitSpec = SPEC) -> list[int]:
    """The instants admitted among ``times`` (each admitted request ends at once)."""
    out = []
    for t in times:
        if lim.acquire("k", spec, t).admitted:
            out.append(t)
            lim.release("k", t)
    return out


# --- fixed_window_anchored, pure ------------------------------------------------------


def test_anchored_window_opens_at_the_first_request_not_on_the_clock() -> None:
    lim = Limiter("fixed_window_anchored")
    lone = 7 * W + 300 * MS  # no multiple of W between the lone request and the bursts
    before = [lone + W - 50 * MS] * 6  # the window opened by `lone` has 4 places left
    after = [lone + W + 50 * MS] * 6  # a new window opens at the first of these
    admitted = admit(lim, [lone] + before + after)
    assert admitted == [lone] + before[:4] + after[:5]
    # 9 admissions within 100 ms: 2N - 1 in a span far shorter than W
    assert max_admitted_in_window(admitted, W) == 2 * SPEC.requests - 1


def test_anchored_window_refusal_waits_for_its_own_edge() -> None:
    lim = Limiter("fixed_window_anchored")
    t0 = 7 * W + 300 * MS
    admit(lim, [t0] * 5)
    d = lim.acquire("k", SPEC, t0 + 200 * MS)
    assert not d.admitted and d.reason == RATE_LIMITED
    assert d.retry_after_ns == W - 200 * MS  # the anchored edge, not a clock edge
    assert d.reset_requests_ns == W - 200 * MS
    assert lim.acquire("k", SPEC, t0 + W).admitted  # the window has ended: a new one
    assert lim.acquire("k", SPEC, t0 + W).remaining_requests == SPEC.requests - 2


def test_anchored_window_holds_against_bursts_that_open_their_own_window() -> None:
    """Why periodic bursts miss it: each window opens with a burst that fills it, so no
    span of W ever holds more than N, whatever the period."""
    lim = Limiter("fixed_window_anchored")
    period = 750 * MS  # 3/4 of the window, the clock-aligned probe's period
    times = [5 * W + 123 * MS + i * period for i in range(12) for _ in range(7)]
    admitted = admit(lim, times)
    assert len(admitted) > 3 * SPEC.requests  # windows did roll over
    assert max_admitted_in_window(admitted, W) == SPEC.requests


# --- late_release, pure ---------------------------------------------------------------


def test_late_release_frees_the_slot_only_after_the_delay() -> None:
    spec = LimitSpec(requests=100, window_ns=W, concurrency=2)
    lim = Limiter("late_release", release_delay_ns=20 * MS)
    assert lim.acquire("k", spec, 0).admitted
    assert lim.acquire("k", spec, 1).admitted
    lim.release("k", 100 * MS)  # one request ends: one in flight, the cap is 2
    assert lim.in_flight("k") == 1
    d = lim.acquire("k", spec, 100 * MS + 2 * MS)  # a client sending its next one at once
    assert not d.admitted and d.reason == CONCURRENCY_LIMITED
    assert d.remaining_concurrency == 0  # the limiter still counts the freed slot
    assert not lim.acquire("k", spec, 120 * MS - 1).admitted
    d = lim.acquire("k", spec, 120 * MS)
    assert d.admitted and d.remaining_concurrency == 0
    assert lim.in_flight("k") == 2


def test_exact_frees_the_slot_at_the_end() -> None:
    spec = LimitSpec(requests=100, window_ns=W, concurrency=2)
    lim = Limiter("exact", release_delay_ns=20 * MS)  # the delay is late_release's only
    lim.acquire("k", spec, 0)
    lim.acquire("k", spec, 1)
    lim.release("k", 100 * MS)
    assert lim.acquire("k", spec, 100 * MS).admitted


def test_release_delay_is_configured_in_seconds() -> None:
    cfg = config_from_dict({"limiter": {"mode": "late_release", "release_delay_s": 0.005}})
    assert (cfg.limiter.mode, cfg.limiter.release_delay_s) == ("late_release", 0.005)
    assert config_from_dict({}).limiter.release_delay_s == 0.02
    with pytest.raises(ConfigError, match="limiter.release_delay_s"):
        config_from_dict({"limiter": {"release_delay_s": 0}})
    with pytest.raises(ConfigError, match="limiter.mode"):
        config_from_dict({"limiter": {"mode": "anchored"}})


# --- against a running server, judged from the truth log ------------------------------


def _sleep_until(t_ns: int) -> None:
    time.sleep(max(0.0, (t_ns - time.perf_counter_ns()) / 1e9))


def test_anchored_window_admits_2n_minus_1_around_its_edge(serve) -> None:  # type: ignore[no-untyped-def]
    n, w = 10, 2_000_000_000
    srv = serve({"tiers": {"free": tier(n, 2.0, 50)}, "limiter": {"mode": "fixed_window_anchored"}})
    raw = Raw(srv.base_url)
    assert raw.request("POST", "/ai/chat/completions", CHAT, srv.key("free-1"))[0] == 200
    (lone,) = _admitted(truth_of(srv), "free-1")
    anchor = lone["admitted_ns"]  # the server's clock is this process's (CLOCK_MONOTONIC)
    _sleep_until(anchor + w - 600_000_000)  # room for a slow machine to end the burst in time
    first = asyncio.run(_fire(srv.base_url, srv.key("free-1"), 12, 0.0, CHAT))
    assert time.perf_counter_ns() < anchor + w, "the first burst must end before the edge"
    _sleep_until(anchor + w + 20_000_000)
    second = asyncio.run(_fire(srv.base_url, srv.key("free-1"), 12, 0.0, CHAT))
    assert (first.count(200), second.count(200)) == (n - 1, n)
    adm = [t["admitted_ns"] for t in _admitted(truth_of(srv), "free-1")]
    assert max_admitted_in_window(adm, w) == 2 * n - 1  # in about 0.6 s, where W = 2 s


def _late_release_sequence(srv: ServerThread) -> tuple[list[int], list[dict[str, Any]]]:
    """On a key with concurrency 1: a request, then the next one as soon as it ended,
    then one more after 0.5 s."""
    raw = Raw(srv.base_url)
    key = srv.key("free-1")
    statuses = [raw.request("POST", "/ai/chat/completions", CHAT, key)[0] for _ in range(2)]
    time.sleep(0.5)
    statuses.append(raw.request("POST", "/ai/chat/completions", CHAT, key)[0])
    return statuses, truth_of(srv)


def test_late_release_refuses_a_request_sent_right_after_the_end(serve) -> None:  # type: ignore[no-untyped-def]
    # A delay far above loopback's round trip, so even a loaded machine sends within it.
    srv = serve(
        {
            "tiers": {"free": tier(100, 10.0, 1)},
            "limiter": {"mode": "late_release", "release_delay_s": 0.3},
        }
    )
    statuses, truth = _late_release_sequence(srv)
    assert statuses == [200, 429, 200]
    first, refused, third = truth
    assert refused["decision"] == "concurrency_limited"
    # the truth shows nothing in flight when it was refused: the refusal was false
    assert first["finish_ns"] < refused["arrival_ns"] < first["finish_ns"] + 300_000_000
    assert third["decision"] == "admitted"
    assert srv.stats()["in_flight"]["by_key"].get("free-1", 0) == 0


def test_exact_admits_a_request_sent_right_after_the_end(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve({"tiers": {"free": tier(100, 10.0, 1)}})
    statuses, truth = _late_release_sequence(srv)
    assert statuses == [200, 200, 200]
    assert [t["decision"] for t in truth] == ["admitted"] * 3
