"""Scenario files: valid ones parse (and survive a trip through their file shape), bad ones
are refused with one message naming the field's path, what was expected and the value."""

# ruff: noqa: E501  (the tables below hold whole messages, one case a line)

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadkit.arrivals import arrivals
from loadkit.run import builtin_scenario
from loadkit.scenario import (
    Dist,
    Key,
    Scenario,
    ScenarioError,
    load_scenario,
    plan,
    resolve_keys,
    scenario_from_dict,
    scenario_to_dict,
)

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {
    "run": {"duration_s": 10},
    "target": {},
    "tiers": {"free": {"requests": 60, "window_s": 60, "concurrency": 3, "keys_env": "K"}},
    "load": [{"tier": "free", "pattern": "poisson", "rate_factor": 1.5}],
}


def with_(path: str, value: Any) -> dict[str, Any]:
    """BASE with the value at a dotted path replaced (``...`` removes it)."""
    d = copy.deepcopy(BASE)
    cur: Any = d
    parts = path.split(".")
    for p in parts[:-1]:
        cur = cur[int(p)] if isinstance(cur, list) else cur[p]
    last: Any = int(parts[-1]) if isinstance(cur, list) else parts[-1]
    if value is ...:
        del cur[last]
    else:
        cur[last] = value
    return d


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as e:
        scenario_from_dict(data)
    return str(e.value)


def test_valid_scenario_and_rate_factor() -> None:
    s = scenario_from_dict(BASE)
    assert s.load[0].rate_per_s == pytest.approx(1.5)  # 1.5 x 60 per 60 s
    assert s.tiers["free"].promised() == {"requests": 60, "window_s": 60.0, "concurrency": 3}
    assert s.name == "<dict>" and s.duration_s == 10.0 and s.drain_s == 30.0


