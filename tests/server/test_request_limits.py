"""Per-request limits: what one request may ask for is bounded, each bound answers 400
``invalid_parameters`` naming it (``limits.<name>``), a request exactly at a bound is
served, and checking a bound never costs more than the body's size."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadkit.server.config import ConfigError, config_from_dict, default_config
from loadkit.server.errors import ApiError
from loadkit.server.limits import RequestLimits, check_output
from loadkit.server.validation import (
    effective_max_tokens,
    json_depth,
    parse_json_body,
    validate_chat,
    validate_completion,
)
from tests.server.conftest import Raw

MSG = [{"role": "user", "content": "hi"}]


def err(fn, *a, **kw) -> ApiError:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as ei:
        fn(*a, **kw)
    return ei.value


# --- nesting ---------------------------------------------------------------------------


def depth_of(v: Any) -> int:
    if isinstance(v, list):
        return 1 + max(map(depth_of, v), default=0)
    if isinstance(v, dict):
        return 1 + max(map(depth_of, v.values()), default=0)
    return 0


tricky_text = st.text(alphabet='[]{}"\\ab\n\t', max_size=8)
json_trees = st.recursive(
    st.one_of(st.none(), st.integers(), tricky_text),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(tricky_text, inner, max_size=3)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_trees)
def test_json_depth_counts_nesting_outside_strings(tree: Any) -> None:
    raw = json.dumps(tree, ensure_ascii=False).encode()
    assert json_depth(raw) == depth_of(tree)


def nested_in_a_message(depth: int) -> bytes:
    deep = "[" * depth + "]" * depth
    return (
        '{"model": "m", "messages": [{"role": "user", "content": "hi", "x": ' + deep + "}]}"
    ).encode()


@pytest.mark.parametrize("depth", [975, 5000])
def test_deep_nesting_is_refused_naming_the_limit(depth: int) -> None:
    # 975 parsed, then overflowed the stack while the server seeded the text: a 500 once
    e = err(parse_json_body, nested_in_a_message(depth), 64)
    assert (e.status, e.code) == (400, "invalid_parameters")
    assert "limits.max_json_depth" in e.message and "64" in e.message


def test_nesting_up_to_the_limit_is_accepted() -> None:
    # the body, messages and the message are 3 levels
    assert parse_json_body(nested_in_a_message(61), 64)["model"] == "m"
    assert err(parse_json_body, nested_in_a_message(62), 64).code == "invalid_parameters"


def test_body_must_be_utf8() -> None:
    assert err(parse_json_body, '{"model": "é"}'.encode("latin-1")).message.startswith(
        "the request body is not UTF-8"
    )
    assert parse_json_body(b"\xef\xbb\xbf" + b'{"a": 1}') == {"a": 1}  # a BOM is tolerated


# --- output ----------------------------------------------------------------------------


def test_check_output_names_each_limit() -> None:
    lim = RequestLimits(max_output_tokens=1000, max_logprob_entries=2000)
    check_output(lim, 4, 250, None)  # exactly at the limit
    e = err(check_output, lim, 4, 251, None)
    assert e.param == "max_tokens" and "limits.max_output_tokens" in e.message
    assert "4 x 251 = 1004" in e.message
    check_output(lim, 1, 100, 19)  # 100 x 20 = 2000
    e = err(check_output, lim, 1, 100, 20)
    assert e.param == "logprobs" and "limits.max_logprob_entries" in e.message
    e = err(check_output, lim, 1, 10, 5, echoed_tokens=400)  # echoed prompt tokens count
    assert e.param == "logprobs"


def test_stop_sequences_and_logit_bias_are_bounded() -> None:
    e = err(validate_chat, {"model": "m", "messages": MSG, "stop": "x" * 1001})
    assert e.param == "stop" and "limits.max_stop_chars" in e.message
    assert validate_chat({"model": "m", "messages": MSG, "stop": "x" * 1000}).sampling.stop
    bias = {str(i): 1 for i in range(1025)}
    assert err(validate_chat, {"model": "m", "messages": MSG, "logit_bias": bias}).param == (
        "logit_bias"
    )


# --- prompts are counted only as far as any model could take -----------------------------


def test_a_huge_prompt_is_counted_only_up_to_the_cap() -> None:
    text = "word " * 200_000  # a megabyte
    r = validate_chat({"model": "m", "messages": [{"role": "user", "content": text}]}, 128, 100)
    assert r.prompt_capped and 100 < r.prompt_tokens <= 110
    e = err(effective_max_tokens, None, 16, r.prompt_tokens, 100, "messages", r.prompt_capped)
    assert e.code == "context_length_exceeded" and "at least" in e.message
    parts = [{"type": "text", "text": ""}] * 100_000  # many empty parts are bounded too
    r = validate_chat({"model": "m", "messages": [{"role": "user", "content": parts}]}, 128, 100)
    assert r.prompt_capped
    c = validate_completion({"model": "m", "prompt": list(range(50_000))}, 128, 100)
    assert c.prompt_capped and c.prompts[0].tokens == 50_000
    assert not validate_chat({"model": "m", "messages": MSG}, 128, 100).prompt_capped


# --- configuration ---------------------------------------------------------------------


def test_limits_and_api_in_the_config() -> None:
    cfg = config_from_dict({"limits": {"max_output_tokens": 10, "header_timeout_s": 0.5},
                            "server": {"api": "openai"}})  # fmt: skip
    assert cfg.limits.max_output_tokens == 10 and cfg.limits.header_timeout_s == 0.5
    assert cfg.api == "openai" and default_config().api == "seed"
    for bad, field in [
        ({"limits": {"max_json_depth": 2}}, "limits.max_json_depth"),
        ({"limits": {"body_timeout_s": 0}}, "limits.body_timeout_s"),
        ({"limits": {"max_tokens": 5}}, "limits.max_tokens"),
        ({"server": {"api": "azure"}}, "server.api"),
    ]:
        with pytest.raises(ConfigError) as ei:
            config_from_dict(bad)
        assert str(ei.value).startswith(field + ":")


# --- end to end --------------------------------------------------------------------------

SMALL = {"limits": {"max_output_tokens": 1000, "max_logprob_entries": 2000},
         "tiers": {"pro": {"requests": 100_000, "concurrency": 50, "keys": 1}}}  # fmt: skip


def test_limits_end_to_end(serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve(SMALL, truth=False)
    raw = Raw(srv.api_root)
    key = srv.key("pro-1")
    chat = {"model": "loadkit-instant", "messages": MSG}
    cases = [
        ({**chat, "n": 4, "max_tokens": 250}, 200, None),
        ({**chat, "n": 4, "max_tokens": 251}, 400, "limits.max_output_tokens"),
        ({**chat, "n": 4, "max_tokens": 250, "stream": True}, 200, None),
        ({**chat, "max_tokens": 95, "logprobs": True, "top_logprobs": 20}, 200, None),
        ({**chat, "max_tokens": 96, "logprobs": True, "top_logprobs": 20}, 400,
         "limits.max_logprob_entries"),
    ]  # fmt: skip
    for body, status, limit in cases:
        got, _, data = raw.request("POST", "/chat/completions", body, key)
        assert got == status, (body, data[:300])
        if limit:
            assert limit in json.loads(data)["error"]["message"]
    done = {"model": "loadkit-instant", "prompt": ["a", "b"], "best_of": 5, "max_tokens": 100}
    assert raw.request("POST", "/completions", done, key)[0] == 200  # 2 x 5 x 100
    over = {**done, "max_tokens": 101}
    status, _, data = raw.request("POST", "/completions", over, key)
    assert (
        status == 400 and "prompts x best_of x max_tokens" in json.loads(data)["error"]["message"]
    )
    # a megabyte-long prompt: refused as too long without being counted to its end
    big = {**chat, "messages": [{"role": "user", "content": "word " * 200_000}]}
    status, _, data = raw.request("POST", "/chat/completions", big, key)
    assert status == 400 and json.loads(data)["error"]["code"] == "context_length_exceeded"
    # the 975-deep body: 400 naming the limit, not a 500
    status, _, data = raw.request("POST", "/chat/completions", nested_in_a_message(975), key)
    assert status == 400 and "limits.max_json_depth" in json.loads(data)["error"]["message"]
