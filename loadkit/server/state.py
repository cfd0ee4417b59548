"""The mutable state of one running reference server (keys, limiter, ledger, models,
counters, truth log) and the per-request context the middleware hands to handlers."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from loadkit.server.billing import Ledger
from loadkit.server.config import ModelConfig, ServerConfig
from loadkit.server.keys import AccessKey, KeyStore, resolve_keys
from loadkit.server.limiter import Limiter, LimitSpec
from loadkit.server.logsafe import RedactingFilter
from loadkit.server.stats import Counters
from loadkit.server.truth import TruthRecord, TruthWriter
from loadkit.server.work import WorkLane


@dataclass
class RequestCtx:
    rec: TruthRecord
    headers: dict[str, str] = field(default_factory=dict)
    key: AccessKey | None = None
    finish_ns: int | None = None  # set by a handler that wrote its own response
    error_code: str | None = None  # an error sent inside a 200 stream
    sent: bool = False  # the response's first bytes were handed to the transport


class ServerState:
    """Everything mutable of one running server (one event loop, no locks needed)."""

    def __init__(
        self,
        config: ServerConfig,
        truth_path: str | Path | None = None,
        admin: AccessKey | None = None,
        keys: list[AccessKey] | None = None,
    ) -> None:
        self.config = config
        if admin is None or keys is None:
            admin, keys = resolve_keys(config)
        self.admin = admin
        self.access_keys = keys
        self.keys = KeyStore([admin, *keys])
        # Text a client chose (path, model, request id) may hold a key: the truth never does.
        self.redactor = RedactingFilter(k.key for k in (admin, *keys))
        self.specs: dict[str, LimitSpec] = {
            admin.label: LimitSpec.of(
                config.admin.requests, config.admin.window_s, config.admin.concurrency
            )
        }
        for k in keys:
            t = config.tier(k.tier)
            self.specs[k.label] = LimitSpec.of(t.requests, t.window_s, t.concurrency)
        lc = config.limiter
        self.limiter = Limiter(
            lc.mode, lc.burst_factor, lc.under_admit_fraction, round(lc.release_delay_s * 1e9)
        )
        self.ledger = Ledger(config.billing, {k.label: k.balance for k in keys})
        self.models: dict[str, ModelConfig] = {m.id: m for m in config.models}
        self.truth = TruthWriter(truth_path) if truth_path else None
        self.counters = Counters(config.lateness_samples)
        self.active: Counter[str] = Counter()  # model id -> sequences decoding now
        self.rng = random.Random(config.seed)  # latency jitter
        self.fault_rng = random.Random(config.faults.seed)
        self.started_ns = time.perf_counter_ns()
        self.in_progress = 0  # requests inside the middleware (truth line not yet written)
        self._idle_waiters: list[asyncio.Future[None]] = []
        self.lane = WorkLane()  # heavy per-request work, in slices

    @property
    def prompt_cap(self) -> int:
        """Prompts are counted only this far: beyond it they fit no model."""
        return max((m.context_length for m in self.models.values()), default=0)

    def record(self, rec: TruthRecord) -> None:
        """Count a finished request and append its truth line."""
        c = self.counters
        if rec.status is not None:
            c.status[rec.status] += 1
        if rec.error_code:
            c.errors[rec.error_code] += 1
        if rec.disconnect:
            c.disconnects[rec.disconnect] += 1
        if self.truth is not None:
            redact = self.redactor.redact
            rec.path = redact(rec.path)
            if rec.model is not None:
                rec.model = redact(rec.model)
            if rec.request_id is not None:
                rec.request_id = redact(rec.request_id)
            self.truth.write(rec)

    async def wait_idle(self) -> None:
        """Return once no request is in progress: every truth line so far is written."""
        if self.in_progress:
            fut = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(fut)
            await fut

    def _leave(self) -> None:
        self.in_progress -= 1
        if not self.in_progress:
            waiters, self._idle_waiters = self._idle_waiters, []
            for f in waiters:
                if not f.done():
                    f.set_result(None)

    def close(self) -> None:
        if self.truth is not None:
            self.truth.close()


STATE: web.AppKey[ServerState] = web.AppKey("loadkit_state", ServerState)
CTX = web.RequestKey("loadkit_ctx", RequestCtx)
