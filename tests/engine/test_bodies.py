"""What the asyncio engine sends, and what it records of what comes back, through the
scripted transport: streams timed chunk by chunk, and hostile bodies (an event that is not
JSON, no ``[DONE]``, a stream cut, every byte in its own read) each giving exactly one
record with the right outcome."""

from __future__ import annotations

import dataclasses

import pytest

from loadkit.engine.transport import Incomplete, Refused, Reset, TimedOut, TransportError
from loadkit.records import RequestRecord
from tests.engine.scripted import (
    TEST_KEYS,
    Fail,
    Head,
    Steps,
    Wait,
    completion_body,
    final_events,
    json_reply,
    make_scenario,
    run_scripted,
    split_every_byte,
    sse_reply,
    token_event,
)

EXACT = 1e-9
SSE = {"content-type": "text/event-stream"}


def approx(v: object) -> object:
    return pytest.approx(v, abs=EXACT)


def one(kind: str, steps: Steps) -> RequestRecord:
    """The records of one request of ``kind`` sent at 0.1 s and answered by ``steps``."""
    sc = make_scenario(
        {
            "pattern": "burst",
            "burst_size": 1,
            "burst_period_s": 100,
            "phase_s": 0.1,
            "mix": {kind: 1},
        }
    )
    run = run_scripted(sc, steps)
    assert len(run.transport.sent) == 1
    assert len(run.records) == 1, "exactly one record per request"
    return run.records[0]


def without_id(r: RequestRecord) -> dict[str, object]:
    d = dataclasses.asdict(r)
    del d["request_id"]
    return d


def test_a_stream_is_timed_chunk_by_chunk():
    r = one("chat_stream", sse_reply(tokens=("Hel", "lo", "!"), headers_s=0.05, itl_s=0.01))
    assert (r.status, r.transport_error, r.error_code) == (200, None, None)
    assert r.stream and r.endpoint == "chat" and r.scheduled_s == approx(0.1)
    assert r.send_s == approx(0.1) and r.headers_s == approx(0.15)
    assert r.chunk_s == approx([0.16, 0.17, 0.18])
    assert (r.first_token_s, r.last_token_s, r.end_s) == approx((0.16, 0.18, 0.18))
    assert (r.content_chunks, r.completion_tokens, r.prompt_tokens) == (3, 3, 5)
    assert r.finish_reason == "stop"


def test_a_stream_split_at_every_byte_gives_the_same_record():
    steps = sse_reply(tokens=("Hel", "lo", "!"))
    assert without_id(one("chat_stream", split_every_byte(steps))) == without_id(
        one("chat_stream", steps)
    )


def test_a_json_body_split_at_every_byte_gives_the_same_record():
    steps = json_reply(after_s=0.2)
    whole = one("chat", steps)
    assert (whole.status, whole.completion_tokens, whole.finish_reason) == (200, 2, "stop")
    assert whole.end_s == approx(0.3)
    assert without_id(one("chat", split_every_byte(steps))) == without_id(whole)


def test_an_event_that_is_not_json_marks_the_stream_but_keeps_its_tokens():
    head: list = [Head(200, SSE)]
    steps = head + [
        token_event("a"),
        Wait(0.01),
        b"data: {not json\n\n",
        Wait(0.01),
        token_event("b") + final_events(2),
    ]
    r = one("chat_stream", steps)
    assert (r.status, r.transport_error) == (200, "malformed_event")
    assert r.chunk_s == approx([0.1, 0.12]) and r.completion_tokens == 2


def test_a_stream_without_done_is_incomplete():
    r = one("chat_stream", sse_reply(tokens=("a", "b"), done=False))
    assert (r.status, r.transport_error) == (200, "incomplete_stream")
    assert len(r.chunk_s) == 2 and r.completion_tokens == 2


def test_a_stream_cut_by_the_network_keeps_what_it_delivered():
    steps = sse_reply(tokens=("a", "b", "c"))[:-2] + [Wait(0.01), Fail(Reset)]
    r = one("chat_stream", steps)
    assert (r.status, r.transport_error) == (200, "reset")
    assert r.chunk_s == approx([0.16, 0.17]) and r.end_s == approx(0.18)


