"""The pre-flight check against real servers on loopback: a usable target passes; an
unreachable host, a wrong key, a wrong path layout, a server that is not an OpenAI API and
an unknown model each give one clear problem naming the key label, URL, status and body,
and never the key."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from loadkit.api import OPENAI, SEED, AuthStyle, TargetApi
from loadkit.preflight_client import run_preflight
from loadkit.runmeta import Clock
from loadkit.scenario import Key
from loadkit.server.testing import ServerThread

KINDS = ("chat_stream", "chat")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread() as srv:
        yield srv


def keys_of(srv: ServerThread, n: int = 2) -> list[Key]:
    return [Key(label, "free", srv.key(label)) for label in srv.labels("free")[:n]]


def check(base_url, keys, api=None, model="loadkit-small", kinds=KINDS):
    api = api or TargetApi(SEED)
    return run_preflight(base_url, api, keys, model, kinds, Clock(), "t", "async")


def all_text(res) -> str:
    return "\n".join(p.text() for p in res.verdict.problems) + "\n".join(res.verdict.notes)


def test_a_usable_target_passes_and_every_probe_is_a_record(server):
    keys = keys_of(server)
    res = check(server.base_url, keys)
    assert res.verdict.ok, all_text(res)
    # models listing, one request per key, one stream
    assert [r.probe.name for r in res.replies] == ["models", "key", "key", "stream"]
    assert len(res.records) == 4
    assert {r.key for r in res.records} == {k.label for k in keys}
    assert all(r.worker == "preflight" and r.status == 200 for r in res.records)


def test_unreachable_target(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    res = check(f"http://127.0.0.1:{port}/api/v1", keys_of(server))
    [p] = res.verdict.problems
    assert "does not answer" in p.what
    assert f"127.0.0.1:{port}" in p.detail and "refused" in p.detail


def test_a_wrong_key_is_named_by_label_never_by_value(server):
    good = keys_of(server, 1)
    bad = Key("free-9", "free", "sk-not-a-real-key-123456")
    res = check(server.base_url, [*good, bad])
    [p] = res.verdict.problems
    assert "key free-9" in p.what and "401" in p.what
    assert "/ai/chat/completions -> 401" in p.detail
    assert "unauthorized" in p.detail  # the body head
    assert "sk-not-a-real-key" not in all_text(res)


def test_wrong_layout_names_the_layout_that_answers(server):
    res = check(server.base_url, keys_of(server, 1), api=TargetApi(OPENAI))
    [p] = res.verdict.problems
    assert "path does not exist" in p.what
    assert server.base_url + "/chat/completions -> 404" in p.detail
    assert 'api = "seed"' in p.fix


def test_unknown_model(server):
    res = check(server.base_url, keys_of(server, 1), model="no-such-model")
    assert res.verdict.problems
    assert "'no-such-model' is not among" in res.verdict.problems[0].what
    assert "loadkit-small" in res.verdict.problems[0].detail


def test_auth_style_reaches_the_server(server):
    # The reference server takes Bearer only: another header is a 401 naming the fix.
    res = check(server.base_url, keys_of(server, 1), api=TargetApi(SEED, AuthStyle("api-key", "")))
    [p] = res.verdict.problems
    assert "401" in p.what and "auth_header" in p.fix


class NotAnApi:
    """A plain web server: an HTML page for every path, with ``status``."""

    def __init__(self, status: int) -> None:
        import http.server

        body = b"<html><body><h1>Welcome to nginx!</h1></body></html>"

        class H(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                self.send_response(status)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("status", [200, 404, 501])
def test_a_server_that_is_not_an_openai_api(server, status):
    web = NotAnApi(status)
    try:
        res = check(web.url, keys_of(server, 1))
    finally:
        web.close()
    assert res.verdict.problems
    text = all_text(res)
    assert "Welcome to nginx" in text  # the body head is quoted
    assert web.url in text
