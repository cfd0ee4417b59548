"""Sends the pre-flight probes (``loadkit.preflight``) over aiohttp, one at a time, each
built and recorded through the same :class:`loadkit.trace.RequestTrace` as the engines'
requests, and returns what the target answered."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from loadkit import records as R
from loadkit.api import TargetApi
from loadkit.payloads import prepare
from loadkit.preflight import (
    Probe,
    Reply,
    Verdict,
    alternative_bases,
    judge,
    listed_models,
    other_layout,
    plan_probes,
)
from loadkit.records import RequestRecord
from loadkit.runmeta import Clock
from loadkit.scenario import Key
from loadkit.trace import RequestInfo, RequestTrace

KEEP_BODY = 1 << 20  # a model list of thousands of models still fits
REQUEST_ID_HEADER = "x-loadkit-request-id"


@dataclass(frozen=True)
class PreflightSettings:
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 60.0
    attempts: int = 2  # a 5xx or no response is asked once more before it counts


@dataclass
class PreflightResult:
    verdict: Verdict
    replies: list[Reply]
    records: list[RequestRecord]


def run_preflight(
    base_url: str,
    api: TargetApi,
    keys: Sequence[Key],
    models: str | Sequence[str],
    kinds: Sequence[str],
    clock: Clock,
    run_id: str,
    engine: str,
    settings: PreflightSettings | None = None,
    key_envs: dict[str, str] | None = None,
) -> PreflightResult:
    """Probe the target; never raises for what the target does (that is the verdict).
    ``models``: the scenario's models (the first is the one the probes ask for)."""
    return asyncio.run(
        _run(
            base_url.rstrip("/"),
            api,
            list(keys),
            [models] if isinstance(models, str) else list(models),
            kinds,
            clock,
            run_id,
            engine,
            settings or PreflightSettings(),
            key_envs or {},
        )
    )


async def _run(
    base_url: str,
    api: TargetApi,
    keys: list[Key],
    models: list[str],
    kinds: Sequence[str],
    clock: Clock,
    run_id: str,
    engine: str,
    settings: PreflightSettings,
    key_envs: dict[str, str],
) -> PreflightResult:
    by_label = {k.label: k for k in keys}
    timeout = aiohttp.ClientTimeout(
        total=settings.request_timeout_s, connect=settings.connect_timeout_s
    )
    replies: list[Reply] = []
    records: list[RequestRecord] = []
    seq = 0
    rng = random.Random(0)
    async with aiohttp.ClientSession(
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
        connector=aiohttp.TCPConnector(limit=0, force_close=True),
    ) as session:

        async def ask(probe: Probe, base: str = base_url) -> Reply:
            nonlocal seq
            reply: Reply | None = None
            for _ in range(settings.attempts):
                seq += 1
                key = by_label.get(probe.key_label or "")
                reply = await _send(
                    session, base, api, probe, key, models[0], clock, run_id, engine, seq, rng
                )
                records.append(reply.record)
                if reply.status != 0 and reply.status < 500:
                    break
            assert reply is not None
            return reply

        probes = plan_probes(api, [k.label for k in keys], kinds)
        first = await ask(probes[0])
        replies.append(first)
        if first.status != 0:  # an unreachable target answers nothing else either
            for probe in probes[1:]:
                replies.append(await ask(probe))
        alternative = None
        wrong_route = any(r.status in (404, 405, 501) and r.probe.name != "models" for r in replies)
        alt = other_layout(api.layout)
        if wrong_route and alt is not None:
            for base in alternative_bases(base_url, api.layout):
                probe = Probe("other-layout", probes[0].key_label, "models", alt)
                alternative = await ask(probe, base)
                if alternative.status == 200 and listed_models(alternative):
                    break
    verdict = judge(replies, models, key_envs, alternative)
    return PreflightResult(verdict, replies, records)


async def _send(
    session: aiohttp.ClientSession,
    base_url: str,
    api: TargetApi,
    probe: Probe,
    key: Key | None,
    model: str,
    clock: Clock,
    run_id: str,
    engine: str,
    seq: int,
    rng: random.Random,
) -> Reply:
    # The cheapest request of its kind: a one-word prompt, one or two tokens back.
    req = prepare(
        probe.kind, model, 1, 2 if probe.kind.endswith("_stream") else 1, rng, probe.layout
    )
    info = RequestInfo(
        run_id,
        engine,
        "preflight",
        f"preflight-{seq}",
        key.tier if key else "",
        key.label if key else "",
        req.endpoint,
        req.stream,
        req.model,
    )
    headers = api.headers(key.secret if key else None)
    headers[REQUEST_ID_HEADER] = info.request_id
    if req.body is not None:
        headers["Content-Type"] = "application/json"
    url = base_url + req.path
    trace = RequestTrace(info, clock.now())
    kept = bytearray()
    ctype = ""
    detail = ""
    try:
        async with session.request(req.method, url, data=req.body, headers=headers) as resp:
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            trace.response(clock.now(), resp.status, resp.headers)
            while True:
                chunk = await resp.content.readany()
                if not chunk:
                    break
                if len(kept) < KEEP_BODY:
                    kept += chunk[: KEEP_BODY - len(kept)]
                trace.data(clock.now(), chunk)
            rec = trace.finish(clock.now())
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        rec, detail = trace.fail(clock.now(), R.TIMEOUT), _text(exc)
    except aiohttp.ClientConnectorError as exc:
        rec, detail = trace.fail(clock.now(), R.REFUSED), _text(exc)
    except aiohttp.ClientPayloadError as exc:
        rec, detail = trace.fail(clock.now(), R.INCOMPLETE_STREAM), _text(exc)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError) as exc:
        rec, detail = trace.fail(clock.now(), R.RESET), _text(exc)
    except (aiohttp.ClientError, ValueError) as exc:  # ValueError: an invalid URL
        rec, detail = trace.fail(clock.now(), R.OTHER), _text(exc)
    return Reply(probe, url, rec.status, ctype, bytes(kept), rec, detail)


def _text(exc: BaseException) -> str:
    # aiohttp's messages name the host and port, never a header: safe to show.
    return (str(exc) or type(exc).__name__)[:200]