@pytest.mark.parametrize(
    "path,value,message",
    [
        # types
        ("tiers.free.requests", "sixty", "tiers.free.requests: expected an integer, got 'sixty'"),
        ("tiers.free.requests", True, "tiers.free.requests: expected an integer, got True"),
        ("run.duration_s", "long", "run.duration_s: expected a number, got 'long'"),
        ("run.seed", 1.5, "run.seed: expected an integer, got 1.5"),
        ("run.honour_retry_after", 1, "run.honour_retry_after: expected true or false, got 1"),
        ("tiers.free.keys_env", 5, "tiers.free.keys_env: expected a string, got 5"),
        ("name", 5, "name: expected a string, got 5"),
        ("load.0.keys", "all", "load[0].keys: expected a list, got 'all'"),
        ("target", 5, "target: expected a table, got 5"),
        ("tiers.free", 5, "tiers.free: expected a table, got 5"),
        ("slo", 3, "slo: expected a table, got 3"),
        ("sweep", [], "sweep: expected a table, got []"),
        ("goodput", 3, "goodput: expected a table, got 3"),
        # ranges
        ("tiers.free.concurrency", 0, "tiers.free.concurrency: must be >= 1, got 0"),
        ("tiers.free.window_s", 0, "tiers.free.window_s: must be a positive number, got 0"),
        ("tiers.free.keys", -1, "tiers.free.keys: must be >= 0, got -1"),
        ("load.0.rate_factor", -1, "load[0].rate_factor: must be a positive number, got -1"),
        ("load.0.keys", [0], "load[0].keys[0]: must be >= 1, got 0"),
        ("load.0.duration_s", 0, "load[0].duration_s: must be a positive number, got 0"),
        ("run.max_requests", -1, "run.max_requests: must be >= 0, got -1"),
        ("run.duration_s", -1, "run.duration_s: must be >= 0, got -1"),
        ("run.drain_s", -2, "run.drain_s: must be >= 0, got -2"),
        ("goodput", {"ttft_ms": -5}, "goodput.ttft_ms: must be a positive number, got -5"),
        ("target.connect_timeout_s", math.inf, "target.connect_timeout_s: expected a finite number, got inf"),
        ("target.read_timeout_s", math.nan, "target.read_timeout_s: expected a finite number, got nan"),
        # choices
        ("load.0.pattern", "zigzag", "load[0].pattern: expected 'constant', 'poisson', 'burst' or 'closed', got 'zigzag'"),
        ("run.engine", "k6", "run.engine: expected 'async' or 'locust', got 'k6'"),
        ("target.base_url", "ftp://x", "target.base_url: expected 'embedded' or an http(s) URL, got 'ftp://x'"),
        ("load.0.tier", "gold", "load[0].tier: 'gold' is not a tier of this scenario (tiers: free)"),
        ("load.0.phase_s", "soon", "load[0].phase_s: expected 'random' or seconds >= 0, got 'soon'"),
        ("load.0.backoff_429_s", -1, "load[0].backoff_429_s: expected 'retry-after' or seconds >= 0, got -1"),
        # the mix
        ("load.0.mix", {"chat_stream": 1, "images": 1}, "load[0].mix.images: expected 'chat_stream', 'chat', 'completions_stream', 'completions' or 'models', got 'images'"),
        ("load.0.mix", {}, "load[0].mix: expected a table of weights such as {chat_stream = 1}, got {}"),
        ("load.0.mix", {"chat": 0}, "load[0].mix: expected a weight > 0 (every weight is 0), got {'chat': 0.0}"),
        ("load.0.mix", {"chat": -1}, "load[0].mix.chat: must be >= 0, got -1"),
        ("load.0.mix", {"chat": True}, "load[0].mix.chat: expected a number, got True"),
        # token distributions
        ("load.0.max_tokens", 0, "load[0].max_tokens: must be >= 1, got 0"),
        ("load.0.max_tokens", "lots", "load[0].max_tokens: expected a count or a table such as {dist = 'uniform', min = 10, max = 50}, got 'lots'"),
        ("load.0.max_tokens", {"dist": "gauss"}, "load[0].max_tokens.dist: expected one of fixed, uniform, normal, choice, got 'gauss'"),
        ("load.0.max_tokens", {"dist": "uniform", "min": 9, "max": 3}, "load[0].max_tokens.max: must be >= min (9), got 3"),
        ("load.0.max_tokens", {"dist": "normal", "mean": 3, "min": 5, "max": 4}, "load[0].max_tokens.max: must be >= min (5), got 4"),
        ("load.0.max_tokens", {"dist": "normal", "mean": 0}, "load[0].max_tokens.mean: must be a positive number, got 0"),
        ("load.0.max_tokens", {"dist": "choice"}, "load[0].max_tokens.values: required (the counts to draw from, equally likely)"),
        ("load.0.max_tokens", {"dist": "choice", "values": [1, 0]}, "load[0].max_tokens.values[1]: must be >= 1, got 0"),
        ("load.0.max_tokens", {"dist": "choice", "values": []}, "load[0].max_tokens.values: must not be empty, got []"),
        ("load.0.max_tokens", {"dist": "fixed", "value": 2.5}, "load[0].max_tokens.value: expected an integer, got 2.5"),
        # unknown fields, at every level
        ("surprise", 1, "surprise: unknown field (expected one of target, run, tiers, load, slo, goodput, sweep, name, description)"),
        ("run.surprise", 1, "run.surprise: unknown field (expected one of duration_s, max_requests, warmup_s, drain_s, seed, engine, honour_retry_after, max_retries, parquet_twins)"),
        ("target.url", "x", "target.url: unknown field (expected one of base_url, model, connect_timeout_s, request_timeout_s, read_timeout_s, server_config, api, paths, auth_header, auth_scheme, headers, http_client)"),
        ("tiers.free.rpm", 60, "tiers.free.rpm: unknown field (expected one of requests, window_s, concurrency, tokens, token_window_s, token_counts, requests_per_day, day_window_s, models, keys_env, keys_file, keys)"),
        ("tiers.free.name", "x", "tiers.free.name: unknown field (a tier's name is its table's name)"),
        ("load.0.max_tokens", {"dist": "uniform", "mean": 3}, "load[0].max_tokens.mean: unknown field (expected one of dist, min, max)"),
        ("load.0.rps", 1, "load[0].rps: unknown field (expected one of tier, pattern, rate_per_s, rate_per_min, rate_factor, token_factor, token_side, concurrency, think_s, burst_size, burst_period_s, phase_s, start_s, duration_s, mix, model, prompt_tokens, max_tokens, max_in_flight, keys, backoff_429_s)"),
        # required and bounded
        ("tiers.free.requests", ..., "tiers.free.requests: required (promised: admitted requests in any span of window_s)"),
        ("tiers", ..., "tiers: required (at least one [tiers.NAME] table: what the service promises)"),
        ("tiers", {}, "tiers: must not be empty, got {}"),
        ("load", ..., "load: required (at least one [[load]] table)"),
        ("load", [], "load: must not be empty, got []"),
        ("load.0.tier", ..., "load[0].tier: required (the tier whose keys this phase loads)"),
        ("run", {"duration_s": 0}, "run: set duration_s > 0 or max_requests > 0; every run must be bounded"),
        ("run", ..., "run: set duration_s > 0 or max_requests > 0; every run must be bounded"),
        # what a pattern needs
        ("load.0", {"tier": "free", "pattern": "burst"}, "load[0]: a burst load needs burst_size >= 1 and burst_period_s > 0 (got 0, 0.0)"),
        ("load.0", {"tier": "free", "pattern": "closed"}, "load[0].concurrency: a closed load needs users per key >= 1, got 0"),
        ("load.0", {"tier": "free", "pattern": "constant"}, "load[0]: a constant load needs exactly one of rate_per_s, rate_per_min, rate_factor (got none)"),
        ("load.0.rate_per_s", 2, "load[0]: a poisson load needs exactly one of rate_per_s, rate_per_min, rate_factor (got rate_per_s, rate_factor)"),
        ("load.0", {"tier": "free", "pattern": "burst", "burst_size": 3, "burst_period_s": 1, "rate_per_min": 1}, "load[0].rate_per_min: only for constant/poisson loads, not 'burst'"),
    ],
)  # fmt: skip
def test_bad_fields_are_named_with_value_and_expectation(
    path: str, value: Any, message: str
) -> None:
    assert error_of(with_(path, value)) == f"<dict>: {message}"


