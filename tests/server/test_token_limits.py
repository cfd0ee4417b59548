"""Token, per-day and per-model limits of the reference server: the pure logs against brute
force, the exact mode holding its promises (checked from the truth log alone), each wrong
mode caught from the same log, the answers a client sees (429 codes, messages, headers,
Retry-After), and how a client attributes the server's refusals."""

from __future__ import annotations

import http.client
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadkit.limit_signals import REQUESTS_PER_DAY, TOKENS
from loadkit.server.testing import ServerThread
from loadkit.server.token_limiter import (
    Ask,
    FixedWindowLog,
    Rules,
    SlidingLog,
    TokenLimiter,
    WindowRule,
)
from loadkit.trace import RequestInfo, RequestTrace
from tests.server.conftest import Raw, truth_of

S = 1_000_000_000
WORD = "word"  # one token for the server's tokenizer


# --- pure: the logs ------------------------------------------------------------------------


def brute_used(admitted: list[tuple[int, int]], now: int, window: int) -> int:
    return sum(u for t, u in admitted if now - window < t <= now)


def brute_wait(admitted: list[tuple[int, int]], now: int, units: int, limit: int, w: int) -> int:
    """The least d >= 0 with the window at now + d holding room for ``units`` (no other
    admission meanwhile): room only appears when an admission leaves, at its t + W."""
    for d in sorted({0} | {t + w - now for t, _ in admitted if t + w > now}):
        if brute_used(admitted, now + d, w) + units <= limit:
            return d
    raise AssertionError("units <= limit always fit in the end")


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 60),
    window=st.integers(1, 50),
    events=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 70)), max_size=60),
)
def test_sliding_log_decides_and_waits_like_brute_force(
    limit: int, window: int, events: list[tuple[int, int]]
) -> None:
    log = SlidingLog(window)
    admitted: list[tuple[int, int]] = []
    now = 0
    for gap, units in events:
        now += gap
        wait = log.wait_ns(now, units, limit)
        assert log.used(now) == brute_used(admitted, now, window)
        if units > limit:
            assert wait is None  # can never be admitted: no promise
            continue
        assert wait == brute_wait(admitted, now, units, limit, window)
        if wait == 0:
            log.admit(now, units)
            admitted.append((now, units))
        last = max((t for t, _ in admitted if t > now - window), default=None)
        assert log.reset_ns(now) == (0 if last is None else last + window - now)
    # the promise: no window span ever holds more than the limit
    for t, _ in admitted:
        assert brute_used(admitted, t, window) <= limit


def test_sliding_log_forgets_what_left_the_window() -> None:
    log = SlidingLog(10)
    for t in range(5000):
        assert log.wait_ns(t, 1, 10) == 0
        log.admit(t, 1)
    assert len(log.times) < 2100  # old entries dropped now and then, not kept forever
    assert log.wait_ns(4999, 1, 10) == 1 and log.used(5000) == 9


def test_fixed_window_admits_twice_the_limit_across_an_edge() -> None:
    log = FixedWindowLog(10 * S)
    for t in (9 * S, 9 * S + 1, 10 * S, 10 * S + 1):
        assert log.wait_ns(t, 50, 100) == 0
        log.admit(t, 50)
    # 200 tokens in the 1-s span (9 s, 10 s]: a sliding window holds at most 100
    assert log.wait_ns(10 * S + 2, 1, 100) == 10 * S - 2


def test_output_only_counts_output_whatever_the_promise_says() -> None:
    total = Rules((WindowRule("tokens", 100, 60 * S, "total"),))
    ask = Ask(input_tokens=90, output_tokens=5, model="m")
    exact, wrong = TokenLimiter("exact"), TokenLimiter("output_only")
    assert exact.commit("k", total, ask, 0) == {"tokens": 95}
    assert wrong.commit("k", total, ask, 0) == {"tokens": 5}
    assert exact.check("k", total, ask, 1) is not None  # 95 + 95 > 100
    assert wrong.check("k", total, ask, 1) is None  # wrongly admitted


