"""Scenario files: valid ones parse, bad ones get an error naming the field and value."""

from __future__ import annotations

import random

import pytest

from loadkit.arrivals import arrivals
from loadkit.run import builtin_scenario
from loadkit.scenario import ScenarioError, load_scenario, resolve_keys, scenario_from_dict

BASE = {
    "run": {"duration_s": 10},
    "tiers": {"free": {"requests": 60, "window_s": 60, "concurrency": 3, "keys_env": "K"}},
    "load": [{"tier": "free", "pattern": "poisson", "rate_factor": 1.5}],
}


def with_(path: str, value):
    import copy

    d = copy.deepcopy(BASE)
    cur = d
    parts = path.split(".")
    for p in parts[:-1]:
        cur = cur[int(p)] if isinstance(cur, list) else cur[p]
    last = parts[-1]
    cur[int(last) if isinstance(cur, list) else last] = value
    return d


def test_valid_scenario_and_rate_factor():
    s = scenario_from_dict(BASE)
    assert s.load[0].rate_per_s == pytest.approx(1.5)  # 1.5 x 60 per 60 s
    assert s.tiers["free"].promised() == {"requests": 60, "window_s": 60.0, "concurrency": 3}


@pytest.mark.parametrize(
    "path,value,needle",
    [
        ("load.0.pattern", "zigzag", "load[0].pattern"),
        ("load.0.rate_factor", -1, "load[0].rate_factor"),
        ("load.0.tier", "gold", "'gold' is not a tier"),
        ("tiers.free.requests", "sixty", "tiers.free.requests"),
        ("tiers.free.concurrency", 0, "tiers.free.concurrency"),
        ("run.duration_s", "long", "run.duration_s"),
        ("run.engine", "k6", "run.engine"),
        ("load.0.mix", {"chat_stream": 1, "images": 1}, "load[0].mix.images"),
        ("load.0.max_tokens", {"dist": "uniform", "min": 9, "max": 3}, "load[0].max_tokens.max"),
        ("load.0.keys", [0], "load[0].keys"),
        ("run.surprise", 1, "run.surprise: unknown field"),
    ],
)
def test_bad_fields_are_named(path, value, needle):
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(with_(path, value))
    assert needle in str(e.value)


def test_unbounded_run_is_refused():
    with pytest.raises(ScenarioError, match="bounded"):
        scenario_from_dict(with_("run", {"duration_s": 0}))


def test_burst_needs_size_and_period():
    with pytest.raises(ScenarioError, match="burst_size"):
        scenario_from_dict(with_("load.0", {"tier": "free", "pattern": "burst"}))


def test_bad_toml_file(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text("name = \n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(p)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")


def test_keys_from_env_and_file(tmp_path):
    kf = tmp_path / "keys.txt"
    kf.write_text("# comment\nmine-a sk-aaa\nsk-bbb\n")
    d = with_("tiers.free.keys_file", str(kf))
    keys = resolve_keys(scenario_from_dict(d), environ={"K": "sk-1, sk-2"})
    assert [k.label for k in keys] == ["free-1", "free-2", "mine-a", "free-4"]
    assert "sk-" not in repr(keys)  # secrets never in reprs
    with pytest.raises(ScenarioError, match="K is empty or not set"):
        resolve_keys(scenario_from_dict(BASE), environ={})


def test_arrivals_are_bounded_and_bursts_repeat():
    s = scenario_from_dict(
        with_(
            "load.0",
            {
                "tier": "free",
                "pattern": "burst",
                "burst_size": 4,
                "burst_period_s": 3,
                "phase_s": 1,
            },
        )
    )
    ts = list(arrivals(s.load[0], 10.0, random.Random(1)))
    assert ts == [1.0] * 4 + [4.0] * 4 + [7.0] * 4
    p = scenario_from_dict(with_("load.0.rate_factor", 60.0))  # 60 req/s
    ts = list(arrivals(p.load[0], 10.0, random.Random(2)))
    assert all(0 <= t < 10 for t in ts) and ts == sorted(ts)
    assert 500 < len(ts) < 700


def test_builtin_default_scenario_parses():
    s = builtin_scenario()
    assert {"free", "pro"} <= set(s.tiers)


def test_scenario_round_trips_through_its_file_shape(tmp_path):
    import json

    from loadkit.scenario import scenario_to_dict

    s = builtin_scenario().with_overrides(duration_s=12)
    p = tmp_path / "s.json"
    p.write_text(json.dumps(scenario_to_dict(s)))
    back = load_scenario(p)
    assert back.load == s.load and back.tiers == s.tiers and back.duration_s == 12
    assert back.target == s.target and back.slo == s.slo


def test_load_keys_beyond_the_tier_are_refused():
    from loadkit.scenario import Key, plan

    s = scenario_from_dict(with_("load.0.keys", [2]))
    with pytest.raises(ScenarioError, match=r"load\[0\].keys: asks for key 2"):
        plan(s, [Key("free-1", "free", "k")])


def test_missing_server_config_is_named(tmp_path):
    with pytest.raises(ScenarioError, match="target.server_config"):
        scenario_from_dict(with_("target", {"server_config": str(tmp_path / "nope.toml")}))


def test_closed_loop_pauses_after_refusals():
    load = scenario_from_dict(BASE).load[0]
    assert load.pause_after(200, None, None) == 0
    assert load.pause_after(429, 2.5, None) == 2.5
    assert load.pause_after(429, 60.0, None) == 5.0  # capped
    assert load.pause_after(429, None, None) == 1.0
    assert load.pause_after(0, None, "refused") == 1.0  # no spinning on a dead target
    assert load.pause_after(0, None, "cancelled") == 0


def test_reused_output_directory_is_refused(tmp_path):
    import argparse

    from loadkit.run import run_main

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    args = argparse.Namespace(
        scenario=None,
        duration=1.0,
        target=None,
        engine="async",
        workers=None,
        out=str(out),
        quiet=True,
        no_analyze=True,
        parquet=False,
    )
    assert run_main(args) == 2