def test_a_file_error_starts_with_the_file_name(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text('[run]\nduration_s = 10\n\n[tiers.free]\nrequests = "sixty"\nconcurrency = 3\n')
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    assert str(e.value) == f"{p}: tiers.free.requests: expected an integer, got 'sixty'"


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text("name = \n")
    with pytest.raises(ScenarioError, match=rf"^{p}: not valid TOML \("):
        load_scenario(p)
    q = tmp_path / "s.json"
    q.write_text("{")
    with pytest.raises(ScenarioError, match=rf"^{q}: not valid JSON \("):
        load_scenario(q)
    with pytest.raises(ScenarioError, match="^.*missing.toml: cannot read scenario"):
        load_scenario(tmp_path / "missing.toml")


def test_relative_paths_resolve_beside_the_scenario_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "server.toml").write_text("")
    (tmp_path / "keys.txt").write_text("sk-a\n")
    p = tmp_path / "s.toml"
    p.write_text(
        '[target]\nserver_config = "conf/server.toml"\n[run]\nduration_s = 5\n'
        '[tiers.free]\nrequests = 1\nconcurrency = 1\nkeys_file = "keys.txt"\n'
        '[[load]]\ntier = "free"\nrate_per_s = 1\n'
    )
    s = load_scenario(p)
    assert s.target.server_config == str(tmp_path / "conf" / "server.toml")
    assert s.tiers["free"].keys_file == str(tmp_path / "keys.txt")
    assert [k.label for k in resolve_keys(s, environ={})] == ["free-1"]