def test_check_counts_nothing_and_model_rules_apply_to_their_model() -> None:
    rules = Rules(
        (WindowRule("tokens", 10, S, "input", "a"), WindowRule("requests_per_day", 2, S)),
        concurrency=(("a", 1),),
    )
    lim = TokenLimiter()
    a, b = Ask(6, 1, "a"), Ask(6, 1, "b")
    for _ in range(3):
        assert lim.check("k", rules, a, 0) is None  # asking again and again costs nothing
    assert lim.commit("k", rules, a, 0) == {
        "models.a.tokens": 6,
        "requests_per_day": 1,
        "models.a.concurrency": 1,
    }
    refusal = lim.check("k", rules, a, 1)
    assert refusal is not None and (refusal.rule, refusal.used, refusal.asked) == (
        "models.a.tokens",
        6,
        6,
    )
    assert lim.check("k", rules, b, 1) is None  # another model: only the key's day counts
    assert lim.check("other-key", rules, a, 1) is None  # per key
    lim.commit("k", rules, b, 1)
    day = lim.check("k", rules, b, 2)
    assert day is not None and (day.rule, day.code) == ("requests_per_day", "daily_limit_exceeded")
    assert rules.header_rule(b) is None and rules.header_rule(a) == rules.windows[0]


# --- the server ----------------------------------------------------------------------------


def config(mode: str = "exact", **tier: Any) -> dict[str, Any]:
    t = {"requests": 1000, "concurrency": 50, "keys": 1, **tier}
    return {"tiers": {"t": t}, "limiter": {"token_mode": mode}}


