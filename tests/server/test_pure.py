"""Pure parts of the server without sockets: tokenizer, generation, validation, latency,
billing, config."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadkit.server.billing import Ledger
from loadkit.server.config import (
    BillingConfig,
    ConfigError,
    LatencyProfile,
    config_from_dict,
    default_config,
    load_config,
)
from loadkit.server.errors import ApiError
from loadkit.server.generation import generate
from loadkit.server.keys import KeyStore, bearer_token, resolve_keys
from loadkit.server.latency import fixed_itl_ns, itl_ns, knee_streams, ttft_ns
from loadkit.server.responses import (
    full_body,
    live_chat,
    live_completion,
    plan_chat,
    plan_completion,
)
from loadkit.server.tokenizer import count_tokens, decode_ids, token_id, tokenize
from loadkit.server.validation import (
    effective_max_tokens,
    parse_json_body,
    validate_chat,
    validate_completion,
)
from loadkit.server.work import drive

# --- tokenizer / generation -----------------------------------------------------------


@given(st.text())
def test_tokens_concatenate_back(text: str) -> None:
    toks = tokenize(text)
    assert "".join(toks) == text
    assert count_tokens(text) == len(toks)


def test_tokenizer_examples() -> None:
    assert tokenize("Hello, world!") == ["Hello", ",", " world", "!"]
    assert count_tokens("") == 0
    assert decode_ids([token_id(" the"), token_id(" load")]) == " the load"


def test_generation_is_deterministic_and_honours_max_tokens() -> None:
    a, b = generate(42, 30), generate(42, 30)
    assert a == b and len(a.tokens) == 30 and a.finish_reason == "length"
    assert generate(43, 30).text != a.text
    assert generate(42, 10).tokens == a.tokens[:10]  # a longer budget extends the same text


def test_stop_sequence_cuts_before_it() -> None:
    full = generate(7, 200)
    assert "." in full.text
    cut = generate(7, 200, stop=(".",))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(".")]
    assert "." not in cut.text
    # A stop across token boundaries: the first three words
    words = "".join(full.tokens[1:3])
    cut2 = generate(7, 200, stop=(words,))
    assert cut2.text == full.text[: full.text.index(words)]


# --- validation -----------------------------------------------------------------------

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def err(fn, *a) -> ApiError:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as ei:
        fn(*a)
    return ei.value


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"temperature": 2.1}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.01}, "top_p"),
        ({"n": 0}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"50256": 101}}, "logit_bias"),
        ({"logit_bias": []}, "logit_bias"),
        ({"user": 1}, "user"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"stream_options": 3}, "stream_options"),
    ],
)
def test_chat_rejects(patch: dict, param: str) -> None:
    e = err(validate_chat, {**CHAT, **patch})
    assert (e.status, e.code, e.param) == (400, "invalid_parameters", param)


def test_chat_accepts_edges_and_ignores_unknown() -> None:
    r = validate_chat(
        {
            **CHAT,
            "temperature": 0,
            "top_p": 1,
            "n": 3,
            "stop": "x",
            "presence_penalty": -2,
            "logit_bias": {"50256": -100},
            "max_tokens": 5,
            "whatever": {"deep": [1]},
            "user": None,
        }
    )
    assert r.sampling.n == 3 and r.sampling.stop == ("x",) and r.sampling.max_tokens == 5
    assert r.prompt_tokens > 0


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [[1], []]}, "prompt"),
        ({"logprobs": 6}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"echo": 1}, "echo"),
        ({"suffix": 2}, "suffix"),
        ({"best_of": 1, "n": 2}, "best_of"),
        ({"best_of": 3, "n": 1, "stream": True}, "best_of"),
    ],
)
def test_completion_rejects(patch: dict, param: str) -> None:
    e = err(validate_completion, {"model": "m", "prompt": "hi", **patch})
    assert (e.code, e.param) == ("invalid_parameters", param)


def test_completion_prompt_forms() -> None:
    assert validate_completion({"model": "m", "prompt": "a b"}).prompt_tokens == 2
    assert len(validate_completion({"model": "m", "prompt": ["a", "b c"]}).prompts) == 2
    assert validate_completion({"model": "m", "prompt": [1, 2, 3]}).prompt_tokens == 3
    r = validate_completion({"model": "m", "prompt": [[1, 2], [3]]})
    assert [p.tokens for p in r.prompts] == [2, 1]


@pytest.mark.parametrize("raw", [b"", b"  ", b"{", b"[1]", b'"x"', b"nul", b"\xff\xfe"])
def test_body_must_be_a_json_object(raw: bytes) -> None:
    assert err(parse_json_body, raw).code == "invalid_parameters"


def test_context_length() -> None:
    assert effective_max_tokens(None, 16, 10, 100, "prompt") == 16
    assert effective_max_tokens(None, 16, 90, 100, "prompt") == 10  # default clipped
    assert effective_max_tokens(10, 16, 90, 100, "prompt") == 10
    e = err(effective_max_tokens, 11, 16, 90, 100, "prompt")
    assert (e.code, e.param) == ("context_length_exceeded", "prompt")
    assert err(effective_max_tokens, None, 16, 100, 100, "messages").code == (
        "context_length_exceeded"
    )


# --- plans: streaming and non-streaming agree -----------------------------------------


def _stream_text(live, kind: str) -> dict[int, str]:  # type: ignore[no-untyped-def]
    out: dict[int, str] = {}
    while not live.done:
        chunks, _ = drive(live.step_chunks_work())
        for ch in chunks:
            c = ch["choices"][0]
            piece = c["delta"]["content"] if kind == "chat" else c["text"]
            out[c["index"]] = out.get(c["index"], "") + piece
    return out


def test_chat_plan_stream_equals_body() -> None:
    req = validate_chat({**CHAT, "n": 3, "stop": ["."], "max_tokens": 40})
    plan = plan_chat(req, 40, 0, 0)
    body = full_body(plan)
    texts = _stream_text(live_chat(req, 40, 0, 0), "chat")
    for c in body["choices"]:
        assert texts[c["index"]] == c["message"]["content"]
    assert body["usage"]["completion_tokens"] == sum(len(c.gen.tokens) for c in plan.choices)
    assert not body["choices"][0]["message"]["content"].startswith(" ")


def test_completion_plan_echo_suffix_logprobs() -> None:
    req = validate_completion(
        {"model": "m", "prompt": ["Once upon", "a time"], "n": 2, "echo": True,
         "suffix": " THE END", "logprobs": 3, "max_tokens": 6}
    )  # fmt: skip
    plan = plan_completion(req, 6, 0, 0)
    body = full_body(plan)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["choices"][0]["text"].startswith("Once upon")
    assert body["choices"][0]["text"].endswith(" THE END")
    lp = body["choices"][0]["logprobs"]
    assert lp["token_logprobs"][0] is None  # the first prompt token has none, as OpenAI
    assert len(lp["tokens"]) == len(lp["text_offset"]) == 2 + 6
    assert all(len(t) == 3 for t in lp["top_logprobs"][1:])
    texts = _stream_text(live_completion(req, 6, 0, 0), "completions")
    for c in body["choices"]:
        assert texts[c["index"]] == c["text"]
    json.dumps(body)


def test_best_of_picks_n_and_bills_all() -> None:
    req = validate_completion({"model": "m", "prompt": "x", "n": 2, "best_of": 5, "max_tokens": 4})
    plan = plan_completion(req, 4, 0, 0)
    assert len(plan.choices) == 2 and plan.completion_tokens == 20 and plan.sequences == 5


def test_temperature_zero_gives_identical_choices() -> None:
    plan = plan_chat(validate_chat({**CHAT, "n": 2, "temperature": 0}), 10, 0, 0)
    assert plan.choices[0].gen.text == plan.choices[1].gen.text


# --- latency ---------------------------------------------------------------------------


def test_latency_profile_maths() -> None:
    rng = random.Random(1)
    p = LatencyProfile(ttft_ms=50, prefill_ms_per_token=0.5, ttft_jitter_ms=0, itl_ms=20)
    assert ttft_ns(p, 100, rng) == 100_000_000
    assert itl_ns(p, 1, rng) == 20_000_000
    cap = LatencyProfile(itl_ms=20, decode_capacity_tps=1000)
    assert knee_streams(cap) == 20
    assert itl_ns(cap, 10, rng) == 20_000_000  # under the knee
    assert itl_ns(cap, 100, rng) == 100_000_000  # 100 streams share 1000 tok/s
    j = LatencyProfile(itl_ms=20, itl_jitter_ms=5, ttft_ms=10, ttft_jitter_ms=4)
    for _ in range(200):
        assert 15e6 <= itl_ns(j, 1, rng) <= 25e6
        assert 10e6 <= ttft_ns(j, 0, rng) <= 14e6
    assert LatencyProfile().is_zero and ttft_ns(LatencyProfile(), 1000, rng) == 0


def test_a_fixed_itl_is_what_itl_ns_gives_at_any_load() -> None:
    rng = random.Random(1)
    p = LatencyProfile(ttft_ms=50, itl_ms=20.0000004)
    assert fixed_itl_ns(p) == 20_000_000
    assert all(itl_ns(p, n, rng) == fixed_itl_ns(p) for n in (0, 1, 10_000))
    assert rng.random() == random.Random(1).random()  # and it drew nothing
    assert fixed_itl_ns(LatencyProfile(itl_ms=20, itl_jitter_ms=1)) is None
    assert fixed_itl_ns(LatencyProfile(itl_ms=20, decode_capacity_tps=1000)) is None


# --- billing -----------------------------------------------------------------------------


def test_ledger_holds_then_charges_actual_usage() -> None:
    led = Ledger(BillingConfig(prompt_per_1k=1.0, completion_per_1k=2.0), {"a": 0.1, "u": None})
    h = led.hold("a", 10, 40)  # 0.01 + 0.08 = 0.09
    assert led.balance("a") == pytest.approx(0.01)
    e = err(led.hold, "a", 10, 40)
    assert (e.status, e.code) == (402, "billing_check_failed")
    led.settle(h, 10, 5)  # actual 0.01 + 0.01
    assert led.balance("a") == pytest.approx(0.08)
    led.hold("u", 10**6, 10**6)  # unlimited
    assert led.balance("u") is None


# --- config and keys ----------------------------------------------------------------


def test_default_config_matches_the_brief() -> None:
    cfg = default_config()
    tiers = {t.name: (t.requests, t.window_s, t.concurrency, t.keys) for t in cfg.tiers}
    assert tiers == {
        "free": (60, 60.0, 3, 5),
        "pro": (1000, 60.0, 10, 2),
        "enterprise": (10000, 60.0, 100, 1),
    }
    models = {m.id: m for m in cfg.models}
    assert models["loadkit-chat"].chat and not models["loadkit-chat"].completion
    assert models["loadkit-instruct"].completion and not models["loadkit-instruct"].chat
    assert models["loadkit-instant"].latency.is_zero
    admin, keys = resolve_keys(cfg)
    assert [k.label for k in keys] == [
        *(f"free-{i}" for i in range(1, 6)),
        "pro-1",
        "pro-2",
        "enterprise-1",
    ]
    assert admin.label == "admin" and len({k.key for k in [admin, *keys]}) == 9


@pytest.mark.parametrize(
    ("d", "field"),
    [
        ({"tiers": {"free": {"requests": 0}}}, "tiers.free.requests"),
        ({"tiers": {"free": {"requests": "x"}}}, "tiers.free.requests"),
        ({"tiers": {"free": {"window_s": 0}}}, "tiers.free.window_s"),
        ({"tiers": {"gold": {"requests": 5}}}, "tiers.gold.concurrency"),
        ({"tiers": {"free": {"requets": 5}}}, "tiers.free.requets"),
        ({"limiter": {"mode": "magic"}}, "limiter.mode"),
        ({"faults": {"error_rate": 1.5}}, "faults.error_rate"),
        ({"keys": [{"label": "x", "tier": "nope"}]}, "keys[0].tier"),
        ({"keys": [{"label": "free-1", "tier": "free"}]}, "keys[0].label"),
        ({"models": [{"id": "m", "context_length": 0}]}, "models[0].context_length"),
        ({"models": [{"id": "m", "capabilities": ["fly"]}]}, "models[0].capabilities"),
        ({"server": {"max_body_bytes": "big"}}, "server.max_body_bytes"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_config_errors_name_the_field(d: dict, field: str) -> None:
    with pytest.raises(ConfigError) as ei:
        config_from_dict(d)
    assert str(ei.value).startswith(field + ":")


def test_config_from_toml_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "c.toml"
    p.write_text(
        """
[tiers.free]
requests = 5
window_s = 2.0
concurrency = 2
keys = 2
balance = 1.5

[[keys]]
label = "ci"
tier = "free"
key = "sk-ci-123"

[[models]]
id = "tiny"
context_length = 64
capabilities = ["completion"]
itl_ms = 5

[limiter]
mode = "token_bucket"
burst_factor = 3.0
"""
    )
    cfg = load_config(p)
    assert cfg.tier("free").window_s == 2.0 and cfg.limiter.burst_factor == 3.0
    assert [t.name for t in cfg.tiers] == ["free"]
    assert {m.id for m in cfg.models} >= {"tiny", "loadkit-instant"}
    admin, keys = resolve_keys(cfg)
    ks = KeyStore([admin, *keys])
    assert ks.lookup("sk-ci-123").label == "ci"  # type: ignore[union-attr]
    assert ks.lookup("sk-ci-124") is None and ks.lookup("") is None
    assert keys[0].balance == 1.5
    with pytest.raises(ConfigError, match="not valid TOML"):
        (tmp_path / "bad.toml").write_text("[tiers\n")
        load_config(tmp_path / "bad.toml")


def test_bearer_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token(None) is None and bearer_token("Bearer ") is None
