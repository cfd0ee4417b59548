"""OpenAI chunk interpretation: what counts as content, usage, finish and errors."""

from __future__ import annotations

import json

import pytest

from loadkit.chunks import MalformedChunk, parse_body, parse_event_data


def chat(delta, finish=None, index=0, usage=None, choices=None):
    obj = {
        "object": "chat.completion.chunk",
        "choices": choices
        if choices is not None
        else [{"index": index, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        obj["usage"] = usage
    return json.dumps(obj)


def test_role_only_chunk_is_not_content():
    c = parse_event_data(chat({"role": "assistant"}))
    assert c.role_only and not c.content


def test_role_with_content_counts_as_content():
    c = parse_event_data(chat({"role": "assistant", "content": "Hi"}))
    assert c.content and c.content_choice0 and not c.role_only


def test_empty_content_is_not_content():
    assert not parse_event_data(chat({"content": ""})).content


def test_usage_only_chunk():
    c = parse_event_data(chat({}, choices=[], usage={"prompt_tokens": 5, "completion_tokens": 9}))
    assert not c.content and (c.prompt_tokens, c.completion_tokens) == (5, 9)


def test_text_completion_chunk_and_finish():
    c = parse_event_data(
        json.dumps(
            {
                "object": "text_completion",
                "choices": [{"index": 0, "text": " world", "finish_reason": "length"}],
            }
        )
    )
    assert c.content and c.finish_reason == "length"


def test_several_choices():
    c = parse_event_data(
        chat(
            {},
            choices=[
                {"index": 1, "delta": {"content": "a"}, "finish_reason": None},
                {"index": 2, "delta": {"content": "b"}, "finish_reason": None},
            ],
        )
    )
    assert c.content and c.content_choices == 2 and not c.content_choice0


def test_error_event_mid_stream():
    c = parse_event_data(
        json.dumps({"error": {"message": "boom", "type": "server_error", "code": "internal_error"}})
    )
    assert c.error_code == "internal_error" and c.error_message == "boom"


def test_done_and_malformed():
    assert parse_event_data("[DONE]").done
    with pytest.raises(MalformedChunk):
        parse_event_data("{not json")
    with pytest.raises(MalformedChunk):
        parse_event_data("[1, 2]")


def test_body_success_and_error():
    b = parse_body(
        json.dumps(
            {
                "choices": [{"index": 0, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4},
            }
        ).encode()
    )
    assert (b.prompt_tokens, b.completion_tokens, b.finish_reason) == (3, 4, "stop")
    e = parse_body(
        b'{"error": {"message": "slow down", "type": "x", "code": "rate_limit_exceeded"}}'
    )
    assert e.error_code == "rate_limit_exceeded"
    assert parse_body(b"<html>").malformed


def _chunk_fields(c: object) -> dict[str, object]:
    return dict(vars(c))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"choices": [{"index": 0, "delta": {"content": "caf\xc3\xa9"}}]}',
        # invalid UTF-8 in the text: replaced, as a text decoder would, not malformed
        b'{"choices": [{"index": 0, "delta": {"content": "\xff\xfe"}}]}',
        # what the fast parser refuses and json.loads takes: a lone surrogate, NaN, 2**70
        b'{"choices": [{"index": 0, "delta": {"content": "\\ud800"}}], "x": NaN}',
        b'{"usage": {"prompt_tokens": 1180591620717411303424, "completion_tokens": 3}}',
    ],
)
def test_event_data_as_bytes_means_what_the_decoded_text_means(raw: bytes):
    as_text = parse_event_data(raw.decode("utf-8", "replace"))
    assert _chunk_fields(parse_event_data(raw)) == _chunk_fields(as_text)


def test_event_data_as_bytes_done_and_garbage():
    assert parse_event_data(b"[DONE]").done
    for bad in (b"{nope", b"[" * 100_000, b"\xff", b"[1, 2]"):
        with pytest.raises(MalformedChunk):
            parse_event_data(bad)


def test_body_in_utf16_still_reads():
    body = json.dumps({"error": {"code": "rate_limit_exceeded"}}).encode("utf-16")
    assert parse_body(body).error_code == "rate_limit_exceeded"
