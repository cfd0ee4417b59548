"""Path layouts and auth styles: the URL and headers a request of each kind gets."""

from __future__ import annotations

import json
import random

import pytest

from loadkit.api import (
    OPENAI,
    SEED,
    AuthStyle,
    TargetApi,
    check_header_name,
    check_header_value,
    custom_layout,
    default_layout_name,
)
from loadkit.payloads import prepare


@pytest.mark.parametrize(
    ("layout", "kind", "path"),
    [
        (SEED, "chat_stream", "/ai/chat/completions"),
        (SEED, "completions", "/ai/completions"),
        (SEED, "models", "/ai/models"),
        (OPENAI, "chat", "/chat/completions"),
        (OPENAI, "completions_stream", "/completions"),
        (OPENAI, "models", "/models"),
    ],
)
def test_each_layout_puts_each_kind_on_its_path(layout, kind, path):
    req = prepare(kind, "m", 4, 8, random.Random(1), layout)
    assert req.path == path
    if req.body is not None:
        body = json.loads(req.body)
        assert body["model"] == "m" and body["max_tokens"] == 8
        assert body["stream"] == kind.endswith("_stream")


def test_same_body_whatever_the_layout():
    a = prepare("chat_stream", "m", 16, 8, random.Random(7), SEED)
    b = prepare("chat_stream", "m", 16, 8, random.Random(7), OPENAI)
    assert a.body == b.body and a.path != b.path


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://api.example.com/api/v1", "seed"),
        ("http://127.0.0.1:8080/api/v1/", "seed"),
        ("https://api.openai.com/v1", "openai"),
        ("http://localhost:8000/v1/", "openai"),
        ("https://gw.example.com/openai", "seed"),
    ],
)
def test_default_layout_from_the_base_url(url, name):
    assert default_layout_name(url) == name


def test_explicit_paths_override_a_layout():
    lay = custom_layout(OPENAI, {"chat": "/deployments/gpt/chat/completions"})
    assert lay.name == "custom"
    assert lay.path("chat") == "/deployments/gpt/chat/completions"
    assert lay.path("completions") == "/completions"
    assert lay.path("model", "x") == "/models/x"
    with pytest.raises(ValueError, match="unknown endpoint"):
        custom_layout(OPENAI, {"embeddings": "/e"})
    with pytest.raises(ValueError, match="starting with '/'"):
        custom_layout(OPENAI, {"chat": "chat"})
    with pytest.raises(ValueError, match=r"\{model\}"):
        custom_layout(OPENAI, {"model": "/models/one"})


@pytest.mark.parametrize(
    ("auth", "header", "value"),
    [
        (AuthStyle(), "Authorization", "Bearer sk-1"),
        (AuthStyle("api-key", ""), "api-key", "sk-1"),
        (AuthStyle("x-api-key", ""), "x-api-key", "sk-1"),
        (AuthStyle("Authorization", "Token"), "Authorization", "Token sk-1"),
    ],
)
def test_auth_styles(auth, header, value):
    api = TargetApi(OPENAI, auth, (("OpenAI-Organization", "org-1"),))
    h = api.headers("sk-1")
    assert h[header] == value
    assert h["OpenAI-Organization"] == "org-1"
    assert h["Accept-Encoding"] == "identity"
    described = json.dumps(api.describe())
    assert "sk-1" not in described and header in described


def test_no_key_no_auth_header():
    assert "Authorization" not in TargetApi().headers(None)


def test_header_checks_name_the_problem_never_the_value():
    with pytest.raises(ValueError, match="not a valid HTTP header name"):
        check_header_name("bad name", "target.headers")
    with pytest.raises(ValueError, match="set by loadkit itself"):
        check_header_name("Content-Type", "target.headers")
    with pytest.raises(ValueError) as e:
        check_header_value("sk-secret\r\nX: y", "target.headers.X-Token")
    assert "sk-secret" not in str(e.value)
