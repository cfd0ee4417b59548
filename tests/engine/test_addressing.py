"""How the asyncio engine addresses a target (scripted transport): the path layout of the
scenario's ``[target]`` (seed, OpenAI, explicit paths), the key in the target's auth style,
and extra static headers, ``${NAME}`` read from the environment."""

from __future__ import annotations

import pytest

from loadkit.api import OPENAI, AuthStyle, TargetApi
from loadkit.scenario import ScenarioError
from tests.engine.scripted import (
    TEST_KEYS,
    json_reply,
    make_scenario,
    run_scripted,
)

# One request of each kind, all at 0.1 s.
EVERY_KIND = {"chat": 1, "chat_stream": 1, "completions": 1, "completions_stream": 1, "models": 1}


def _sent(target: dict, keys: list | None = None, **engine: object) -> list:
    load = {
        "pattern": "burst",
        "burst_size": 20,
        "burst_period_s": 100,
        "phase_s": 0.1,
        "mix": EVERY_KIND,
    }
    run = run_scripted(make_scenario(load, target=target), json_reply(), keys=keys, **engine)
    assert len(run.records) == len(run.transport.sent) == 20 * len(keys or [1])
    return run.transport.sent


def _urls(sent: list) -> dict[tuple[str, str], set[str]]:
    """(method, endpoint kind) -> URLs sent."""
    out: dict[tuple[str, str], set[str]] = {}
    for s in sent:
        kind = "models" if s.body is None else ("chat" if "messages" in s.json() else "text")
        out.setdefault((s.method, kind), set()).add(s.url)
    return out


def test_the_seed_layout_puts_every_endpoint_under_ai():
    sent = _sent({"base_url": "http://gw.test/api/v1"})  # "auto": the seed's documented base
    assert _urls(sent) == {
        ("POST", "chat"): {"http://gw.test/api/v1/ai/chat/completions"},
        ("POST", "text"): {"http://gw.test/api/v1/ai/completions"},
        ("GET", "models"): {"http://gw.test/api/v1/ai/models"},
    }


def test_the_openai_layout_when_asked_for_whatever_the_base_url():
    sent = _sent({"base_url": "http://gw.test/proxy/", "api": "openai"})
    assert _urls(sent) == {
        ("POST", "chat"): {"http://gw.test/proxy/chat/completions"},
        ("POST", "text"): {"http://gw.test/proxy/completions"},
        ("GET", "models"): {"http://gw.test/proxy/models"},
    }


def test_explicit_paths_replace_the_layouts_own():
    chat = "/openai/deployments/d1/chat/completions"
    sent = _sent({"base_url": "http://gw.test/v1", "paths": {"chat": chat}})
    assert _urls(sent) == {
        ("POST", "chat"): {"http://gw.test/v1" + chat},
        ("POST", "text"): {"http://gw.test/v1/completions"},  # the rest: OpenAI (…/v1)
        ("GET", "models"): {"http://gw.test/v1/models"},
    }


def test_a_bare_key_in_its_own_header_and_nothing_in_authorization():
    sent = _sent({"auth_header": "api-key", "auth_scheme": ""}, keys=TEST_KEYS)
    by_key = {s.headers["api-key"] for s in sent}
    assert by_key == {k.secret for k in TEST_KEYS}
    assert all("Authorization" not in s.headers for s in sent)


def test_a_scheme_is_written_before_the_key():
    sent = _sent({"auth_header": "x-api-key", "auth_scheme": "Token"})
    assert {s.headers["x-api-key"] for s in sent} == {f"Token {TEST_KEYS[0].secret}"}


def test_extra_headers_are_sent_with_environment_values(monkeypatch):
    monkeypatch.setenv("LOADKIT_TEST_TENANT", "tenant-7")
    sent = _sent({"headers": {"x-tenant": "${LOADKIT_TEST_TENANT}", "x-team": "load"}})
    for s in sent:
        assert s.headers["x-tenant"] == "tenant-7" and s.headers["x-team"] == "load"
        assert s.headers["Authorization"] == f"Bearer {TEST_KEYS[0].secret}"
        assert s.headers["Accept-Encoding"] == "identity"
        assert s.headers["x-loadkit-request-id"]
    # Each request is labelled on its own.
    assert len({s.request_id for s in sent}) == len(sent)


def test_an_unset_environment_variable_in_a_header_is_refused_before_any_load(monkeypatch):
    monkeypatch.delenv("LOADKIT_TEST_UNSET", raising=False)
    with pytest.raises(ScenarioError, match="LOADKIT_TEST_UNSET is not set"):
        _sent({"headers": {"x-tenant": "${LOADKIT_TEST_UNSET}"}})


def test_a_resolved_api_given_to_the_engine_is_the_one_used():
    # run.py resolves the target once (pre-flight uses the same) and hands it over.
    api = TargetApi(OPENAI, AuthStyle("api-key", ""), (("x-org", "o1"),))
    sent = _sent({"base_url": "http://gw.test/api/v1"}, api=api)
    assert _urls(sent)[("POST", "chat")] == {"http://gw.test/api/v1/chat/completions"}
    assert all(s.headers["api-key"] == TEST_KEYS[0].secret for s in sent)
    assert all(s.headers["x-org"] == "o1" and "Authorization" not in s.headers for s in sent)
