"""The Locust engine against scripted targets on loopback: each key of a run gets its own
kind of target (a stream that lasts, one that trickles, a 429 with Retry-After, a giant SSE
line, a 404 for everything), and the records say what the scenario promises: one record
per scheduled arrival (cancelled ones included), the whole-request timeout, retries as
records of their own, backoff after every failure, a failing target ending the run early,
and one key's giant line never holding up another key."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from loadkit.arrivals import arrivals
from loadkit.scenario import Key
from tests.locust_engine.helpers import by_key, run_direct, scenario
from tests.locust_engine.servers import Profile, ScriptedServer, key_for

pytestmark = pytest.mark.slow

TIMEOUT_S = 1.0  # request_timeout_s
RETRY_AFTER_S = 0.2
MAX_RETRIES = 2
DRAIN_S = 0.3


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """One run, three keys: a burst queued behind max_in_flight 1 on streams that outlast
    the drain; a closed-loop user on a stream that trickles forever; a closed-loop user on
    a target that answers 429 with Retry-After."""
    out = tmp_path_factory.mktemp("mixed") / "run"
    with ScriptedServer(slow_s=5.0, retry_after=str(RETRY_AFTER_S)) as srv:
        sc = scenario(
            srv.base + "/api/v1",
            ["free"],
            [
                {
                    "tier": "free",
                    "keys": [1],
                    "pattern": "burst",
                    "burst_size": 5,
                    "burst_period_s": 100,
                    "phase_s": 0.1,
                    "max_in_flight": 1,
                },
                {"tier": "free", "keys": [2], "pattern": "closed", "concurrency": 1},
                {"tier": "free", "keys": [3], "pattern": "closed", "concurrency": 1},
            ],
            run={
                "duration_s": 2.0,
                "drain_s": DRAIN_S,
                "honour_retry_after": True,
                "max_retries": MAX_RETRIES,
            },
            target={"request_timeout_s": TIMEOUT_S, "read_timeout_s": 5.0},
        )
        keys = [
            Key("free-1", "free", key_for("slow")),
            Key("free-2", "free", key_for("trickle")),
            Key("free-3", "free", key_for("429")),
        ]
        meta, recs = run_direct(sc, keys, out)
        seen = list(srv.seen)
    return sc, meta, by_key(recs), seen


def test_every_scheduled_arrival_has_one_record_even_cancelled_in_the_queue(mixed):
    sc, meta, recs, seen = mixed
    load = sc.load[0]
    # the arrival schedule itself, not the server's log: 5 arrivals of one burst
    schedule = list(arrivals(load, sc.duration_s, random.Random(f"{sc.seed}/0/free-1")))
    assert len(schedule) == 5
    got = recs["free-1"]
    assert sorted(r.scheduled_s for r in got) == pytest.approx(schedule)
    assert len({r.request_id for r in got}) == 5
    # one was sent (the cap is 1) and was still streaming when the drain ended
    sent = [r for r in got if r.headers_s is not None]
    assert len(sent) == 1 and sum(s.behaviour == "slow" for s in seen) == 1
    assert sent[0].status == 200 and sent[0].transport_error == "cancelled"
    # four waited for the slot until the drain ended: never sent, their wait kept
    queued = [r for r in got if r.headers_s is None]
    assert len(queued) == 4
    for r in queued:
        assert (r.status, r.transport_error) == (0, "not_sent")
        assert r.send_s == r.end_s
        assert r.queued_s == pytest.approx(DRAIN_S, abs=0.25)
    assert meta.workers[0].sent == meta.workers[0].records


def test_request_timeout_bounds_a_trickling_stream(mixed):
    _, _, recs, _ = mixed
    got = recs["free-2"]
    assert got and all(r.transport_error == "timeout" and r.status == 200 for r in got)
    for r in got:
        # bytes kept coming (every 0.1 s, within the read timeout): only the whole-request
        # bound ends it, on time (0.5 s for a busy machine)
        assert TIMEOUT_S <= r.end_s - r.send_s < TIMEOUT_S + 0.5


def test_retries_after_429_are_records_of_their_own(mixed):
    _, _, recs, _ = mixed
    got = recs["free-3"]
    attempts = [r.attempt for r in got]
    # each request: its first try and MAX_RETRIES retries, then the next request
    assert attempts[: 2 * (MAX_RETRIES + 1)] == [1, 2, 3, 1, 2, 3]
    assert all(r.status == 429 and r.retry_after_s == RETRY_AFTER_S for r in got)
    for prev, r in zip(got, got[1:], strict=False):
        gap = r.send_s - prev.end_s
        # a retry waits Retry-After; after the last one the user pauses Retry-After too
        assert RETRY_AFTER_S - 0.01 <= gap < RETRY_AFTER_S + 0.3
        assert prev.pause_s == RETRY_AFTER_S
        if r.attempt > 1:
            assert r.scheduled_s is not None and r.scheduled_s <= r.send_s
        else:
            assert r.scheduled_s is None
    assert len({r.request_id for r in got}) == len(got)


def test_closed_loop_users_back_off_and_a_failing_target_ends_the_run(tmp_path):
    users, rate = 3, 40.0
    with ScriptedServer() as srv:
        sc = scenario(
            srv.base + "/api/v1",
            ["free"],
            [
                {"tier": "free", "keys": [1], "pattern": "closed", "concurrency": users},
                {"tier": "free", "keys": [2], "pattern": "constant", "rate_per_s": rate},
            ],
            run={"duration_s": 60.0, "drain_s": 1.0},
        )
        keys = [Key("free-1", "free", key_for("404", 1)), Key("free-2", "free", key_for("404", 2))]
        meta, recs = run_direct(sc, keys, tmp_path / "run")
        seen = list(srv.seen)
    # the watch stopped a 60 s run once 50 requests in a row over 2 s had failed
    assert meta.stop_reason.startswith("target failing: the last ")
    assert "404 Not Found" in meta.stop_reason
    assert not meta.interrupted
    last = max(r.send_s for r in recs)
    assert last < 10.0
    got = by_key(recs)
    assert {r.status for r in recs} == {404}
    # open-loop arrivals kept their schedule until the stop
    assert len(got["free-2"]) >= 50
    # each closed-loop user paused 1 s, 2 s, 4 s, ... after failure after failure: a
    # handful of requests, not thousands
    closed = got["free-1"]
    assert len(closed) <= users * 4
    pauses = sorted(r.pause_s for r in closed if r.pause_s is not None)
    assert pauses[:users] == [1.0] * users and 2.0 in pauses
    # in any second the target saw about the open-loop rate (twice it at most: a process
    # held back on a busy machine sends its late arrivals together), not thousands
    per_second = Counter(int(s.t - seen[0].t) for s in seen)
    assert max(per_second.values()) <= 2 * rate + users


def test_a_giant_line_does_not_hold_up_another_key(tmp_path):
    profile = Profile(ttft_s=0.05, itl_s=0.02, tokens=5)
    with ScriptedServer(profile=profile, giant_mb=24) as srv:
        sc = scenario(
            srv.base + "/api/v1",
            ["pro"],
            [
                {"tier": "pro", "keys": [1], "pattern": "closed", "concurrency": 1},
                {"tier": "pro", "keys": [2], "pattern": "closed", "concurrency": 2},
            ],
            run={"duration_s": 3.0},
        )
        keys = [Key("pro-1", "pro", key_for("giant")), Key("pro-2", "pro", key_for("ok"))]
        _, recs = run_direct(sc, keys, tmp_path / "run")
    got = by_key(recs)
    giant = got["pro-1"]
    # the 24 MiB line is over the 1 MiB bound: dropped, named, the stream otherwise read
    assert giant and all(r.transport_error == "line_too_long" for r in giant)
    assert all(r.content_chunks == 2 for r in giant)
    other = got["pro-2"]
    assert len(other) >= 20 and all(r.transport_error is None for r in other)
    # Bound from the profile with a wide margin for a busy 2-core machine: one process
    # stalled by the giant line would add 0.5 s (8 MB) to 6 s (24 MB) to these.
    margin = 0.25
    assert max(r.first_token_s - r.send_s for r in other) < profile.ttft_s + margin
    gaps = [b - a for r in other for a, b in zip(r.chunk_s, r.chunk_s[1:], strict=False)]
    assert max(gaps) < profile.itl_s + margin


def test_requests_follow_the_targets_layout_and_auth_style(tmp_path, monkeypatch):
    """ "auto" picks the layout from the URL (…/v1: OpenAI's; the seed's is every other
    test's), explicit paths override it, the key goes in the header and scheme the target
    wants, extra headers come along with ${VAR} read where the requests are sent."""
    base = "/v1"
    target = {
        "paths": {"chat": "/deployments/d1/chat"},
        "auth_header": "api-key",
        "auth_scheme": "",
        "headers": {"X-Org": "${LOADKIT_TEST_ORG_ID}", "X-Static": "s"},
    }
    # a LOADKIT_ variable too: the Locust processes get the ones the scenario names
    monkeypatch.setenv("LOADKIT_TEST_ORG_ID", "org-42")
    key = Key("free-1", "free", key_for("ok"))
    out = tmp_path / "run"
    with ScriptedServer() as srv:
        sc = scenario(
            srv.base + base,
            ["free"],
            [
                {
                    "tier": "free",
                    "pattern": "constant",
                    "rate_per_s": 10,
                    "mix": {"chat_stream": 1, "completions": 1, "models": 1},
                }
            ],
            run={"duration_s": 1.5},
            target=target,
        )
        _, recs = run_direct(sc, [key], out)
        seen = list(srv.seen)
    assert len(recs) == len(seen) >= 10
    assert all(r.status == 200 and r.transport_error is None for r in recs)
    assert {s.path for s in seen} == {"/v1/deployments/d1/chat", "/v1/completions", "/v1/models"}
    for s in seen:
        assert s.headers["api-key"] == key.secret and "authorization" not in s.headers
        assert (s.headers["x-org"], s.headers["x-static"]) == ("org-42", "s")
        assert s.headers["accept-encoding"] == "identity"
    # the variable's value was read where the requests were sent, not written anywhere
    written = "".join(p.read_text() for p in out.iterdir() if p.is_file())
    assert "${LOADKIT_TEST_ORG_ID}" in (out / "scenario.json").read_text()
    assert "org-42" not in written and key.secret not in written


def test_a_header_variable_missing_where_load_is_sent_is_refused_before_load(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_UNSET_VAR", raising=False)
    with ScriptedServer() as srv:
        sc = scenario(
            srv.base + "/v1",
            ["free"],
            [{"tier": "free", "pattern": "constant", "rate_per_s": 10}],
            target={"headers": {"X-Org": "${TEST_UNSET_VAR}"}},
        )
        with pytest.raises(RuntimeError) as exc:
            run_direct(sc, [Key("free-1", "free", key_for("ok"))], tmp_path / "run")
        assert not srv.seen
    assert "environment variable TEST_UNSET_VAR is not set" in str(exc.value)