def test_missing_server_config_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    assert error_of(with_("target", {"server_config": missing})) == (
        f"<dict>: target.server_config: cannot read {missing!r} (no such file)"
    )


def test_defaults_and_conversions() -> None:
    s = scenario_from_dict(
        {
            "run": {"max_requests": 20},
            "tiers": {"t": {"requests": 120, "concurrency": 2}},
            "load": {  # one table, as [load], is a list of one
                "tier": "t",
                "pattern": "constant",
                "rate_per_min": 30,
                "mix": {"chat": 2, "models": 0},
                "prompt_tokens": {"dist": "normal", "mean": 10, "sd": 2},
                "max_tokens": {"dist": "uniform", "min": 4},
            },
        },
        source="dir/check.toml",
    )
    assert s.name == "check" and math.isinf(s.duration_s) and s.max_requests == 20
    assert s.target.base_url == "embedded" and s.tiers["t"].window_s == 60.0
    ld = s.load[0]
    assert ld.rate_per_s == 0.5 and ld.mix == (("chat", 2.0),)  # a zero weight is dropped
    assert ld.prompt_tokens == Dist("normal", mean=10.0, sd=2.0, min=1, max=18)
    assert ld.max_tokens == Dist("uniform", min=4, max=4)
    assert ld.phase_s is None and ld.backoff_429_s is None and ld.keys == ()


def test_base_url_loses_its_trailing_slash() -> None:
    s = scenario_from_dict(with_("target.base_url", "https://api.example.com/api/v1/"))
    assert s.target.base_url == "https://api.example.com/api/v1"


def test_keys_from_env_and_file(tmp_path: Path) -> None:
    kf = tmp_path / "keys.txt"
    kf.write_text("# comment\nmine-a sk-aaa\nsk-bbb\n")
    d = with_("tiers.free.keys_file", str(kf))
    keys = resolve_keys(scenario_from_dict(d), environ={"K": "sk-1, sk-2"})
    assert [k.label for k in keys] == ["free-1", "free-2", "mine-a", "free-4"]
    assert [k.secret for k in keys] == ["sk-1", "sk-2", "sk-aaa", "sk-bbb"]
    assert "sk-" not in repr(keys)  # secrets never in reprs
    with pytest.raises(ScenarioError, match="^tiers.free.keys_env: environment variable K is"):
        resolve_keys(scenario_from_dict(BASE), environ={})


def test_keys_errors_never_show_a_key(tmp_path: Path) -> None:
    kf = tmp_path / "keys.txt"
    kf.write_text("one sk-secret-1 extra\n")
    s = scenario_from_dict(
        with_("tiers.free", {"requests": 1, "concurrency": 1, "keys_file": str(kf)})
    )
    with pytest.raises(ScenarioError) as e:
        resolve_keys(s, environ={})
    assert str(e.value) == f"tiers.free.keys_file: {kf}:1: expected 'KEY' or 'LABEL KEY'"
    s = scenario_from_dict(with_("tiers.free.keys", 1))
    assert [k.secret for k in resolve_keys(s, environ={"K": "a,b"})] == ["a"]
    dup = with_("tiers.pro", {"requests": 1, "concurrency": 1, "keys_file": str(kf)})
    kf.write_text("free-1 sk-x\n")
    with pytest.raises(ScenarioError, match="^key labels are not unique: free-1$"):
        resolve_keys(scenario_from_dict(dup), environ={"K": "sk-y"})


def test_arrivals_are_bounded_and_bursts_repeat() -> None:
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
    assert len(ts) == 587  # this seed's draw of Poisson(600)


