"""The reference server's config: defaults, merges and one message per bad value naming the
field's path, what was expected and the value (never a key's value)."""

# ruff: noqa: E501  (the table below holds whole messages, one case a line)

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadkit.server.config import (
    ConfigError,
    LatencyProfile,
    ServerConfig,
    config_from_dict,
    default_config,
    load_config,
    model_from_dict,
)


def error_of(d: Any) -> str:
    with pytest.raises(ConfigError) as e:
        config_from_dict(d)
    return str(e.value)


@pytest.mark.parametrize(
    "d,message",
    [
        ({"tiers": {"free": {"requests": 0}}}, "tiers.free.requests: must be >= 1, got 0"),
        ({"tiers": {"free": {"requests": "x"}}}, "tiers.free.requests: expected an integer, got 'x'"),
        ({"tiers": {"free": {"window_s": 0}}}, "tiers.free.window_s: must be a positive number, got 0"),
        ({"tiers": {"free": {"balance": -1}}}, "tiers.free.balance: must be >= 0, got -1"),
        ({"tiers": {"gold": {"requests": 5}}}, "tiers.gold.concurrency: required (the tier is not free/pro/enterprise)"),
        ({"tiers": {"free": {"requets": 5}}}, "tiers.free.requets: unknown field (expected one of requests, window_s, concurrency, keys, balance, tokens, token_window_s, token_counts, requests_per_day, day_window_s, models)"),
        ({"tiers": {"free": {"name": "x"}}}, "tiers.free.name: unknown field (a tier's name is its table's name)"),
        ({"tiers": {"a b": {"requests": 1, "concurrency": 1}}}, "tiers.a b: expected a label: no spaces, 1 to 64 characters, got 'a b'"),
        ({"tiers": {}}, "tiers: must not be empty, got {}"),
        ({"tiers": 5}, "tiers: expected a table, got 5"),
        ({"limiter": {"mode": "magic"}}, "limiter.mode: expected 'exact', 'fixed_window', 'fixed_window_anchored', 'token_bucket', 'concurrency_off_by_one', 'late_release', 'under_admit' or 'off', got 'magic'"),
        ({"limiter": {"burst_factor": 1}}, "limiter.burst_factor: must be > 1, got 1"),
        ({"limiter": {"under_admit_fraction": 0}}, "limiter.under_admit_fraction: must be a positive number, got 0"),
        ({"limiter": {"under_admit_fraction": 1.5}}, "limiter.under_admit_fraction: must be <= 1, got 1.5"),
        ({"faults": {"error_rate": 1.5}}, "faults.error_rate: must be <= 1, got 1.5"),
        ({"faults": {"stall_s": float("nan")}}, "faults.stall_s: expected a finite number, got nan"),
        ({"faults": {"seed": "1"}}, "faults.seed: expected an integer, got '1'"),
        ({"billing": {"prompt_per_1k": -1}}, "billing.prompt_per_1k: must be >= 0, got -1"),
        ({"keys": [{"label": "x", "tier": "nope"}]}, "keys[0].tier: unknown tier 'nope' (tiers: ['enterprise', 'free', 'pro'])"),
        ({"keys": [{"label": "free-1", "tier": "free"}]}, "keys[0].label: 'free-1' is already used (by tiers.free.keys)"),
        ({"keys": [{"label": "admin", "tier": "free"}]}, "keys[0].label: 'admin' is already used (by admin.label)"),
        ({"keys": [{"tier": "free"}]}, "keys[0].label: required (the key's label in records and the truth log)"),
        ({"keys": [{"label": "x"}]}, "keys[0].tier: required (one of the config's tiers)"),
        ({"keys": [{"label": "x", "tier": " free"}]}, "keys[0].tier: expected a non-empty string without surrounding spaces, got ' free'"),
        ({"keys": {"label": "x"}}, "keys: expected a list, got {'label': 'x'}"),
        ({"admin": {"label": "a b"}}, "admin.label: expected a label: no spaces, 1 to 64 characters, got 'a b'"),
        ({"admin": {"concurrency": 0}}, "admin.concurrency: must be >= 1, got 0"),
        ({"models": [{"id": "m", "context_length": 0}]}, "models[0].context_length: must be >= 1, got 0"),
        ({"models": [{"id": "m", "capabilities": ["fly"]}]}, "models[0].capabilities: expected a non-empty list of ['chat', 'completion'], got ['fly']"),
        ({"models": [{"context_length": 5}]}, "models[0].id: required (the model's id)"),
        ({"models": [{"id": ""}]}, "models[0].id: expected a non-empty string without surrounding spaces, got ''"),
        ({"models": {"tiny": {"itl_ms": -1}}}, "models[0].itl_ms: must be >= 0, got -1"),
        ({"models": [{"id": "m", "latency": {"bogus": 1}}]}, "models[0].latency.bogus: unknown field (expected one of ttft_ms, prefill_ms_per_token, ttft_jitter_ms, itl_ms, itl_jitter_ms, decode_capacity_tps)"),
        ({"models": [{"id": "m", "latency": {"itl_ms": "fast"}}]}, "models[0].latency.itl_ms: expected a number, got 'fast'"),
        ({"models": 5}, "models: expected a list, got 5"),
        ({"server": {"max_body_bytes": "big"}}, "server.max_body_bytes: expected an integer, got 'big'"),
        ({"server": {"max_body_bytes": 10}}, "server.max_body_bytes: must be >= 1024, got 10"),
        ({"server": {"lateness_samples": 10}}, "server.lateness_samples: must be >= 1000, got 10"),
        ({"server": {"access_log": "yes"}}, "server.access_log: expected true or false, got 'yes'"),
        ({"server": {"port": 1}}, "server.port: unknown field (expected one of max_body_bytes, default_chat_max_tokens, default_completion_max_tokens, max_choices, seed, lateness_samples, access_log, api)"),
        ({"bogus": 1}, "bogus: unknown field (expected one of tiers, keys, admin, models, limiter, faults, billing, limits, server)"),
        (5, "expected a table, got 5"),
    ],
)  # fmt: skip
def test_config_errors_name_field_value_and_expectation(d: Any, message: str) -> None:
    assert error_of(d) == message


