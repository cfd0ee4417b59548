"""Which limit refused a 429, decided from what real servers send. Each fixture is a 429
as that server answers it (headers and body), with where its shape comes from; the record
built by RequestTrace says which limit refused and which signal decided."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from loadkit.limit_signals import (
    CONCURRENCY,
    REQUESTS,
    REQUESTS_PER_DAY,
    SIGNALS,
    TOKENS,
    Refusal,
    Signal,
    attribute,
)
from loadkit.records import RequestRecord
from loadkit.trace import RequestInfo, RequestTrace

JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class Case:
    name: str
    headers: dict[str, str]
    body: bytes
    kind: str | None
    signal: str | None
    source: str = ""
    stream: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def err(message: str, type_: str | None, code: str | None, **top: str) -> bytes:
    e: dict[str, object] = {"message": message, "type": type_, "param": None, "code": code}
    return json.dumps({"error": e, **top}).encode()


CASES = [
    # loadkit's own server (loadkit/server/app.py, spec/API.md "Errors").
    Case(
        "loadkit requests",
        {
            **JSON,
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "350ms",
            "retry-after": "1",
            "retry-after-ms": "350",
        },
        err(
            "limit of requests per window reached for this key",
            "rate_limit_error",
            "rate_limit_exceeded",
        ),
        REQUESTS,
        "code=rate_limit_exceeded",
        "loadkit",
    ),
    Case(
        "loadkit concurrency (requests counter also at 0)",
        {
            **JSON,
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "retry-after": "1",
        },
        err(
            "limit of concurrent requests reached for this key",
            "rate_limit_error",
            "concurrency_limit_exceeded",
        ),
        CONCURRENCY,
        "code=concurrency_limit_exceeded",
        "loadkit",
    ),
    # OpenAI RPM / TPM: https://github.com/DrShushen/climb/issues/13 (TPM body, type
    # "tokens"), https://github.com/FoundationAgents/MetaGPT/issues/523 (TPM message).
    Case(
        "OpenAI TPM",
        {
            **JSON,
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "1m30.5s",
        },
        err(
            "Request too large for gpt-4o in organization org-x on tokens per min (TPM): "
            "Limit 30000, Requested 30601.",
            "tokens",
            "rate_limit_exceeded",
        ),
        TOKENS,
        "type=tokens",
        "https://github.com/DrShushen/climb/issues/13",
    ),
    Case(
        "OpenAI RPM",
        {**JSON, "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "39000"},
        err(
            "Rate limit reached for gpt-4 in organization org-x on requests per min (RPM): "
            "Limit 3, Used 3, Requested 1.",
            "requests",
            "rate_limit_exceeded",
        ),
        REQUESTS,
        "type=requests",
        "https://platform.openai.com/docs/guides/rate-limits",
    ),
    # A daily limit is not the per-minute one: the message tells them apart.
    Case(
        "OpenAI RPD",
        {**JSON, "x-ratelimit-remaining-requests": "499"},
        err(
            "Rate limit reached for gpt-4o-mini-realtime in organization org-xx on requests "
            "per day (RPD): Limit 1000, Used 1000, Requested 1. Please try again in 1m26.4s.",
            "requests",
            "rate_limit_exceeded",
        ),
        REQUESTS_PER_DAY,
        "message: 'on requests per day'",
        "https://github.com/openai/openai-agents-js/issues/1022",
    ),
    Case(
        "OpenAI-compatible TPM message only (no type)",
        JSON,
        err(
            "Rate limit reached for model in organization org-x on tokens per minute (TPM)",
            None,
            "rate_limit_exceeded",
        ),
        TOKENS,
        "message: 'on tokens per min'",
        "https://github.com/semanser/codel/issues/72",
    ),
    # Azure OpenAI: code "429", the message names the limit.
    # https://github.com/jasonacox/TinyLLM/issues/17, https://github.com/langchain-ai/langchain/issues/14339
    Case(
        "Azure OpenAI tokens",
        {**JSON, "retry-after": "86400", "x-ratelimit-remaining-requests": "7"},
        json.dumps(
            {
                "error": {
                    "code": "429",
                    "message": "Requests to the ChatCompletions_Create Operation under Azure "
                    "OpenAI API version 2024-05-01-preview have exceeded token rate limit of "
                    "your current OpenAI S0 pricing tier. Please retry after 86400 seconds.",
                }
            }
        ).encode(),
        TOKENS,
        "message: 'exceeded token rate limit'",
        "https://github.com/alex-wolf-ps/dbchatprov2/issues/2",
    ),
    Case(
        "Azure OpenAI calls",
        JSON,
        json.dumps(
            {
                "error": {
                    "code": "429",
                    "message": "Requests to the Embeddings_Create Operation under Azure OpenAI "
                    "API version 2023-05-15 have exceeded call rate limit of your current "
                    "OpenAI S0 pricing tier. Please retry after 3 seconds.",
                }
            }
        ).encode(),
        REQUESTS,
        "message: 'exceeded call rate limit'",
        "https://learn.microsoft.com/azure/ai-services/openai/quotas-limits",
    ),
    Case(
        "Azure 'Rate limit is exceeded' names nothing",
        {**JSON, "x-ratelimit-remaining-requests": "7", "x-ratelimit-remaining-tokens": "1014"},
        b'{"error":{"code":"429","message": "Rate limit is exceeded. Try again in 2 seconds."}}',
        None,
        None,
        "https://github.com/microsoft/copilot-camp/issues/551",
    ),
    # Anthropic: https://docs.anthropic.com/en/api/rate-limits (type rate_limit_error).
    Case(
        "Anthropic input tokens",
        {**JSON, "anthropic-ratelimit-input-tokens-remaining": "0", "retry-after": "12"},
        json.dumps(
            {
                "type": "error",
                "error": {
                    "type": "rate_limit_error",
                    "message": "This request would exceed the rate limit for your organization "
                    "of 20,000 input tokens per minute.",
                },
            }
        ).encode(),
        TOKENS,
        "message: 'input tokens'",
        "https://github.com/FoundationAgents/OpenManus/issues/746",
    ),
    Case(
        "Anthropic requests",
        {**JSON, "anthropic-ratelimit-requests-remaining": "0"},
        b'{"type":"error","error":{"type":"rate_limit_error",'
        b'"message":"Number of requests has exceeded your rate limit."}}',
        REQUESTS,
        "message: 'number of requests has exceeded'",
        "https://docs.rs/crate/claude-api/0.5.2/source/tests/fixtures/error_rate_limit.json",
    ),
    Case(
        "Anthropic counter only",
        {**JSON, "anthropic-ratelimit-output-tokens-remaining": "0"},
        b'{"type":"error","error":{"type":"rate_limit_error","message":"Rate limited."}}',
        TOKENS,
        "header anthropic-ratelimit-output-tokens-remaining=0",
        "https://docs.anthropic.com/en/api/rate-limits#response-headers",
    ),
    # LiteLLM proxy, parallel_request_limiter_v3: headers rate_limit_type, retry-after, reset_at.
    # https://github.com/BerriAI/litellm/blob/main/litellm/proxy/hooks/parallel_request_limiter_v3.py
    Case(
        "LiteLLM v3 max_parallel_requests",
        {
            **JSON,
            "retry-after": "60",
            "rate_limit_type": "max_parallel_requests",
            "reset_at": "2026-12-01 10:01:00 UTC",
        },
        err(
            "Rate limit exceeded for api_key: sk-x. Limit type: max_parallel_requests. "
            "Current limit: 2, Remaining: 0. Limit resets at: 2026-12-01 10:01:00 UTC",
            "None",
            "429",
        ),
        CONCURRENCY,
        "header rate_limit_type=max_parallel_requests",
        "LiteLLM parallel_request_limiter_v3",
    ),
    Case(
        "LiteLLM v3 tokens, message only",
        JSON,
        err(
            "Rate limit exceeded for team: t1. Limit type: tokens. Current limit: 5000, "
            "Remaining: 0.",
            "None",
            "429",
        ),
        TOKENS,
        "message: 'limit type: tokens'",
        "https://github.com/BerriAI/litellm/pull/14736",
    ),
    Case(
        "LiteLLM < 1.60 parallel limit",
        JSON,
        err("Max parallel request limit reached.", "None", "429"),
        CONCURRENCY,
        "message: 'max parallel request limit reached'",
        "https://github.com/BerriAI/litellm/issues/8392",
    ),
    Case(
        "LiteLLM 'Crossed TPM / RPM / Max Parallel Request Limit' names all three",
        JSON,
        err(
            "LiteLLM Rate Limit Handler for rate limit type = team. Crossed TPM / RPM / Max "
            "Parallel Request Limit. current rpm: 1, rpm limit: 15, current tpm: 12260, tpm "
            "limit: 5000, current max_parallel_requests: 0, max_parallel_requests: 922337",
            "None",
            "429",
        ),
        None,
        None,
        "https://github.com/BerriAI/litellm/issues/13898",
    ),
    Case(
        "LiteLLM descriptor counters",
        {**JSON, "x-ratelimit-api_key-remaining-max_parallel_requests": "0"},
        err("Rate limit exceeded.", "None", "429"),
        CONCURRENCY,
        "header x-ratelimit-api_key-remaining-max_parallel_requests=0",
        "litellm/proxy/hooks/_rate_limit_headers.py",
    ),
    # Hugging Face TGI, --max-concurrent-requests full (router/src/infer/mod.rs).
    Case(
        "TGI overloaded",
        JSON,
        b'{"error":"Model is overloaded","error_type":"overloaded"}',
        CONCURRENCY,
        "type=overloaded",
        "huggingface/text-generation-inference router/src/infer/mod.rs",
    ),
    # Baidu Qianfan (OpenAI-compatible): https://github.com/PaddlePaddle/ERNIE/issues/1031
    Case(
        "Qianfan RPM",
        JSON,
        b'{"error": {"code": "rpm_rate_limit_exceeded", "message": "Rate limit reached for '
        b'RPM", "type": "rate_limit_exceeded"}, "id": "as-wbx23eriqh"}',
        REQUESTS,
        "code=rpm_rate_limit_exceeded",
        "https://github.com/PaddlePaddle/ERNIE/issues/1031",
    ),
    # Kong: https://developer.konghq.com/plugins/ai-rate-limiting-advanced/ and rate-limiting.
    Case(
        "Kong AI tokens",
        {
            **JSON,
            "X-AI-RateLimit-Limit-minute-openai": "500",
            "X-AI-RateLimit-Remaining-minute-openai": "0",
            "X-AI-RateLimit-Reset-minute-openai": "8",
        },
        b'{"message":"AI token rate limit exceeded for provider(s): openai"}',
        TOKENS,
        "message: 'ai token rate limit exceeded'",
        "https://developer.konghq.com/plugins/ai-rate-limiting-advanced/",
    ),
    Case(
        "Kong AI counter only (negative remaining)",
        {**JSON, "x-ai-ratelimit-remaining-minute-openai": "-0.000006"},
        b'{"message":"Rate limit exceeded. Try again later."}',
        TOKENS,
        "header x-ai-ratelimit-remaining-minute-openai=-0.000006",
        "Kong AI Rate Limiting Advanced, custom error_message",
    ),
    Case(
        "Kong rate-limiting",
        {
            **JSON,
            "RateLimit-Limit": "5",
            "RateLimit-Remaining": "0",
            "X-RateLimit-Limit-Minute": "5",
            "X-RateLimit-Remaining-Minute": "0",
        },
        b'{"message":"API rate limit exceeded"}',
        REQUESTS,
        "message: 'api rate limit exceeded'",
        "https://developer.konghq.com/plugins/rate-limiting/",
    ),
    # Envoy local rate limit: plain-text body, x-envoy-ratelimited.
    # https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/local_rate_limit_filter
    Case(
        "Envoy local rate limit",
        {"content-type": "text/plain", "x-envoy-ratelimited": "true"},
        b"local_rate_limited",
        REQUESTS,
        "message: 'local_rate_limited'",
        "Envoy local_ratelimit",
    ),
    Case(
        "Envoy header only",
        {"x-envoy-ratelimited": "true"},
        b"",
        REQUESTS,
        "header x-envoy-ratelimited",
        "Envoy",
    ),
    # Counters only.
    Case(
        "requests counter at 0",
        {**JSON, "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "5"},
        b'{"error":{"message":"Too Many Requests","type":"rate_limit_error","code":"429"}}',
        REQUESTS,
        "header x-ratelimit-remaining-requests=0",
    ),
    Case(
        "tokens counter at 0",
        {**JSON, "x-ratelimit-remaining-requests": "12", "x-ratelimit-remaining-tokens": "0"},
        b'{"error":{"message":"Too Many Requests","type":"rate_limit_error","code":"429"}}',
        TOKENS,
        "header x-ratelimit-remaining-tokens=0",
    ),
    Case(
        "both counters at 0: ambiguous",
        {**JSON, "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "0"},
        b'{"error":{"message":"Too Many Requests","type":"rate_limit_error","code":"429"}}',
        None,
        "ambiguous: header x-ratelimit-remaining-requests=0, header x-ratelimit-remaining-tokens=0",
    ),
    Case(
        "IETF draft counter",
        {"ratelimit-remaining": "0", "ratelimit-limit": "100"},
        b"Too Many Requests",
        REQUESTS,
        "header ratelimit-remaining=0",
        "draft-ietf-httpapi-ratelimit-headers",
    ),
    Case("nothing said", {}, b"", None, None),
    Case(
        "an HTML error page",
        {"content-type": "text/html"},
        b"<html><body><h1>429 Too Many Requests</h1></body></html>",
        None,
        None,
    ),
]


def trace_429(case: Case) -> RequestRecord:
    info = RequestInfo("run", "async", "w", "w-1", "free", "free-1", "chat", case.stream, "m")
    t = RequestTrace(info, 0.0)
    t.response(0.1, 429, case.headers)
    if case.body:
        t.data(0.11, case.body)
    return t.finish(0.12)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_provider_refusal_is_attributed(case: Case):
    rec = trace_429(case)
    assert (rec.limit_kind, rec.limit_signal) == (case.kind, case.signal)


def test_attribution_is_kept_when_the_body_is_cut():
    case = CASES[1]  # loadkit concurrency
    info = RequestInfo("run", "async", "w", "w-1", "free", "free-1", "chat", True, "m")
    t = RequestTrace(info, 0.0)
    t.response(0.1, 429, case.headers)
    t.data(0.11, case.body)
    rec = t.fail(0.2, "reset")
    assert (rec.limit_kind, rec.error_code, rec.error_type) == (
        CONCURRENCY,
        "concurrency_limit_exceeded",
        "rate_limit_error",
    )


def test_headers_decide_when_no_body_arrives():
    info = RequestInfo("run", "async", "w", "w-1", "free", "free-1", "chat", True, "m")
    t = RequestTrace(info, 0.0)
    t.response(0.1, 429, {"rate_limit_type": "requests"})
    rec = t.fail(0.2, "timeout")
    assert (rec.limit_kind, rec.limit_signal) == (REQUESTS, "header rate_limit_type=requests")


def test_only_429s_are_attributed():
    info = RequestInfo("run", "async", "w", "w-1", "free", "free-1", "chat", False, "m")
    t = RequestTrace(info, 0.0)
    t.response(0.1, 503, {"x-ratelimit-remaining-requests": "0"})
    t.data(0.11, err("busy", "server_error", "rate_limit_exceeded"))
    rec = t.finish(0.12)
    assert (rec.limit_kind, rec.limit_signal) == (None, None)


def test_a_new_provider_is_one_line():
    body = Refusal("slow_down", None, "quota", {})
    assert attribute(body).kind is None
    mine = (*SIGNALS[:1], Signal("code", "slow_down", CONCURRENCY, "my gateway"), *SIGNALS[1:])
    assert attribute(body, mine) == (CONCURRENCY, "code=slow_down")


def test_the_first_naming_signal_in_table_order_wins():
    # loadkit's concurrency code beats an OpenAI-style "tokens" type sent with it...
    r = Refusal("concurrency_limit_exceeded", "tokens", "on requests per min", {})
    assert attribute(r).kind == CONCURRENCY
    # ...and a naming signal beats any counter at 0.
    r = Refusal(None, None, "exceeded call rate limit", {"x-ratelimit-remaining-tokens": "0"})
    assert attribute(r).kind == REQUESTS


def test_every_signal_names_a_known_limit():
    for s in SIGNALS:
        known = (None, REQUESTS, CONCURRENCY, TOKENS, REQUESTS_PER_DAY)
        assert s.kind in (*known, "model_requests", "model_concurrency"), s
    with pytest.raises(ValueError, match="kind"):
        Signal("code", "x", "bananas", "nobody")
    with pytest.raises(ValueError, match="needs a kind"):
        Signal("code", "x", None, "nobody")
    # Codes and header names are matched whatever their case.
    mine = (Signal("header", "X-Limit-Kind", None, "me"), Signal("code", "Slow_Down", TOKENS, "me"))
    assert attribute(Refusal(None, None, None, {"x-limit-kind": "Tokens"}), mine).kind == TOKENS
    assert attribute(Refusal("SLOW_DOWN", None, None, {}), mine).kind == TOKENS


def test_hostile_header_values_do_not_stall_or_fail():
    r = Refusal(None, None, "x" * 1_000_000, {"x-ratelimit-remaining-requests": "0" * 10_000})
    assert attribute(r) == (None, None)
