"""``[target]``'s API layout, paths, auth style and extra headers: parsed, validated with
messages that name the field, resolved into the URLs and headers the engines send."""

from __future__ import annotations

import pytest

from loadkit.scenario import ScenarioError, scenario_from_dict, scenario_to_dict


def scenario(**target):
    return scenario_from_dict(
        {
            "name": "t",
            "run": {"duration_s": 5},
            "target": {"base_url": "https://api.example.com/v1", **target},
            "tiers": {"free": {"requests": 60, "concurrency": 3, "keys_env": "K"}},
            "load": [{"tier": "free", "pattern": "constant", "rate_per_s": 1}],
        },
        source="s.toml",
    )


@pytest.mark.parametrize(
    ("base_url", "api", "chat"),
    [
        ("https://api.example.com/v1", "auto", "/chat/completions"),
        ("https://api.example.com/api/v1", "auto", "/ai/chat/completions"),
        ("https://api.example.com/api/v1", "openai", "/chat/completions"),
        ("http://127.0.0.1:8000/v1", "seed", "/ai/chat/completions"),
    ],
)
def test_layout(base_url, api, chat):
    t = scenario(base_url=base_url, api=api).target.target_api()
    assert t.layout.path("chat") == chat


def test_azure_style_target():
    s = scenario(
        auth_header="api-key",
        auth_scheme="",
        paths={"chat": "/openai/deployments/gpt4o/chat/completions?api-version=2024-06-01"},
        headers={"X-Team": "perf", "X-Gateway-Token": "${GW_TOKEN}"},
    )
    api = s.target.target_api({"GW_TOKEN": "gw-secret"})
    h = api.headers("sk-1")
    assert h["api-key"] == "sk-1" and "Authorization" not in h
    assert h["X-Team"] == "perf" and h["X-Gateway-Token"] == "gw-secret"
    assert api.layout.path("chat").startswith("/openai/deployments/gpt4o/")
    assert api.layout.path("models") == "/models"
    # The scenario as written keeps the reference, never the secret.
    assert scenario_to_dict(s)["target"]["headers"]["X-Gateway-Token"] == "${GW_TOKEN}"
    with pytest.raises(ScenarioError, match="GW_TOKEN is not set"):
        s.target.target_api({})


def test_round_trip():
    s = scenario(api="openai", auth_header="x-api-key", auth_scheme="", headers={"A": "b"})
    again = scenario_from_dict(scenario_to_dict(s))
    assert again.target == s.target


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"api": "azure"}, "s.toml: target.api: expected 'auto', 'seed' or 'openai', got 'azure'"),
        (
            {"auth_header": "bad name"},
            "s.toml: target.auth_header: expected an HTTP header name (letters, digits, '-'), "
            "got 'bad name'",
        ),
        (
            {"headers": {"Content-Type": "x"}},
            "s.toml: target.headers.Content-Type: expected a header loadkit does not set "
            "itself, got 'Content-Type'",
        ),
        (
            {"auth_scheme": "Bear er"},
            's.toml: target.auth_scheme: expected a single word such as "Bearer", or "" '
            "for the bare key, got 'Bear er'",
        ),
        (
            {"paths": {"chat": "chat"}},
            "s.toml: target.paths.chat: expected a path starting with '/', without spaces, "
            "got 'chat'",
        ),
        (
            {"paths": {"embeddings": "/e"}},
            "s.toml: target.paths.embeddings: expected 'chat', 'completions', 'models' or "
            "'model', got 'embeddings'",
        ),
    ],
)
def test_bad_target_fields_are_named(target, message):
    with pytest.raises(ScenarioError) as e:
        scenario(**target)
    assert str(e.value) == message


def test_a_header_value_with_a_line_break_is_refused_without_echoing_it():
    with pytest.raises(ScenarioError) as e:
        scenario(headers={"X-Token": "secret-123\r\nEvil: 1"})
    assert "target.headers.X-Token" in str(e.value)
    assert "secret-123" not in str(e.value)


def test_a_model_path_needs_its_placeholder():
    with pytest.raises(ValueError, match=r"\{model\}"):
        scenario(paths={"model": "/models/x"}).target.target_api()