def test_duration_override_is_validated() -> None:
    s = builtin_scenario().with_overrides(duration_s=12, base_url="http://127.0.0.1:1/api/v1")
    assert s.duration_s == 12.0 and s.target.base_url == "http://127.0.0.1:1/api/v1"
    with pytest.raises(ScenarioError) as e:
        builtin_scenario().with_overrides(duration_s=-3)
    assert str(e.value) == "--duration: must be a positive number, got -3"


# --- the file shape round trip ---------------------------------------------------------


def _without_key_sources(s: Scenario) -> Scenario:
    """What survives ``scenario_to_dict``: everything but where keys come from and the
    scenario's source."""
    tiers = {n: replace(t, keys_env=None, keys_file=None) for n, t in s.tiers.items()}
    return replace(s, tiers=tiers, source="<dict>")


def _round_trip(s: Scenario) -> Scenario:
    # Through JSON, as the Locust engine hands a scenario to its processes.
    return scenario_from_dict(json.loads(json.dumps(scenario_to_dict(s))))


SCENARIO_FILES = sorted((ROOT / "loadkit" / "scenarios").glob("*.toml")) + sorted(
    (ROOT / "examples").glob("*.toml")
)


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: p.name)
def test_shipped_scenarios_round_trip_through_their_file_shape(path: Path) -> None:
    s = load_scenario(path)
    assert _round_trip(s) == _without_key_sources(s)


def test_overrides_survive_the_round_trip() -> None:
    s = builtin_scenario().with_overrides(duration_s=12)
    assert _round_trip(s) == _without_key_sources(s)
    assert _round_trip(s).duration_s == 12
    # --no-twins reaches every engine's writers through the scenario they are handed
    assert builtin_scenario().parquet_twins
    off = builtin_scenario().with_overrides(parquet_twins=False)
    assert not _round_trip(off).parquet_twins


def test_every_field_survives_the_round_trip(tmp_path: Path) -> None:
    (tmp_path / "srv.toml").write_text("")
    s = scenario_from_dict(
        {
            "name": "all",
            "description": "every field set",
            "target": {
                "base_url": "https://h/api/v1",
                "model": "m",
                "connect_timeout_s": 1,
                "request_timeout_s": 2,
                "read_timeout_s": 3,
                "server_config": "srv.toml",
            },
            "run": {
                "duration_s": 0,
                "max_requests": 9,
                "warmup_s": 1,
                "drain_s": 2,
                "seed": 3,
                "engine": "async",
                "honour_retry_after": True,
                "max_retries": 5,
                "parquet_twins": False,
            },
            "tiers": {"a": {"requests": 5, "window_s": 2, "concurrency": 2, "keys": 2}},
            "load": [
                {
                    "tier": "a",
                    "pattern": "burst",
                    "burst_size": 3,
                    "burst_period_s": 2,
                    "phase_s": 0.5,
                    "start_s": 1,
                    "duration_s": 4,
                    "mix": {"chat": 1, "models": 2},
                    "model": "x",
                    "prompt_tokens": {"dist": "choice", "values": [3, 5]},
                    "max_tokens": {"dist": "normal", "mean": 8, "sd": 1, "min": 2, "max": 9},
                    "max_in_flight": 2,
                    "keys": [2],
                    "backoff_429_s": 0.25,
                    "think_s": 0.5,
                },
                {"tier": "a", "pattern": "closed", "concurrency": 4, "think_s": 0.1},
            ],
            "slo": {"ttft_ms": {"p99": 100}, "error_rate": 0.1},
            "goodput": {"ttft_ms": 50},
            "sweep": {"values": [1, 2]},
        },  # fmt: skip
        base_dir=tmp_path,
    )
    assert _round_trip(s) == _without_key_sources(s)