def test_an_error_event_mid_stream_is_the_api_error():
    error = b'data: {"error": {"code": "internal_error", "message": "boom"}}\n\n'
    r = one("chat_stream", [Head(200, SSE), token_event("a"), Wait(0.01), error])
    assert (r.status, r.error_code, r.transport_error) == (200, "internal_error", None)


def test_a_body_that_is_not_json_is_malformed():
    r = one("chat", [Head(200, {"content-type": "text/html"}), b"<html>", b"oops</html>"])
    assert (r.status, r.transport_error) == (200, "malformed_event")


def test_a_truncated_json_body_is_incomplete_and_an_error_body_is_read():
    r = one("chat", [Head(200, {}), b'{"choices": [', Fail(Incomplete)])
    assert (r.status, r.transport_error) == (200, "incomplete_stream")
    r = one("chat", json_reply(500, {"error": {"code": "internal_error", "message": "x"}}))
    assert (r.status, r.error_code, r.transport_error) == (500, "internal_error", None)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TimedOut, "timeout"),
        (Refused, "refused"),
        (Reset, "reset"),
        (Incomplete, "incomplete_stream"),
        (TransportError, "other"),
    ],
)
def test_each_transport_failure_before_the_headers_has_its_kind(error, kind):
    r = one("chat", [Wait(0.3), Fail(error)])
    assert (r.status, r.transport_error, r.headers_s) == (0, kind, None)
    assert r.end_s == approx(0.4)


def test_what_is_sent_for_each_request_and_what_is_recorded_of_the_key():
    sc = make_scenario(
        {
            "pattern": "burst",
            "burst_size": 2,
            "burst_period_s": 100,
            "phase_s": 0.1,
            "mix": {"chat": 1, "models": 1},
        },
        seed=4,
    )
    run = run_scripted(sc, json_reply(body=completion_body()), keys=TEST_KEYS)
    assert len(run.transport.sent) == 4
    for s in run.transport.sent:
        key = TEST_KEYS[0] if s.headers["Authorization"].endswith("-1") else TEST_KEYS[1]
        assert s.headers["Authorization"] == f"Bearer {key.secret}"
        # A base URL ending in /v1 is the common OpenAI layout (test_addressing.py: others).
        if s.method == "POST":
            assert s.url == "http://target.test/v1/chat/completions"
            assert s.headers["Content-Type"] == "application/json"
            assert s.json()["model"] == "m" and s.json()["stream"] is False
        else:
            assert (s.method, s.url, s.body) == ("GET", "http://target.test/v1/models", None)
            assert "Content-Type" not in s.headers
    assert {s.method for s in run.transport.sent} == {"GET", "POST"}
    recs = {r.request_id: r for r in run.records}
    assert set(recs) == {s.request_id for s in run.transport.sent}
    for r in run.records:
        line = r.to_json()
        assert all(k.secret not in line for k in TEST_KEYS)
        assert r.key in ("free-1", "free-2")


HOSTILE = {
    "event not JSON": (
        "chat_stream",
        [Head(200, SSE), token_event("a"), b"data: {not json\n\n", final_events(1)],
        (200, "malformed_event", None),
    ),
    "no [DONE]": ("chat_stream", sse_reply(done=False), (200, "incomplete_stream", None)),
    "error event": (
        "chat_stream",
        [Head(200, SSE), token_event("a"), b'data: {"error": {"code": "e1"}}\n\n'],
        (200, None, "e1"),
    ),
    "body not JSON": (
        "chat",
        [Head(200, {}), b"<html>oops</html>"],
        (200, "malformed_event", None),
    ),
    "error body": ("chat", json_reply(429, {"error": {"code": "e2"}}), (429, None, "e2")),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_bodies_read_byte_by_byte_give_the_same_one_record(name):
    kind, steps, outcome = HOSTILE[name]
    whole = one(kind, steps)
    assert (whole.status, whole.transport_error, whole.error_code) == outcome
    assert without_id(one(kind, split_every_byte(steps))) == without_id(whole)
