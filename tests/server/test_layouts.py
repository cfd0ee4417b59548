"""The two path layouts: ``seed`` (API.md, under ``/api/v1/ai``) and ``openai`` (under
``/v1``, a base URL ending in ``/v1``). Each serves only its own paths, both behave the
same (bodies, limits, headers, errors, truth), and every way of starting a server
(``ServerThread``, ``running_server``, ``start_server_process``, ``loadkit serve
--api``, ``[server] api``) takes the layout."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from loadkit.server.process import start_server_process
from loadkit.server.testing import running_server
from tests.server.conftest import Raw, truth_of

CHAT = {"model": "loadkit-instant", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5, "seed": 1}  # fmt: skip
TIGHT = {"tiers": {"free": {"requests": 2, "window_s": 60, "concurrency": 2, "keys": 1}}}


def test_each_layout_serves_its_own_paths(serve) -> None:  # type: ignore[no-untyped-def]
    seed, oai = serve(TIGHT), serve(TIGHT, api="openai")
    assert seed.base_url.endswith("/api/v1") and seed.api_root == seed.base_url + "/ai"
    assert oai.base_url.endswith("/v1") and oai.api_root == oai.base_url
    origin = oai.base_url[: -len("/v1")]
    raw = Raw(origin)
    assert raw.request("GET", "/v1/models")[0] == 200
    assert raw.request("GET", "/v1/models/loadkit-chat")[0] == 200
    status, _, data = raw.request("GET", "/api/v1/ai/models")
    assert status == 404 and json.loads(data)["error"]["code"] == "not_found"
    assert Raw(seed.base_url[: -len("/api/v1")]).request("GET", "/v1/models")[0] == 404
    assert oai.stats()["admitted"] == 1 and seed.stats()["admitted"] == 1


def test_both_layouts_behave_the_same(serve) -> None:  # type: ignore[no-untyped-def]
    answers = []
    for srv in (serve(TIGHT), serve(TIGHT, api="openai")):
        raw = Raw(srv.api_root)
        key = srv.key("free-1")
        got = [raw.request("POST", "/chat/completions", CHAT, key) for _ in range(3)]
        got.append(raw.request("POST", "/chat/completions", {**CHAT, "n": 0}, "bad-key"))
        bodies = [json.loads(d) for _, _, d in got]
        for b in bodies:
            b.pop("id", None), b.pop("created", None)
        limits = [h.get("x-ratelimit-remaining-requests") for _, h, _ in got]
        truth = [(t["endpoint"], t["status"], t["decision"]) for t in truth_of(srv)]
        answers.append(([s for s, _, _ in got], bodies, limits, truth))
    assert answers[0] == answers[1]
    assert answers[0][0] == [200, 200, 429, 401]


def test_running_server_takes_the_layout() -> None:
    async def main() -> tuple[int, str]:
        async with (
            running_server(api="openai") as srv,
            aiohttp.ClientSession() as s,
            s.get(srv.base_url + "/models") as r,
        ):
            return r.status, srv.base_url

    status, url = asyncio.run(main())
    assert status == 200 and url.endswith("/v1")


def test_a_server_process_in_the_openai_layout(tmp_path: Path) -> None:
    srv = start_server_process(api="openai", truth_path=tmp_path / "truth.jsonl")
    try:
        assert srv.base_url.endswith("/v1") and srv.ready["api"] == "openai"
        raw = Raw(srv.api_root)
        assert raw.request("POST", "/chat/completions", CHAT, srv.key("pro-1"))[0] == 200
        assert srv.stats()["admitted"] == 2
    finally:
        assert srv.stop() == 0
    # the config's layout, and the command line over it
    srv = start_server_process(config_dict={"server": {"api": "openai"}})
    try:
        assert srv.ready["api"] == "openai" and srv.base_url.endswith("/v1")
    finally:
        srv.stop()
    srv = start_server_process(config_dict={"server": {"api": "openai"}}, api="seed")
    try:
        assert srv.ready["api"] == "seed" and srv.base_url.endswith("/api/v1")
    finally:
        srv.stop()


def test_loadkit_serve_api_flag_is_checked() -> None:
    r = subprocess.run([sys.executable, "-m", "loadkit", "serve", "--api", "azure"],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2 and "--api" in r.stderr and "openai" in r.stderr


def test_the_banner_shows_the_layout(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadkit", "serve", "--port", "0", "--api", "openai",
         "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    info = json.loads(ready.read_text())
    assert info["base_url"].endswith("/v1") and info["base_url"] in out.decode()
    assert "api openai" in out.decode()