def test_keys_are_never_shown_in_errors() -> None:
    secret = "sk-has space"
    for d, message in [
        ({"keys": [{"label": "x", "tier": "free", "key": secret}]}, "keys[0].key: expected a key without whitespace (the value is not shown: keys are secret)"),
        ({"admin": {"key": secret}}, "admin.key: expected a key without whitespace (the value is not shown: keys are secret)"),
        ({"keys": [{"label": "x", "tier": "free", "key": 5}]}, "keys[0].key: expected a string (the value is not shown: keys are secret)"),
        ({"admin": {"key": "sk-1"}, "keys": [{"label": "x", "tier": "free", "key": "sk-1"}]}, "keys[0].key: the same key is given twice"),
    ]:  # fmt: skip
        assert error_of(d) == message


def test_defaults_and_merges() -> None:
    assert config_from_dict({}) == default_config()
    cfg = config_from_dict(
        {
            "tiers": {"free": {"requests": 5}, "gold": {"requests": 7, "concurrency": 2}},
            "models": {"tiny": {"context_length": 64, "capabilities": ["completion"]}},
            "server": {"seed": 3},
        }
    )
    free, gold = cfg.tiers  # given tiers replace the defaults, in the file's order
    assert (free.name, free.requests, free.window_s, free.concurrency, free.keys) == (
        "free", 5, 60.0, 3, 5  # the rest from the default free tier
    )  # fmt: skip
    assert (gold.name, gold.requests, gold.window_s, gold.concurrency, gold.keys) == (
        "gold", 7, 60.0, 2, 1
    )  # fmt: skip
    tiny = {m.id: m for m in cfg.models}["tiny"]
    assert (tiny.context_length, tiny.chat, tiny.completion) == (64, False, True)
    assert len(cfg.models) == len(default_config().models) + 1
    assert cfg.seed == 3 and cfg.max_body_bytes == ServerConfig.max_body_bytes


def test_a_model_replaces_the_default_with_its_id() -> None:
    cfg = config_from_dict({"models": [{"id": "loadkit-small", "itl_ms": 1}]})
    small = [m for m in cfg.models if m.id == "loadkit-small"]
    assert len(small) == 1 and small[0].latency == LatencyProfile(itl_ms=1.0)
    assert small[0].context_length == 4096  # a new model starts from the model defaults


def test_model_updates_keep_what_they_do_not_name() -> None:
    base = model_from_dict({"id": "m", "context_length": 100, "ttft_ms": 5, "itl_ms": 2}, "")
    m = model_from_dict({"itl_ms": 3, "latency": {"ttft_jitter_ms": 1}}, "", base=base)
    assert m.id == "m" and m.context_length == 100
    assert m.latency == LatencyProfile(ttft_ms=5.0, itl_ms=3.0, ttft_jitter_ms=1.0)
    both = model_from_dict({"itl_ms": 3, "latency": {"itl_ms": 4}}, "", base=base)
    assert both.latency.itl_ms == 4.0  # the latency table wins over the flat field
    with pytest.raises(ConfigError) as e:
        model_from_dict({"id": "other"}, "", base=base)
    assert str(e.value) == "id: cannot be changed (it is 'm'), got 'other'"
    with pytest.raises(ConfigError) as e:
        model_from_dict({"context_length": -1}, "", base=base)
    assert str(e.value) == "context_length: must be >= 1, got -1"  # the admin API's param
    with pytest.raises(ConfigError) as e:
        model_from_dict({"owned_by": 3}, "models[2]")
    assert str(e.value) == "models[2].owned_by: expected a string, got 3"


def test_load_config_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[tiers.free]\nrequests = -3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p}: tiers.free.requests: must be >= 1, got -3"
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"limiter": {"mode": "off"}}))
    assert load_config(j).limiter.mode == "off"
    j.write_text("[1]")
    with pytest.raises(ConfigError) as e:
        load_config(j)
    assert str(e.value) == f"config: {str(j)!r} must hold a table at top level"
