"""How ``--workers N`` shares a run between the asyncio engine's processes (pure), and the
messages they exchange."""

from __future__ import annotations

import pytest

from loadkit.engine import worker_link as link
from loadkit.engine.worker_plan import default_workers, split_plan
from loadkit.scenario import Key, plan, scenario_from_dict

FREE = {"requests": 10, "window_s": 60, "concurrency": 2}
PAID = {"requests": 100, "window_s": 60, "concurrency": 20}


def scenario(load: list[dict[str, object]], tiers: dict[str, dict[str, object]] | None = None):
    return scenario_from_dict(
        {
            "name": "split",
            "run": {"duration_s": 10},
            "tiers": tiers or {"free": FREE, "paid": PAID},
            "load": load,
        }
    )


def keys(tier: str, n: int) -> list[Key]:
    return [Key(f"{tier}-{i}", tier, f"secret-{tier}-{i}") for i in range(1, n + 1)]


def test_each_key_is_driven_by_exactly_one_worker_with_its_plan_index() -> None:
    s = scenario(
        [
            {"tier": "free", "pattern": "constant", "rate_per_s": 1},
            {"tier": "free", "pattern": "burst", "burst_size": 3, "burst_period_s": 2, "keys": [2]},
            {"tier": "paid", "pattern": "constant", "rate_per_s": 5},
        ]
    )
    ks = keys("free", 3) + keys("paid", 2)
    wp = split_plan(s, ks, 2)
    assert [sh.worker for sh in wp.shares] == ["async-0", "async-1"]
    whole = list(enumerate(plan(s, ks)))
    got = sorted(p for sh in wp.shares for p in sh.pairs)
    # every (index, key, phase) of the plan once, with the index the whole plan gives it
    assert got == [(i, k.label, s.load.index(ld)) for i, (k, ld) in whole]
    owners = {}
    for sh in wp.shares:
        for label in sh.labels:
            assert label not in owners, f"{label} split between workers"
            owners[label] = sh.worker
    assert sorted(owners) == sorted(k.label for k in ks)
    # the two paid keys (5/s each) are the heaviest: one on each worker
    assert owners["paid-1"] != owners["paid-2"]
    assert wp.note == ""


def test_load_is_balanced_by_offered_rate() -> None:
    s = scenario(
        [
            {"tier": "paid", "pattern": "constant", "rate_per_s": 9, "keys": [1]},
            {"tier": "free", "pattern": "constant", "rate_per_s": 3},
        ],
        tiers={"free": FREE, "paid": PAID},
    )
    wp = split_plan(s, keys("paid", 1) + keys("free", 3), 2)
    by_worker = {sh.worker: set(sh.labels) for sh in wp.shares}
    assert by_worker == {"async-0": {"paid-1"}, "async-1": {"free-1", "free-2", "free-3"}}


def test_fewer_keys_than_workers_uses_one_worker_per_key_and_says_so() -> None:
    s = scenario([{"tier": "free", "pattern": "constant", "rate_per_s": 1}])
    wp = split_plan(s, keys("free", 2) + keys("paid", 3), 8)  # only free has load
    assert len(wp.shares) == 2
    assert wp.note == (
        "2 workers instead of 8: a key is never split between processes, and 2 keys carry load"
    )
    one = split_plan(s, keys("free", 1), 4)
    assert len(one.shares) == 1
    assert "1 key carries load" in one.note


def test_split_is_deterministic() -> None:
    s = scenario([{"tier": "free", "pattern": "poisson", "rate_per_s": 2}])
    ks = keys("free", 7)
    assert split_plan(s, ks, 3) == split_plan(s, ks, 3)


def test_default_workers_leaves_the_embedded_servers_core() -> None:
    assert default_workers(8, server_pinned=False) == 8
    assert default_workers(8, server_pinned=True) == 7
    assert default_workers(2, server_pinned=True) == 1
    assert default_workers(1, server_pinned=True) == 1
    with pytest.raises(ValueError):
        split_plan(scenario([]), [], 0)


def test_messages_survive_being_cut_anywhere() -> None:
    data = link.encode(link.READY) + link.encode(link.GO, origin={"wall": 1.5, "mono_ns": 7})
    for cut in range(len(data) + 1):
        r = link.LineReader()
        msgs = r.feed(data[:cut]) + r.feed(data[cut:])
        assert msgs == [
            {"kind": "ready"},
            {"kind": "go", "origin": {"wall": 1.5, "mono_ns": 7}},
        ]


def test_loadkit_run_defaults_to_every_core_but_the_embedded_servers(monkeypatch) -> None:
    import loadkit.run as run

    monkeypatch.setattr(run, "available_cores", lambda: 4)
    monkeypatch.setattr(run, "_server_cpu", lambda: 0)
    embedded = run.builtin_scenario()
    assert run.default_async_workers(embedded) == 3
    real = embedded.with_overrides(base_url="http://127.0.0.1:9/v1")
    assert run.default_async_workers(real) == 4
