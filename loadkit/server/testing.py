"""Helpers that run the reference server inside the test process: ``ServerThread`` (its
own event loop in a background thread, for sync code such as the ``openai`` client) and
``running_server`` (an async context manager on the caller's loop). Both take
``api="seed"`` (paths under ``/api/v1/ai``) or ``api="openai"`` (under ``/v1``); the
default is the config's ``[server] api``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loadkit.server.config import ServerConfig, config_from_dict, default_config
from loadkit.server.keys import AccessKey

if TYPE_CHECKING:
    from loadkit.server.state import ServerState


class _Handle:
    """What tests need of a running server: its URLs, its keys, its stats.

    ``base_url`` is what a scenario's ``target.base_url`` takes (``…/api/v1`` or
    ``…/v1``); ``api_root`` is what an OpenAI client's ``base_url`` takes (``…/api/v1/ai``
    or ``…/v1``): chat is at ``api_root + "/chat/completions"`` in both layouts."""

    base_url: str
    state: ServerState

    @property
    def api(self) -> str:
        return self.state.config.api

    @property
    def api_root(self) -> str:
        from loadkit.server.app import api_root, base_path

        return self.base_url[: -len(base_path(self.api))] + api_root(self.api)

    @property
    def keys(self) -> list[dict[str, str]]:
        return [{"label": k.label, "tier": k.tier, "key": k.key} for k in self.state.access_keys]

    @property
    def admin_key(self) -> str:
        return str(self.state.admin.key)

    def key(self, label: str) -> str:
        k: AccessKey = self.state.keys.by_label(label)
        return k.key

    def labels(self, tier: str | None = None) -> list[str]:
        return [k.label for k in self.state.access_keys if tier is None or k.tier == tier]

    def stats(self) -> dict[str, Any]:
        """The admin stats document (a blocking HTTP call; from sync code only)."""
        req = urllib.request.Request(
            self.api_root + "/admin/stats",
            headers={"Authorization": f"Bearer {self.admin_key}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc


def _as_config(
    config: ServerConfig | dict[str, Any] | None, api: str | None = None
) -> ServerConfig:
    if config is None:
        cfg = default_config()
    elif isinstance(config, dict):
        cfg = config_from_dict(config)
    else:
        cfg = config
    return dataclasses.replace(cfg, api=api) if api else cfg


def _url(port: int, cfg: ServerConfig) -> str:
    from loadkit.server.app import base_path

    return f"http://127.0.0.1:{port}{base_path(cfg.api)}"


class ServerThread(_Handle):
    """Run the app on 127.0.0.1, port 0, in a background thread with its own loop::

    with ServerThread(config_from_dict({...}), truth_path=tmp / "truth.jsonl") as srv:
        client = openai.OpenAI(base_url=srv.api_root, api_key=srv.key("free-1"))
    """

    def __init__(
        self,
        config: ServerConfig | dict[str, Any] | None = None,
        truth_path: str | Path | None = None,
        start_timeout_s: float = 10.0,
        api: str | None = None,
    ) -> None:
        from loadkit.server.app import ServerState

        self.config = _as_config(config, api)
        self.truth_path = truth_path
        self.state = ServerState(self.config, truth_path)
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.base_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="loadkit-server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - reported to the starting thread
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        from aiohttp import web

        from loadkit.server.app import build_app
        from loadkit.server.http_protocol import make_runner

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = make_runner(build_app(self.config, state=self.state))
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self.base_url = _url(self.port, self.config)
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(self.start_timeout_s):
            raise TimeoutError(f"the server thread did not start in {self.start_timeout_s}s")
        if self._error is not None:
            raise RuntimeError(f"the server thread failed: {self._error!r}") from self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Block until no request is in progress on the server (so the truth log holds
        every request whose response the caller has read)."""
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self.state.wait_idle(), self._loop)
        fut.result(timeout=timeout_s)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RunningServer(_Handle):
    def __init__(self, state: ServerState, base_url: str) -> None:
        self.state = state
        self.base_url = base_url


@contextlib.asynccontextmanager
async def running_server(
    config: ServerConfig | dict[str, Any] | None = None,
    truth_path: str | Path | None = None,
    api: str | None = None,
) -> AsyncIterator[RunningServer]:
    """``async with running_server(cfg) as srv:`` serves on the current loop (127.0.0.1,
    port 0). ``srv.stats()`` blocks, so async tests read ``srv.state.counters`` instead."""
    from aiohttp import web

    from loadkit.server.app import ServerState, build_app
    from loadkit.server.http_protocol import make_runner

    state = ServerState(_as_config(config, api), truth_path)
    runner = make_runner(build_app(state.config, state=state))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield RunningServer(state, _url(port, state.config))
    finally:
        await runner.cleanup()


# --- checks on a ground-truth log ------------------------------------------------------


def max_admitted_in_window(admitted_ns: list[int], window_ns: int) -> int:
    """The most admissions in any span (t - W, t] (the definition of API.md)."""
    ts = sorted(admitted_ns)
    best = 0
    lo = 0
    for hi, t in enumerate(ts):
        while ts[lo] <= t - window_ns:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def max_in_flight(intervals: list[tuple[int, int]]) -> int:
    """The most intervals [admitted, finish) open at one instant (a finish at the same
    nanosecond as an admission has already freed its slot)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(f, -1) for _, f in intervals])
    cur = best = 0
    for _, d in events:  # -1 sorts before +1 at equal times
        cur += d
        best = max(best, cur)
    return best