_counts = st.integers(1, 500)
_dists = st.one_of(
    _counts,
    st.builds(lambda v: {"dist": "fixed", "value": v}, _counts),
    st.builds(
        lambda lo, d: {"dist": "uniform", "min": lo, "max": lo + d}, _counts, st.integers(0, 50)
    ),
    st.builds(
        lambda m, sd: {"dist": "normal", "mean": m, "sd": sd}, st.floats(1, 100), st.floats(0, 20)
    ),
    st.builds(
        lambda vs: {"dist": "choice", "values": vs}, st.lists(_counts, min_size=1, max_size=4)
    ),
)
_seconds = st.floats(0, 100, allow_nan=False)
_open = st.fixed_dictionaries(
    {
        "pattern": st.sampled_from(["constant", "poisson"]),
        "rate_per_s": st.floats(0.01, 100),
    }  # fmt: skip
)
_burst = st.fixed_dictionaries(
    {
        "pattern": st.just("burst"),
        "burst_size": _counts,
        "burst_period_s": st.floats(0.1, 100),
        "phase_s": st.one_of(st.just("random"), _seconds),
    }  # fmt: skip
)
_closed = st.fixed_dictionaries(
    {
        "pattern": st.just("closed"),
        "concurrency": st.integers(1, 20),
        "think_s": _seconds,
        "backoff_429_s": st.one_of(st.just("retry-after"), _seconds),
    }  # fmt: skip
)
_load = st.tuples(
    st.one_of(_open, _burst, _closed),
    st.fixed_dictionaries(
        {"tier": st.just("t"), "prompt_tokens": _dists, "max_tokens": _dists},
        optional={
            "start_s": _seconds,
            "duration_s": st.floats(0.5, 100),
            "max_in_flight": st.integers(0, 9),
            "keys": st.lists(st.integers(1, 3)),
            "mix": st.dictionaries(
                st.sampled_from(["chat", "chat_stream", "models"]), st.floats(0.5, 3), min_size=1
            ),
        },
    ),  # fmt: skip
).map(lambda parts: {**parts[1], **parts[0]})


@settings(max_examples=60, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    loads=st.lists(_load, min_size=1, max_size=3),
    duration=st.one_of(st.just(0), st.floats(0.5, 1000)),
    window=st.floats(0.5, 600),
)
def test_generated_scenarios_round_trip(
    loads: list[dict[str, Any]], duration: float, window: float
) -> None:
    s = scenario_from_dict(
        {
            "run": {"duration_s": duration, "max_requests": 10},
            "tiers": {"t": {"requests": 7, "window_s": window, "concurrency": 2}},
            "load": loads,
        }
    )
    assert _round_trip(s) == _without_key_sources(s)


# --- plans and pauses --------------------------------------------------------------------


def test_builtin_default_scenario_parses() -> None:
    s = builtin_scenario()
    assert set(s.tiers) == {"free", "pro"} and len(s.load) == 8
    # one probe per free key (docs/scenarios.md, "Probes")
    assert {k for ld in s.load if ld.tier == "free" for k in ld.keys} == {1, 2, 3, 4, 5}


def test_load_keys_beyond_the_tier_are_refused() -> None:
    s = scenario_from_dict(with_("load.0.keys", [2]))
    with pytest.raises(ScenarioError, match=r"^load\[0\].keys: asks for key 2 of tier 'free', "):
        plan(s, [Key("free-1", "free", "k")])
    two = [Key("free-1", "free", "k1"), Key("free-2", "free", "k2")]
    assert [(k.label, ld.keys) for k, ld in plan(s, two)] == [("free-2", (2,))]


def test_closed_loop_pauses_after_refusals() -> None:
    load = scenario_from_dict(BASE).load[0]
    assert load.pause_after(200, None, None) == 0
    assert load.pause_after(429, 2.5, None) == 2.5
    assert load.pause_after(429, 60.0, None) == 5.0  # capped
    assert load.pause_after(429, None, None) == 1.0
    assert load.pause_after(0, None, "refused") == 1.0  # no spinning on a dead target
    assert load.pause_after(0, None, "cancelled") == 0


def test_reused_output_directory_is_refused(tmp_path: Path) -> None:
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