class Client:
    def __init__(self, srv: ServerThread) -> None:
        self.raw = Raw(srv.api_root)
        self.key = srv.key("t-1")

    def ask(
        self, prompt: int, max_tokens: int, model: str = "loadkit-instant", **extra: Any
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """A completion with a prompt of ``prompt`` tokens asking ``max_tokens``."""
        import json

        body = {"model": model, "prompt": " ".join([WORD] * prompt), "max_tokens": max_tokens}
        status, headers, data = self.raw.request(
            "POST", "/completions", {**body, **extra}, key=self.key
        )
        return status, headers, json.loads(data)


def counted(line: dict[str, Any], counts: str) -> int:
    """A truth line's tokens as a promise counting ``counts`` counts them."""
    prompt, output = line["input_tokens"], line["reserved_tokens"]
    return {"input": prompt, "output": output, "total": prompt + output}[counts]


def volume_max(
    lines: list[dict[str, Any]], counts: str, window_s: float, model: str | None = None
) -> int:
    """From the truth log alone: the most tokens (counted as the promise says, from what
    each admission asked) admitted in any span (t - W, t]."""
    w = round(window_s * S)
    adm = [
        (x["admitted_ns"], counted(x, counts))
        for x in lines
        if x["decision"] == "admitted"
        and "input_tokens" in x
        and (model is None or x["model"] == model)
    ]
    return max((brute_used(adm, t, w) for t, _ in adm), default=0)


def requests_max(lines: list[dict[str, Any]], window_s: float) -> int:
    w = round(window_s * S)
    adm = [(x["admitted_ns"], 1) for x in lines if x["decision"] == "admitted"]
    return max((brute_used(adm, t, w) for t, _ in adm), default=0)


def test_exact_tokens_refuse_at_the_promise_and_say_so(serve: Any) -> None:
    srv = serve(config(tokens=100))
    c = Client(srv)
    for left in (70, 40, 10):
        status, h, body = c.ask(10, 20)  # 30 tokens each, counted in total
        assert status == 200 and body["usage"]["total_tokens"] == 30
        assert (h["x-ratelimit-limit-tokens"], h["x-ratelimit-remaining-tokens"]) == (
            "100",
            str(left),
        )
    status, h, body = c.ask(10, 20)
    assert status == 429
    assert body["error"]["code"] == "token_limit_exceeded"
    assert body["error"]["message"] == (
        "Rate limit reached for this key on tokens per 60s (total tokens): "
        "Limit 100, Used 90, Requested 30."
    )
    assert h["x-ratelimit-remaining-tokens"] == "10"
    assert 59 <= int(h["retry-after"]) <= 60 and h["x-ratelimit-reset-tokens"].endswith("s")
    assert c.ask(5, 5)[0] == 200  # 10 more still fit
    status, h, body = c.ask(100, 50)
    assert status == 429 and body["error"]["message"].startswith(
        "Request too large for this key on tokens per 60s (total tokens): Limit 100, Requested 150"
    )
    assert "retry-after" not in h  # no delay would help: no promise
    lines = truth_of(srv)
    assert [x["decision"] for x in lines] == ["admitted"] * 3 + ["token_limited"] + [
        "admitted",
        "token_limited",
    ]
    first, refused = lines[0], lines[3]
    assert (first["input_tokens"], first["reserved_tokens"], first["charged"]) == (
        10,
        20,
        {"tokens": 30},
    )
    assert (refused["limit"], refused["input_tokens"], refused["reserved_tokens"]) == (
        "tokens",
        10,
        20,
    )
    assert "charged" not in refused and refused["admitted_ns"] is None
    assert volume_max(lines, "total", 60) == 100
    rejected = srv.stats()["rejected"]  # the admin's counters name the token refusals too
    assert rejected["token_limit_exceeded"] == 2 and rejected["rate_limit_exceeded"] == 0


def test_retry_after_on_tokens_is_a_promise(serve: Any) -> None:
    srv = serve(config(tokens=60, token_window_s=0.5))
    c = Client(srv)
    assert c.ask(20, 20)[0] == 200
    status, h, _ = c.ask(20, 20)
    assert status == 429
    time.sleep(int(h["retry-after-ms"]) / 1000)  # the delay itself is what is tested
    assert c.ask(20, 20)[0] == 200


@pytest.mark.parametrize(
    "counts,prompt,max_tokens,fits", [("input", 30, 900, 3), ("output", 900, 30, 3)]
)
def test_what_counts_follows_the_promise(
    serve: Any, counts: str, prompt: int, max_tokens: int, fits: int
) -> None:
    srv = serve(config(tokens=100, token_counts=counts))
    c = Client(srv)
    statuses = [c.ask(prompt, max_tokens)[0] for _ in range(fits + 1)]
    assert statuses == [200] * fits + [429]
    assert volume_max(truth_of(srv), counts, 60) == 90


def test_a_429_for_tokens_uses_no_request_and_the_reverse(serve: Any) -> None:
    srv = serve(config(tokens=50, requests=2))
    c = Client(srv)
    assert c.ask(10, 20)[0] == 200  # 30 tokens, 1 request
    assert c.ask(10, 20)[1].get("x-ratelimit-remaining-tokens") == "20"  # refused: 60 > 50
    status, h, _ = c.ask(5, 5)  # had the refusal used a request, this one would be refused
    assert status == 200 and h["x-ratelimit-remaining-requests"] == "0"
    status, h, body = c.ask(1, 1)  # the request window is full: refused, no tokens charged
    assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded")
    assert h["x-ratelimit-remaining-tokens"] == "10"
    lines = truth_of(srv)
    assert [x["decision"] for x in lines] == [
        "admitted",
        "token_limited",
        "admitted",
        "rate_limited",
    ]
    assert requests_max(lines, 60) == 2


def test_a_request_that_fails_validation_still_meets_the_limiter_first(serve: Any) -> None:
    srv = serve(config(tokens=50, requests=1))
    c = Client(srv)
    status, _, body = c.ask(5, 5, model="no-such-model")
    assert (status, body["error"]["code"]) == (404, "model_not_found")  # admitted, no tokens
    status, _, body = c.ask(5, 5)
    assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded")
    status, _, body = c.ask(5, 5, model="no-such-model")
    assert (status, body["error"]["code"]) == (429, "rate_limit_exceeded")  # 429 before 404
    bad, refused, _ = truth_of(srv)
    assert (bad["decision"], bad["charged"], bad.get("input_tokens")) == ("admitted", {}, None)
    assert (refused["input_tokens"], refused["reserved_tokens"]) == (5, 5)


def test_requests_per_day(serve: Any) -> None:
    srv = serve(config(requests_per_day=3, requests=100))
    c = Client(srv)
    assert [c.ask(1, 1)[0] for _ in range(3)] == [200] * 3
    status, h, body = c.ask(1, 1)
    assert (status, body["error"]["code"]) == (429, "daily_limit_exceeded")
    assert body["error"]["message"].startswith(
        "Rate limit reached for this key on requests per day (86400s)"
    )
    assert 86_399 <= int(h["retry-after"]) <= 86_400
    assert "x-ratelimit-limit-tokens" not in h  # no token promise, no token headers
    lines = truth_of(srv)
    assert [x["decision"] for x in lines][-1] == "daily_limited"
    assert lines[-1]["limit"] == "requests_per_day" and lines[0]["charged"] == {
        "requests_per_day": 1
    }


def test_per_model_tokens_and_requests(serve: Any) -> None:
    srv = serve(
        config(
            models={
                "loadkit-instant": {"tokens": 50, "token_counts": "input"},
                "loadkit-small": {"requests": 1},
            }
        )
    )
    c = Client(srv)
    status, h, _ = c.ask(30, 40)
    assert status == 200 and h["x-ratelimit-remaining-tokens"] == "20"  # input only
    status, _, body = c.ask(30, 1)
    assert body["error"]["message"] == (
        "Rate limit reached for this key and model loadkit-instant on tokens per 60s "
        "(input tokens): Limit 50, Used 30, Requested 30."
    )
    status, h, _ = c.ask(30, 1, model="loadkit-small")  # another model: its own limits
    assert status == 200 and "x-ratelimit-limit-tokens" not in h
    status, _, body = c.ask(1, 1, model="loadkit-small")
    assert (status, body["error"]["code"]) == (429, "model_rate_limit_exceeded")
    assert body["error"]["param"] == "model"
    assert "this key and model loadkit-small on requests per 60s" in body["error"]["message"]
    lines = truth_of(srv)
    assert [x.get("limit") for x in lines] == [
        None,
        "models.loadkit-instant.tokens",
        None,
        "models.loadkit-small.requests",
    ]
    assert lines[2]["charged"] == {"models.loadkit-small.requests": 1}
    assert volume_max(lines, "input", 60, model="loadkit-instant") == 30


def test_per_model_concurrency_holds_a_slot_until_the_stream_ends(serve: Any) -> None:
    srv = serve(config(models={"loadkit-small": {"concurrency": 1}}))
    c = Client(srv)
    u = urlsplit(srv.api_root)
    held = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    import json

    body = {"model": "loadkit-small", "prompt": WORD, "max_tokens": 30, "stream": True}
    held.request(
        "POST",
        u.path + "/completions",
        json.dumps(body),
        {"Authorization": f"Bearer {c.key}", "Content-Type": "application/json"},
    )
    stream = held.getresponse()  # headers only: the stream runs for about 0.6 s
    assert stream.status == 200
    status, _, refused = c.ask(1, 1, model="loadkit-small")
    assert (status, refused["error"]["code"]) == (429, "model_concurrency_limit_exceeded")
    assert refused["error"]["message"] == (
        "limit of concurrent requests reached for this key and model loadkit-small"
    )
    assert c.ask(1, 1)[0] == 200  # another model is not held
    stream.read()
    srv.wait_idle()
    assert c.ask(1, 1, model="loadkit-small")[0] == 200  # freed at the stream's end
    held.close()


# --- wrong modes, caught from the truth log ------------------------------------------------


def test_output_only_is_caught_by_the_promise_rule(serve: Any) -> None:
    srv = serve(config("output_only", tokens=100))
    c = Client(srv)
    assert [c.ask(40, 5)[0] for _ in range(5)] == [200] * 5  # 45 each: 225 in one window
    lines = truth_of(srv)
    assert {x["charged"]["tokens"] for x in lines} == {5}  # what the wrong mode charged
    assert volume_max(lines, "total", 60) == 225 > 100


def straddle(c: Client, window_s: float, prompt: int, max_tokens: int, tries: int = 3) -> None:
    """Stay idle until shortly before an edge of the server's clock-aligned windows, then
    ask until well after it: a fixed window admits a full budget on each side."""
    w = round(window_s * S)
    for _ in range(tries):
        now = time.perf_counter_ns()  # the server runs in this process: the same clock
        edge = (now // w + 1) * w
        if edge - now < w // 2:
            edge += w  # idle through a whole window first: its budget starts unused
        time.sleep((edge - w // 4 - now) / S)
        before = []
        while time.perf_counter_ns() < edge + w // 4:
            if c.ask(prompt, max_tokens)[0] == 200:
                before.append(time.perf_counter_ns() < edge)
        if any(before) and not all(before):
            return
    raise AssertionError("no admission landed on both sides of a window edge (machine busy?)")


def test_fixed_window_tokens_are_caught_by_a_sliding_check(serve: Any) -> None:
    srv = serve(config("fixed_window", tokens=100, token_window_s=1.0))
    straddle(Client(srv), 1.0, 10, 15)  # 25 tokens a request
    # within half a window, a full budget before the edge and another after it
    assert volume_max(truth_of(srv), "total", 1.0) > 100


def test_fixed_window_days_are_caught_by_a_sliding_check(serve: Any) -> None:
    srv = serve(config("fixed_window", requests_per_day=4, day_window_s=1.0))
    straddle(Client(srv), 1.0, 1, 1)
    assert requests_max(truth_of(srv), 1.0) > 4


def test_exact_mode_holds_across_an_edge(serve: Any) -> None:
    srv = serve(config(tokens=100, token_window_s=1.0, requests_per_day=6, day_window_s=1.0))
    c = Client(srv)
    deadline = time.perf_counter() + 1.5
    while time.perf_counter() < deadline:  # bounded: 1.5 s of back-to-back requests
        c.ask(10, 15)
    lines = truth_of(srv)
    assert volume_max(lines, "total", 1.0) <= 100 and requests_max(lines, 1.0) <= 6
    assert {x["decision"] for x in lines} >= {"admitted", "token_limited"}


# --- what a client makes of it -------------------------------------------------------------


def attributed(status: int, headers: dict[str, str], body: bytes) -> tuple[str | None, str | None]:
    info = RequestInfo("run", "async", "w", "w-1", "t", "t-1", "completions", False, "m")
    t = RequestTrace(info, 0.0)
    t.response(0.1, status, headers)
    t.data(0.11, body)
    rec = t.finish(0.12)
    return rec.limit_kind, rec.limit_signal


def test_the_servers_refusals_are_attributed_to_their_limit(serve: Any) -> None:
    srv = serve(config(tokens=100, requests_per_day=2))
    c = Client(srv)
    c.ask(5, 5)
    big = {"model": "loadkit-instant", "prompt": " ".join([WORD] * 50), "max_tokens": 50}
    refused = c.raw.request("POST", "/completions", big, key=c.key)
    assert refused[0] == 429
    assert attributed(*refused) == (TOKENS, "code=token_limit_exceeded")
    c.ask(1, 1)  # the second request of the day
    daily = c.raw.request(
        "POST",
        "/completions",
        {"model": "loadkit-instant", "prompt": WORD, "max_tokens": 1},
        key=c.key,
    )
    assert attributed(*daily) == (REQUESTS_PER_DAY, "code=daily_limit_exceeded")


def test_a_tier_without_these_promises_answers_as_before(serve: Any) -> None:
    srv = serve(config())
    c = Client(srv)
    status, h, _ = c.ask(5, 5)
    assert status == 200 and not any("tokens" in k for k in h)
    (line,) = truth_of(srv)
    assert not {"input_tokens", "reserved_tokens", "charged", "limit"} & set(line)


def test_the_documented_config_reads_as_documented() -> None:
    import tomllib
    from pathlib import Path

    from loadkit.server.config import config_from_dict
    from loadkit.server.token_limiter import rules_of

    doc = (Path(__file__).resolve().parents[2] / "docs" / "server.md").read_text()
    block = next(b.split("```")[0] for b in doc.split("```toml\n")[1:] if "token_mode" in b)
    cfg = config_from_dict(tomllib.loads(block))
    assert cfg.limiter.token_mode == "exact"
    assert [r.name for r in rules_of(cfg.tier("free")).windows] == [
        "tokens",
        "requests_per_day",
        "models.loadkit-small.tokens",
        "models.loadkit-small.requests_per_day",
        "models.loadkit-small.requests",
    ]
    assert rules_of(cfg.tier("free")).concurrency == (("loadkit-small", 2),)
