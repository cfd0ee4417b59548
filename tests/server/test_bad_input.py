"""Bad input gets a 4xx with the OpenAI error body, never a 5xx or a dead server:
a hypothesis fuzz over malformed bodies, plus oversized bodies, unknown routes and
wrong methods."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadkit.server.testing import ServerThread
from tests.server.conftest import Raw

# max_choices stays at its default (128): the output limits bound the cost of a request
FUZZ_CONFIG = {
    "tiers": {"pro": {"requests": 1_000_000, "window_s": 60, "concurrency": 50, "keys": 1}},
    "server": {"max_body_bytes": 65536},
    "limits": {"max_output_tokens": 2048, "max_logprob_entries": 4096},
}


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[tuple[ServerThread, Raw]]:
    with ServerThread(FUZZ_CONFIG) as srv:
        raw = Raw(srv.base_url)
        yield srv, raw
        raw.close()


def assert_error_body(status: int, data: bytes) -> None:
    assert status < 500, data[:300]
    if status != 200:
        body = json.loads(data)
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert isinstance(err["message"], str) and isinstance(err["code"], str)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["model", "messages", "prompt", "stream", "max_tokens", "temperature", "top_p", "n",
          "stop", "presence_penalty", "frequency_penalty", "logit_bias", "user", "suffix",
          "logprobs", "echo", "best_of", "stream_options", "seed", "top_logprobs"]  # fmt: skip
good_values: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["loadkit-instant", "loadkit-chat", "loadkit-instruct", "x"]),
    "messages": st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "bot"]), "content": json_values}
        ),
        max_size=3,
    ),
    "prompt": st.one_of(st.text(max_size=30), st.lists(st.integers(-5, 70000), max_size=5)),
    "max_tokens": st.integers(-2, 40),
    "n": st.integers(-1, 6),
    "best_of": st.integers(-1, 6),
    "logprobs": st.integers(-1, 7),
    "stream": st.booleans(),
}
bodies = st.dictionaries(
    st.sampled_from(FIELDS),
    st.one_of(json_values, *good_values.values()),
    max_size=10,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(path=st.sampled_from(["/ai/chat/completions", "/ai/completions"]), body=bodies)
def test_fuzz_json_bodies(fuzz_server, path: str, body: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    srv, raw = fuzz_server
    status, h, data = raw.request("POST", path, body, srv.key("pro-1"))
    assert_error_body(status, data)
    assert "x-ratelimit-limit-requests" in h


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(raw_body=st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode)))
def test_fuzz_raw_bytes(fuzz_server, raw_body: bytes) -> None:  # type: ignore[no-untyped-def]
    srv, raw = fuzz_server
    status, _, data = raw.request("POST", "/ai/chat/completions", raw_body, srv.key("pro-1"))
    assert_error_body(status, data)


def test_fixed_bad_inputs(fuzz_server) -> None:  # type: ignore[no-untyped-def]
    srv, raw = fuzz_server
    key = srv.key("pro-1")
    cases = [
        ("POST", "/ai/chat/completions", b"not json", 400, "invalid_parameters"),
        ("POST", "/ai/chat/completions", b"[]", 400, "invalid_parameters"),
        ("POST", "/ai/chat/completions", b'{"model": 1}', 400, "invalid_parameters"),
        ("POST", "/ai/completions", b"x" * 70000, 413, "request_too_large"),
        ("GET", "/ai/chat/completions", None, 405, "method_not_allowed"),
        ("DELETE", "/ai/models", None, 405, "method_not_allowed"),
        ("GET", "/ai/nowhere", None, 404, "not_found"),
        ("GET", "/nowhere", None, 404, "not_found"),
        ("GET", "/ai/models/nope", None, 404, "model_not_found"),
        ("PATCH", "/ai/admin/models/loadkit-instant", b"{}", 403, "forbidden"),
        ("GET", "/ai/admin/stats", None, 403, "forbidden"),
    ]
    for method, path, body, want_status, want_code in cases:
        status, _, data = raw.request(method, path, body, key)
        assert (status, json.loads(data)["error"]["code"]) == (want_status, want_code), path
    # still serving
    ok = raw.request("POST", "/ai/completions", {"model": "loadkit-instant", "prompt": "x"}, key)
    assert ok[0] == 200
    stats = srv.stats()
    assert stats["status"].get("500", 0) == 0 and stats["in_flight"]["by_key"] == {"admin": 1}


def test_wrong_auth_forms(fuzz_server) -> None:  # type: ignore[no-untyped-def]
    srv, raw = fuzz_server
    body = {"model": "loadkit-instant", "prompt": "x"}
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"},
                    {"Authorization": "Bearer " + srv.key("pro-1") + "x"}):  # fmt: skip
        status, _, data = raw.request("POST", "/ai/completions", body, headers=headers)
        assert status == 401 and json.loads(data)["error"]["code"] == "unauthorized"
