"""Both engines on one scenario against the hostile server (``tests/hostile_server.py``):
one key per hostile case (a router in front sends each key's request to its case), one
request per key. The Locust engine records each case as ``CASES`` expects, and its records
match the asyncio engine's field by field: status, error kinds and codes, chunk counts
equal; timings within a tolerance. Locust runs in a subprocess; the asyncio engine here."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadkit.engine.async_engine import run_engine
from loadkit.records import RecordWriter, RequestRecord, iter_records
from loadkit.runmeta import Clock
from loadkit.scenario import Key, Scenario
from tests.hostile_server import CASES, HostileServer
from tests.locust_engine.helpers import run_direct, scenario
from tests.locust_engine.servers import KeyRouter, key_for

pytestmark = pytest.mark.slow

READ_TIMEOUT_S = 1.0  # the silent case ends here, in both engines
# Two engines in two processes on a shared 2-core machine: the scheduler alone can hold a
# process back a few hundred ms (the timeouts compared are 1 s, the slowest stream 0.4 s).
TIMING_TOLERANCE_S = 0.5

# Equal in both engines' records of one case.
EXACT = (
    "status",
    "transport_error",
    "error_code",
    "error_type",
    "content_chunks",
    "finish_reason",
    "content_type",
    "limit_kind",
    "limit_signal",
    "prompt_tokens",
    "completion_tokens",
    "retry_after_s",
    "endpoint",
    "stream",
    "attempt",
    "scheduled_s",
)


# Cases that keep a process busy parsing (nested JSON, a 2 MiB line, 80 MiB to inflate)
# are sent after the others, the heaviest alone, so no case's timing measures another's.
LATER = {"nested-event", "nested-body", "nested-error-body", "line-too-long"}
LAST = {"zip-bomb"}


def hostile_scenario(base_url: str) -> tuple[Scenario, list[Key]]:
    keys = [Key(c.name, "free", key_for(c.name)) for c in CASES]
    loads = []
    for at, names in ((0.1, None), (1.0, LATER), (2.0, LAST)):
        for stream in (True, False):
            picked = [
                i
                for i, c in enumerate(CASES, 1)
                if c.stream == stream and (c.name in names if names else c.name not in LATER | LAST)
            ]
            if picked:
                loads.append(
                    {
                        "tier": "free",
                        "keys": picked,
                        "mix": {"chat_stream" if stream else "chat": 1},
                        "pattern": "burst",
                        "burst_size": 1,
                        "burst_period_s": 100,
                        "phase_s": at,
                    }
                )
    sc = scenario(
        base_url,
        ["free"],
        loads,
        run={"duration_s": 2.5, "drain_s": 20.0},
        target={"read_timeout_s": READ_TIMEOUT_S, "request_timeout_s": 20.0},
    )
    return sc, keys


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[dict[str, RequestRecord], dict[str, RequestRecord]]:
    """Each case's record from the Locust engine and from the asyncio engine."""
    tmp = tmp_path_factory.mktemp("parity")
    with HostileServer() as hostile, KeyRouter(hostile.port) as router:
        sc, keys = hostile_scenario(router.base + "/api/v1")
        _, locust_recs = run_direct(sc, keys, tmp / "locust")
        out = tmp / "async"
        with RecordWriter(out / "records-async-0.jsonl") as writer:
            run_engine(sc, keys, sc.target.base_url, writer, Clock(), "async", progress=False)
        async_recs = iter_records(out)
    return _one_per_key(locust_recs), _one_per_key(async_recs)


def _one_per_key(recs: list[RequestRecord]) -> dict[str, RequestRecord]:
    out: dict[str, RequestRecord] = {}
    for r in recs:
        assert r.key not in out, f"{r.key}: more than one record"
        out[r.key] = r
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_locust_records_each_hostile_case_as_expected(both, case):
    locust, _ = both
    rec = locust[case.name]
    want = case.expected
    got = (rec.status, rec.transport_error, rec.error_code, rec.content_chunks)
    assert got == (want.status, want.transport_error, want.error_code, want.content_chunks), (
        case.what
    )
    if want.limit_kind is not None:
        assert rec.limit_kind == want.limit_kind
    if want.content_type is not None:
        assert rec.content_type == want.content_type


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_both_engines_record_the_same(both, case):
    locust, asyncio_ = both
    a, b = locust[case.name], asyncio_[case.name]
    assert (a.engine, b.engine) == ("locust", "async")
    for name in EXACT:
        assert getattr(a, name) == getattr(b, name), f"{case.name}: {name}"
    assert len(a.chunk_s) == len(b.chunk_s)
    # Timings from each request's own send: one tolerance for two engines in two processes.
    for name in ("headers_s", "first_token_s", "last_token_s", "end_s"):
        ta, tb = getattr(a, name), getattr(b, name)
        assert (ta is None) == (tb is None), f"{case.name}: {name}"
        if ta is not None:
            assert ta - a.send_s == pytest.approx(tb - b.send_s, abs=TIMING_TOLERANCE_S), name


def test_counts_by_status_and_error_kind_are_equal(both):
    locust, asyncio_ = both
    assert set(locust) == set(asyncio_) == {c.name for c in CASES}

    def kinds(recs: dict[str, RequestRecord]) -> dict[tuple[int, str | None], int]:
        out: dict[tuple[int, str | None], int] = {}
        for r in recs.values():
            out[(r.status, r.transport_error)] = out.get((r.status, r.transport_error), 0) + 1
        return out

    assert kinds(locust) == kinds(asyncio_)


def test_parity_scenario_sends_one_request_per_case(tmp_path: Path):
    """The scenario itself: every case gets exactly one arrival, with the stream flag the
    case asks for."""
    sc, keys = hostile_scenario("http://127.0.0.1:9/api/v1")
    from loadkit.scenario import plan

    pairs = plan(sc, keys)
    assert sorted(k.label for k, _ in pairs) == sorted(c.name for c in CASES)
    assert all(ld.burst_size == 1 and ld.phase_s < sc.duration_s for _, ld in pairs)
    stream = {k.label: ld.mix[0][0] == "chat_stream" for k, ld in pairs}
    assert stream == {c.name: c.stream for c in CASES}
