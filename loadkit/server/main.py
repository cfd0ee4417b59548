"""``loadkit serve``: load the config, write the keys file, listen, print a banner (labels
and tiers, never keys), write the ready file, and run until SIGINT/SIGTERM. The event
loop is uvloop when it is installed (``pip install 'loadkit[uvloop]'``: the server then
spends about a sixth less CPU per streamed token), else asyncio's own; ``--loop`` picks."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from loadkit.server.config import ConfigError, ServerConfig, default_config, load_config
from loadkit.server.keys import keys_document, resolve_keys, write_private_json

# Connections waiting to be accepted (aiohttp's default is 128): a load test opens
# hundreds at once, and a full queue drops SYNs that the client resends only after 1 s,
# 3 s, ... The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 4096

LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(choice: str) -> tuple[str, Callable[[], asyncio.AbstractEventLoop] | None]:
    """The event loop ``loadkit serve --loop CHOICE`` runs on: its name and factory (None:
    asyncio's default). ``auto`` is uvloop when importable; ``uvloop`` insists on it."""
    if choice not in LOOPS:
        raise ValueError(f"--loop must be one of {', '.join(LOOPS)}, got {choice!r}")
    if choice == "asyncio":
        return "asyncio", None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def _loop_name() -> str:
    mod = type(asyncio.get_running_loop()).__module__
    return "uvloop" if mod.startswith("uvloop") else "asyncio"


def _banner(cfg: ServerConfig, base_url: str, keys_file: Path, st: Any, truth: str | None) -> str:
    lines = [
        f"loadkit reference server at {base_url}  (pid {os.getpid()}, api {cfg.api}, "
        f"event loop {_loop_name()})"
    ]
    lines.append(f"  limiter mode: {cfg.limiter.mode}")
    for t in cfg.tiers:
        labels = [k.label for k in st.access_keys if k.tier == t.name]
        lines.append(
            f"  tier {t.name}: {t.requests} requests / {t.window_s:g}s, "
            f"{t.concurrency} concurrent; keys: {', '.join(labels) or '-'}"
        )
    lines.append(f"  admin key label: {st.admin.label}")
    lines.append(f"  keys file (mode 0600): {keys_file}")
    lines.append(f"  models: {', '.join(st.models)}")
    faults = cfg.faults
    on = [
        n
        for n in ("error_rate", "midstream_error_rate", "disconnect_rate", "stall_rate")
        if getattr(faults, n)
    ]
    if on:
        lines.append("  faults: " + ", ".join(f"{n}={getattr(faults, n):g}" for n in on))
    if truth:
        lines.append(f"  ground truth: {truth}")
    return "\n".join(lines)


async def _serve(args: argparse.Namespace, cfg: ServerConfig) -> int:
    from aiohttp import web

    from loadkit.server import logsafe
    from loadkit.server.app import STATE, ServerState, base_path, build_app
    from loadkit.server.http_protocol import make_runner

    admin, keys = resolve_keys(cfg)
    own_dir: Path | None = None  # a temp folder of our own: removed when we stop
    if args.keys_file:
        keys_file = Path(args.keys_file).resolve()
    else:
        own_dir = Path(tempfile.mkdtemp(prefix="loadkit-serve-"))
        keys_file = own_dir / "keys.json"
    write_private_json(keys_file, keys_document(admin, keys))
    log_handler = logsafe.install([k.key for k in (admin, *keys)], cfg.access_log)
    state = ServerState(cfg, args.truth, admin, keys)
    app = build_app(cfg, state=state)
    # Quiet and fast by default; open streams get 2 s to finish on shutdown.
    runner = make_runner(app, access_log=cfg.access_log)
    await runner.setup()
    # What exists now lives as long as the server: keep it out of every full collection.
    gc.freeze()
    try:
        site = web.TCPSite(runner, args.host, args.port, reuse_address=True, backlog=LISTEN_BACKLOG)
        try:
            await site.start()
        except OSError as e:
            print(f"loadkit serve: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
            return 1
        host, port = runner.addresses[0][:2]
        shown_host = args.host if args.host not in ("0.0.0.0", "::", "") else host
        if ":" in shown_host:
            shown_host = f"[{shown_host}]"
        base_url = f"http://{shown_host}:{port}{base_path(cfg.api)}"
        if not args.quiet:
            print(_banner(cfg, base_url, keys_file, app[STATE], args.truth), flush=True)
        if args.ready_file:
            ready = {
                "host": args.host,
                "port": port,
                "base_url": base_url,
                "api": cfg.api,
                "keys_file": str(keys_file),
                "pid": os.getpid(),
                "loop": _loop_name(),
            }
            write_private_json(args.ready_file, ready)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        watchdog = None
        if getattr(args, "parent_pid", None):
            watchdog = asyncio.ensure_future(_watch_parent(args.parent_pid, stop))
        await stop.wait()
        if watchdog is not None:
            watchdog.cancel()
        if not args.quiet:
            print("loadkit serve: stopping", flush=True)
    finally:
        await runner.cleanup()
        logging.getLogger().removeHandler(log_handler)
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)  # this run's keys die with it
        if getattr(args, "parent_pid", None) and os.getppid() != args.parent_pid:
            # Orphaned (the run that started us was killed): nobody will clean up after us.
            keys_file.unlink(missing_ok=True)
            if getattr(args, "cleanup_dir", None):
                shutil.rmtree(args.cleanup_dir, ignore_errors=True)
    return 0


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """A server started for a run ends with the run, however the run ends (SIGKILL too):
    when the parent dies this process is re-parented, and ``getppid`` changes. Portable
    (Linux, macOS), unlike a parent-death signal."""
    while not stop.is_set():
        if os.getppid() != parent_pid:
            print("loadkit serve: the process that started me is gone: stopping", file=sys.stderr)
            stop.set()
            return
        await asyncio.sleep(0.25)


def serve_main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config) if args.config else default_config()
    except ConfigError as e:
        print(f"loadkit serve: bad config: {e}", file=sys.stderr)
        return 2
    if getattr(args, "api", None):
        cfg = replace(cfg, api=args.api)
    if not 0 <= args.port <= 65535:
        print(f"loadkit serve: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        _, factory = loop_factory(getattr(args, "loop", None) or "auto")
    except ImportError:
        print("loadkit serve: --loop uvloop: uvloop is not installed", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_serve(args, cfg))
