"""Helpers that run the reference server inside the test process: ``ServerThread`` (its
own event loop in a background thread, for sync code such as the ``openai`` client) and
``running_server`` (an async context manager on the caller's loop)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from loadkit.server.config import ServerConfig, config_from_dict, default_config
from loadkit.server.keys import AccessKey


class _Handle:
    """What tests need of a running server: its URL, its keys, its stats."""

    base_url: str
    state: Any

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
            self.base_url + "/ai/admin/stats",
            headers={"Authorization": f"Bearer {self.admin_key}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())


def _as_config(config: ServerConfig | dict[str, Any] | None) -> ServerConfig:
    if config is None:
        return default_config()
    if isinstance(config, dict):
        return config_from_dict(config)
    return config


class ServerThread(_Handle):
    """Run the app on 127.0.0.1, port 0, in a background thread with its own loop::

    with ServerThread(config_from_dict({...}), truth_path=tmp / "truth.jsonl") as srv:
        client = openai.OpenAI(base_url=srv.base_url + "/ai", api_key=srv.key("free-1"))
    """

    def __init__(
        self,
        config: ServerConfig | dict[str, Any] | None = None,
        truth_path: str | Path | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        from loadkit.server.app import ServerState

        self.config = _as_config(config)
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

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = build_app(self.config, state=self.state)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self.base_url = f"http://127.0.0.1:{self.port}/api/v1"
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

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop and return its result (state peeking)."""
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(_call(fn, *args), self._loop)
        return fut.result(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _call(fn: Any, *args: Any) -> Any:
    return fn(*args)


class RunningServer(_Handle):
    def __init__(self, state: Any, base_url: str) -> None:
        self.state = state
        self.base_url = base_url


@contextlib.asynccontextmanager
async def running_server(
    config: ServerConfig | dict[str, Any] | None = None, truth_path: str | Path | None = None
) -> AsyncIterator[RunningServer]:
    """``async with running_server(cfg) as srv:`` serves on the current loop (127.0.0.1,
    port 0). ``srv.stats()`` blocks, so async tests read ``srv.state.counters`` instead."""
    from aiohttp import web

    from loadkit.server.app import ServerState, build_app

    state = ServerState(_as_config(config), truth_path)
    runner = web.AppRunner(
        build_app(state.config, state=state), access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield RunningServer(state, f"http://127.0.0.1:{port}/api/v1")
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
