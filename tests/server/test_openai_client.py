"""The official ``openai`` client works unchanged against the server in both path
layouts (``seed``: ``…/api/v1/ai``; ``openai``: ``…/v1``), and every error reaches it as
the right exception class with the OpenAI error body."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from loadkit.server.testing import ServerThread


@pytest.fixture(scope="module", params=["seed", "openai"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def shared_server(api: str) -> Iterator[ServerThread]:
    with ServerThread(api=api) as srv:
        yield srv


def client(srv: ServerThread, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.api_root, api_key=key, max_retries=0, timeout=30)


def test_models_list_and_retrieve(shared_server: ServerThread) -> None:
    c = client(shared_server, "no key needed")
    ids = [m.id for m in c.models.list()]
    assert {"loadkit-small", "loadkit-chat", "loadkit-instruct", "loadkit-instant"} <= set(ids)
    m = c.models.retrieve("loadkit-chat")
    assert m.id == "loadkit-chat" and m.object == "model"
    assert m.model_extra is not None and m.model_extra["capabilities"] == ["chat"]


def test_chat_and_chat_stream(shared_server: ServerThread) -> None:
    c = client(shared_server, shared_server.key("pro-1"))
    msgs = [{"role": "user", "content": "Tell me about load tests."}]
    r = c.chat.completions.create(model="loadkit-small", messages=msgs, max_tokens=12)
    assert r.object == "chat.completion" and r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 12
    text = r.choices[0].message.content
    stream = c.chat.completions.create(
        model="loadkit-small",
        messages=msgs,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage, finish = [], None, None
    for ch in stream:
        if ch.usage is not None:
            usage = ch.usage
        for choice in ch.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == text  # same request, same text
    assert usage == r.usage and finish == "length"


def test_completion_and_completion_stream(shared_server: ServerThread) -> None:
    c = client(shared_server, shared_server.key("pro-1"))
    r = c.completions.create(model="loadkit-instruct", prompt="Once upon a time", max_tokens=5)
    assert r.object == "text_completion" and r.usage and r.usage.prompt_tokens == 4
    chunks = list(
        c.completions.create(
            model="loadkit-instruct", prompt="Once upon a time", max_tokens=5, stream=True
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    # default max_tokens is 16, as OpenAI
    r16 = c.completions.create(model="loadkit-instant", prompt="x")
    assert r16.usage and r16.usage.completion_tokens == 16


def test_stop_and_n_through_the_client(shared_server: ServerThread) -> None:
    c = client(shared_server, shared_server.key("pro-2"))
    r = c.chat.completions.create(
        model="loadkit-instant",
        messages=[{"role": "user", "content": "x"}],
        max_tokens=200,
        n=3,
        stop=[".", "!"],
    )
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    for ch in r.choices:
        assert ch.finish_reason == "stop" and "." not in (ch.message.content or "")


def test_errors_map_to_client_exceptions(api: str) -> None:
    cfg = {
        "tiers": {"free": {"requests": 3, "window_s": 60, "concurrency": 2, "keys": 2}},
        "keys": [{"label": "broke", "tier": "free", "balance": 0.0}],
        "billing": {"prompt_per_1k": 1.0, "completion_per_1k": 1.0},
    }
    with ServerThread(cfg, api=api) as srv:
        msgs = [{"role": "user", "content": "hi"}]
        bad = client(srv, "not-a-key")
        with pytest.raises(openai.AuthenticationError) as e401:
            bad.chat.completions.create(model="loadkit-instant", messages=msgs)
        assert e401.value.status_code == 401 and e401.value.code == "unauthorized"

        c = client(srv, srv.key("free-1"))
        with pytest.raises(openai.PermissionDeniedError) as e403:
            c.post("/admin/models", body={"id": "x"}, cast_to=object)
        assert e403.value.code == "forbidden"
        with pytest.raises(openai.NotFoundError) as e404:
            c.chat.completions.create(model="nope", messages=msgs)
        assert e404.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError) as e400:
            c.chat.completions.create(model="loadkit-instant", messages=msgs, temperature=3)
        assert e400.value.code == "invalid_parameters" and e400.value.param == "temperature"
        with pytest.raises(openai.RateLimitError) as e429:
            c.chat.completions.create(model="loadkit-instant", messages=msgs)
        assert e429.value.code == "rate_limit_exceeded"
        assert int(e429.value.response.headers["retry-after"]) >= 1

        c2 = client(srv, srv.key("free-2"))
        with pytest.raises(openai.BadRequestError) as ens:
            c2.completions.create(model="loadkit-chat", prompt="x")
        assert ens.value.code == "model_not_supported"
        with pytest.raises(openai.BadRequestError) as ectx:
            c2.completions.create(model="loadkit-instruct", prompt="x", max_tokens=5000)
        assert ectx.value.code == "context_length_exceeded"

        broke = client(srv, srv.key("broke"))
        with pytest.raises(openai.APIStatusError) as e402:
            broke.chat.completions.create(model="loadkit-instant", messages=msgs)
        assert e402.value.status_code == 402 and e402.value.code == "billing_check_failed"


def test_midstream_error_reaches_the_client(api: str) -> None:
    with ServerThread({"faults": {"midstream_error_rate": 1.0}}, api=api) as srv:
        c = client(srv, srv.key("pro-1"))
        stream = c.chat.completions.create(
            model="loadkit-instant", messages=[{"role": "user", "content": "x"}], stream=True
        )
        with pytest.raises(openai.APIError, match="injected fault"):
            for _ in stream:
                pass


def test_admin_model_registry(shared_server: ServerThread) -> None:
    admin = client(shared_server, shared_server.admin_key)
    created = admin.post(
        "/admin/models",
        body={"id": "tmp-model", "context_length": 32, "capabilities": ["completion"]},
        cast_to=object,
    )
    assert created["id"] == "tmp-model" and created["capabilities"] == ["completion"]
    anyone = client(shared_server, "x")
    assert anyone.models.retrieve("tmp-model").model_extra["context_length"] == 32  # type: ignore[index]
    patched = admin.patch(
        "/admin/models/tmp-model", body={"context_length": 64, "itl_ms": 1}, cast_to=object
    )
    assert patched["context_length"] == 64 and patched["latency"]["itl_ms"] == 1
    with pytest.raises(openai.BadRequestError) as e:
        admin.patch("/admin/models/tmp-model", body={"context_length": -1}, cast_to=object)
    assert e.value.param == "context_length"
    with pytest.raises(openai.BadRequestError):
        admin.post("/admin/models", body={"id": "tmp-model"}, cast_to=object)
    gone = admin.delete("/admin/models/tmp-model", cast_to=object)
    assert gone == {"id": "tmp-model", "object": "model", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        anyone.models.retrieve("tmp-model")
    with pytest.raises(openai.NotFoundError):
        admin.delete("/admin/models/tmp-model", cast_to=object)


def test_openai_client_retries_on_429_using_retry_after(api: str) -> None:
    cfg = {"tiers": {"free": {"requests": 2, "window_s": 0.5, "concurrency": 5, "keys": 1}}}
    with ServerThread(cfg, api=api) as srv:
        c = openai.OpenAI(base_url=srv.api_root, api_key=srv.key("free-1"), max_retries=3)
        for _ in range(5):  # the 3rd and 5th need the client's retry after retry-after-ms
            r = c.chat.completions.create(
                model="loadkit-instant", messages=[{"role": "user", "content": "x"}], max_tokens=1
            )
            assert r.choices
        assert srv.stats()["rejected"]["rate_limit_exceeded"] >= 1
