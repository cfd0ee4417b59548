"""A small simulator of rate-limited servers that writes synthetic loadkit runs: one key's
send times go through a limiter (sliding log, fixed window, token bucket, optional
concurrency cap, honest or dishonest headers) and come back as request records. Tests and
the scale benchmark use it; nothing here touches a network."""

from __future__ import annotations

import heapq
import json
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadkit.limit_signals import Refusal, attribute
from loadkit.records import RECORD_SCHEMA, RequestRecord
from loadkit.runmeta import RunMeta, WorkerInfo

LIMITER_KINDS = ("sliding_log", "fixed_window", "token_bucket", "none")


@dataclass(frozen=True)
class Limiter:
    """How the simulated server limits one key.

    ``admit_fraction`` < 1 makes it refuse early (admits floor(fraction * requests));
    ``concurrency_slack`` > 0 lets that many extra requests in flight (off-by-one bugs);
    ``retry_after`` "honest" tells the true wait, "short" always says 1 s;
    ``remaining`` "honest" reports limit minus the sliding count, "off" is one too high."""

    kind: str = "sliding_log"
    requests: int = 60
    window_s: float = 60.0
    concurrency: int | None = None
    burst: int | None = None  # token bucket capacity (default: requests)
    admit_fraction: float = 1.0
    concurrency_slack: int = 0
    retry_after: str = "honest"
    remaining: str = "honest"

    def __post_init__(self) -> None:
        if self.kind not in LIMITER_KINDS:
            raise ValueError(f"Limiter.kind: {self.kind!r} is not one of {LIMITER_KINDS}")


@dataclass(frozen=True)
class Timing:
    """Client/server timing of a request: upload (send -> admission), download (admission ->
    headers), time to first token after admission, gap between tokens, token count."""

    upload_s: float = 0.002
    download_s: float = 0.002
    ttft_s: float = 0.05
    itl_s: float = 0.01
    tokens: int = 16
    stream: bool = True
    jitter: float = 0.0  # relative random spread of ttft and itl


@dataclass
class KeyRun:
    """The simulated records of one key, column-wise."""

    label: str
    tier: str
    send: np.ndarray
    headers: np.ndarray
    first_token: np.ndarray
    end: np.ndarray
    status: np.ndarray
    error_code: list[str | None]
    retry_after: np.ndarray
    rl_limit: np.ndarray
    rl_remaining: np.ndarray
    itl: np.ndarray
    tokens: int
    stream: bool
    endpoint: str = "chat"
    scheduled: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def poisson_sends(
    rate: float, duration: float, rng: np.random.Generator, start: float = 0.0
) -> np.ndarray:
    n = rng.poisson(rate * duration)
    return np.sort(start + rng.uniform(0.0, duration, n))


def even_sends(period: float, duration: float, start: float = 0.0) -> np.ndarray:
    return start + np.arange(0.0, duration, period)


def simulate_key(
    label: str,
    tier: str,
    limiter: Limiter,
    sends: np.ndarray,
    timing: Timing | None = None,
    rng: np.random.Generator | None = None,
    endpoint: str = "chat",
) -> KeyRun:
    """Run ``sends`` through ``limiter``; admission = send + upload, in send order."""
    timing = timing or Timing()
    rng = rng or np.random.default_rng(0)
    sends = np.sort(np.asarray(sends, dtype=np.float64))
    n = sends.size
    jit = timing.jitter
    ttft = timing.ttft_s * (1 + jit * rng.uniform(-1, 1, n)) if jit else np.full(n, timing.ttft_s)
    itl = timing.itl_s * (1 + jit * rng.uniform(-1, 1, n)) if jit else np.full(n, timing.itl_s)
    service = ttft + itl * max(timing.tokens - 1, 0) + 0.001
    admit = sends + timing.upload_s
    headers = np.empty(n)
    first = np.full(n, np.nan)
    end = np.empty(n)
    status = np.full(n, 200, dtype=np.int64)
    codes: list[str | None] = [None] * n
    retry = np.full(n, np.nan)
    rl_lim = np.full(n, float(limiter.requests))
    rl_rem = np.full(n, np.nan)

    cap = math.floor(limiter.requests * limiter.admit_fraction)
    w = limiter.window_s
    conc_cap = (
        None if limiter.concurrency is None else limiter.concurrency + limiter.concurrency_slack
    )
    log: deque[float] = deque()
    in_flight: list[float] = []
    window_id, window_count = -1, 0
    bucket_cap = float(limiter.burst if limiter.burst is not None else limiter.requests)
    tokens, last = bucket_cap, 0.0
    rate = limiter.requests / w
    for i in range(n):
        a = float(admit[i])
        while log and log[0] <= a - w:
            log.popleft()
        while in_flight and in_flight[0] <= a:
            heapq.heappop(in_flight)
        wait = 0.0
        if limiter.kind == "sliding_log":
            full = len(log) >= cap
            if full:
                wait = log[len(log) - cap] + w - a if cap > 0 else w
            used = len(log)
        elif limiter.kind == "fixed_window":
            wid = int(a // w)
            if wid != window_id:
                window_id, window_count = wid, 0
            full = window_count >= cap
            wait = (wid + 1) * w - a
            used = window_count
        elif limiter.kind == "token_bucket":
            tokens = min(bucket_cap, tokens + (a - last) * rate)
            last = a
            full = tokens < 1.0
            wait = (1.0 - tokens) / rate
            used = int(bucket_cap - math.floor(tokens))
        else:
            full, used = False, 0
        busy = conc_cap is not None and len(in_flight) >= conc_cap
        if full or busy:
            status[i] = 429
            codes[i] = "rate_limit_exceeded" if full else "concurrency_limit_exceeded"
            headers[i] = a + timing.download_s
            end[i] = headers[i] + 0.0005
            if full:
                retry[i] = (
                    1.0
                    if limiter.retry_after == "short"
                    else math.ceil(max(wait, 0.0) * 1000) / 1000
                )
            else:
                retry[i] = 1.0
            rl_rem[i] = 0.0
            continue
        if limiter.kind == "sliding_log":
            log.append(a)
        elif limiter.kind == "fixed_window":
            window_count += 1
        elif limiter.kind == "token_bucket":
            tokens -= 1.0
        used += 1
        rl_rem[i] = limiter.requests - used + (1 if limiter.remaining == "off" else 0)
        end[i] = a + service[i]
        heapq.heappush(in_flight, float(end[i]))
        if timing.stream:
            headers[i] = a + timing.download_s
            first[i] = a + ttft[i] + timing.download_s
        else:
            headers[i] = end[i] - 0.0005
        end[i] += timing.download_s
    return KeyRun(
        label=label,
        tier=tier,
        send=sends,
        headers=headers,
        first_token=first,
        end=end,
        status=status,
        error_code=codes,
        retry_after=retry,
        rl_limit=rl_lim,
        rl_remaining=rl_rem,
        itl=itl,
        tokens=timing.tokens,
        stream=timing.stream,
        endpoint=endpoint,
    )


def _opt(x: float) -> float | None:
    return None if x != x else round(float(x), 6)


def key_run_rows(kr: KeyRun, run_id: str, start_index: int = 0) -> list[dict[str, Any]]:
    """The records of one simulated key as dicts in the record JSON shape."""
    out = []
    for i in range(kr.send.size):
        ok = kr.status[i] == 200
        # the engines decide which limit refused a 429 from its code (loadkit.limit_signals)
        who = attribute(Refusal(code=kr.error_code[i])) if kr.status[i] == 429 else None
        chunks: list[float] = []
        if ok and kr.stream and kr.tokens > 0:
            ft = float(kr.first_token[i])
            chunks = [round(ft + j * float(kr.itl[i]), 6) for j in range(kr.tokens)]
        sched = None if kr.scheduled is None else _opt(kr.scheduled[i])
        out.append(
            {
                "run_id": run_id,
                "engine": "synthetic",
                "worker": "sim",
                "request_id": f"{kr.label}-{start_index + i}",
                "attempt": 1,
                "tier": kr.tier,
                "key": kr.label,
                "endpoint": kr.endpoint,
                "stream": kr.stream,
                "model": "sim-model",
                "scheduled_s": sched,
                "send_s": round(float(kr.send[i]), 6),
                "headers_s": _opt(kr.headers[i]),
                "first_token_s": chunks[0] if chunks else None,
                "last_token_s": chunks[-1] if chunks else None,
                "end_s": round(float(kr.end[i]), 6),
                "chunk_s": chunks,
                "status": int(kr.status[i]),
                "error_code": kr.error_code[i],
                "transport_error": None,
                "prompt_tokens": 10 if ok else None,
                "completion_tokens": kr.tokens if ok else None,
                "sent_prompt_tokens": 10,  # what the client asked, known for a 429 too
                "sent_max_tokens": kr.tokens,
                "content_chunks": len(chunks) if kr.stream else (1 if ok else 0),
                "finish_reason": "length" if ok else None,
                "rl_limit_requests": int(kr.rl_limit[i]),
                "rl_remaining_requests": None
                if kr.rl_remaining[i] != kr.rl_remaining[i]
                else int(kr.rl_remaining[i]),
                "rl_reset_requests_s": None,
                "retry_after_s": _opt(kr.retry_after[i]),
                "content_type": "text/event-stream" if ok and kr.stream else "application/json",
                "limit_kind": who.kind if who else None,
                "limit_signal": who.signal if who else None,
                "queued_s": 0.0,
                "schema": RECORD_SCHEMA,
            }
        )
    return out


def key_run_lines(kr: KeyRun, run_id: str, start_index: int = 0) -> Iterator[str]:
    """The records of one simulated key as JSON lines, equal (as parsed JSON) to
    ``key_run_rows`` but written by formatting, not ``json.dumps`` of a dict per record, so
    that the scale benchmark generates millions of records in seconds, not minutes."""
    head = (
        f'{{"run_id":{json.dumps(run_id)},"engine":"synthetic","worker":"sim",'
        f'"request_id":"{kr.label}-'
    )
    common = (
        f'"attempt":1,"tier":{json.dumps(kr.tier)},"key":{json.dumps(kr.label)},'
        f'"endpoint":{json.dumps(kr.endpoint)},"stream":{"true" if kr.stream else "false"},'
        '"model":"sim-model",'
    )
    tail = f'"queued_s":0.0,"schema":"{RECORD_SCHEMA}"}}\n'
    stream = kr.stream and kr.tokens > 0
    ctype = "text/event-stream" if kr.stream else "application/json"
    sched = kr.scheduled
    send, headers, end = kr.send.tolist(), kr.headers.tolist(), kr.end.tolist()
    first, itl, retry = kr.first_token.tolist(), kr.itl.tolist(), kr.retry_after.tolist()
    status, rl_limit = kr.status.tolist(), kr.rl_limit.tolist()
    rl_rem = kr.rl_remaining.tolist()
    sched_l = sched.tolist() if sched is not None else None
    tokens = kr.tokens
    finish = '"length"'
    chunk_fmt = "[" + ",".join(["%.6f"] * tokens) + "]"
    for i in range(len(send)):
        st = status[i]
        ok = st == 200
        code = kr.error_code[i]
        who = attribute(Refusal(code=code)) if st == 429 else None
        if ok and stream:
            ft, gap = first[i], itl[i]
            # "%.6f" is correctly rounded, so it reads back as round(x, 6) does
            chunk_s = chunk_fmt % tuple([ft + j * gap for j in range(tokens)])
            first_s = chunk_s[1 : chunk_s.index(",")] if tokens > 1 else chunk_s[1:-1]
            last_s = chunk_s[chunk_s.rindex(",") + 1 : -1] if tokens > 1 else first_s
            n_chunks = tokens
        else:
            chunk_s, first_s, last_s = "[]", "null", "null"
            n_chunks = 0 if kr.stream else (1 if ok else 0)
        s = None if sched_l is None else _opt(sched_l[i])
        h, ra, rem = _opt(headers[i]), _opt(retry[i]), rl_rem[i]
        yield (
            f'{head}{start_index + i}",{common}'
            f'"scheduled_s":{"null" if s is None else repr(s)},'
            f'"send_s":{round(send[i], 6)!r},"headers_s":{"null" if h is None else repr(h)},'
            f'"first_token_s":{first_s},"last_token_s":{last_s},'
            f'"end_s":{round(end[i], 6)!r},"chunk_s":{chunk_s},"status":{st},'
            f'"error_code":{"null" if code is None else json.dumps(code)},'
            '"transport_error":null,'
            f'"prompt_tokens":{10 if ok else "null"},'
            f'"completion_tokens":{tokens if ok else "null"},'
            f'"sent_prompt_tokens":10,"sent_max_tokens":{tokens},'
            f'"content_chunks":{n_chunks},"finish_reason":{finish if ok else "null"},'
            f'"rl_limit_requests":{int(rl_limit[i])},'
            f'"rl_remaining_requests":{"null" if rem != rem else int(rem)},'
            '"rl_reset_requests_s":null,'
            f'"retry_after_s":{"null" if ra is None else repr(ra)},'
            f'"content_type":"{ctype if ok else "application/json"}",'
            f'"limit_kind":{"null" if who is None else json.dumps(who.kind)},'
            f'"limit_signal":{"null" if who is None else json.dumps(who.signal)},'
            f"{tail}"
        )


def answered_rows(
    label: str,
    tier: str,
    sends: np.ndarray,
    *,
    status: int,
    content_type: str | None = None,
    error_code: str | None = None,
    transport_error: str | None = None,
    limit_kind: str | None = None,
    endpoint: str = "chat",
    worker: str = "sim",
    latency_s: float = 0.004,
    run_id: str = "sim",
) -> list[dict[str, Any]]:
    """Records (as dicts) of requests that all got the same answer, e.g. a wrong URL's 404
    HTML page, a refused key's 401, or no answer at all (status 0 with a transport error)."""
    out = []
    for i, s in enumerate(np.asarray(sends, dtype=np.float64).tolist()):
        answered = status != 0
        out.append(
            {
                "run_id": run_id,
                "engine": "synthetic",
                "worker": worker,
                "request_id": f"{label}-{status}-{i}",
                "attempt": 1,
                "tier": tier,
                "key": label,
                "endpoint": endpoint,
                "stream": True,
                "model": "sim-model",
                "scheduled_s": None,
                "send_s": round(s, 6),
                "headers_s": round(s + latency_s, 6) if answered else None,
                "end_s": round(s + latency_s + 0.0005, 6),
                "chunk_s": [],
                "status": status,
                "error_code": error_code,
                "transport_error": transport_error,
                "content_type": content_type if answered else None,
                "limit_kind": limit_kind,
                "content_chunks": 0,
                "queued_s": 0.0,
                "schema": RECORD_SCHEMA,
            }
        )
    return out


def key_run_records(kr: KeyRun, run_id: str = "sim") -> list[RequestRecord]:
    return [RequestRecord.from_dict(d) for d in key_run_rows(kr, run_id)]


def run_meta(
    tiers: dict[str, Limiter],
    keys: list[tuple[str, str]],
    *,
    run_id: str = "sim",
    duration_s: float | None = None,
    warmup_s: float = 0.0,
    slo: dict[str, Any] | None = None,
    goodput: dict[str, float] | None = None,
    interrupted: bool = False,
    killed: bool = False,
    workers: list[WorkerInfo] | None = None,
    target: str = "simulated",
    target_api: dict[str, Any] | None = None,
) -> RunMeta:
    """run.json for a synthetic run: each tier promises its limiter's nominal limits.
    ``killed``: the run never wrote its end (no ``ended_unix``), as after a SIGKILL."""
    started = time.time()
    return RunMeta(
        run_id=run_id,
        engine="synthetic",
        target=target,
        scenario_name="synthetic",
        started_unix=started,
        mono_anchor_ns=0,
        tiers={
            t: {
                "requests": lim.requests,
                "window_s": lim.window_s,
                "concurrency": lim.concurrency if lim.concurrency is not None else 10**6,
            }
            for t, lim in tiers.items()
        },
        keys=[
            {"label": k, "tier": t, "fingerprint": f"{abs(hash(k)) % 16**8:08x}"} for k, t in keys
        ],
        slo=slo or {},
        goodput=goodput or {},
        workers=workers if workers is not None else [WorkerInfo(worker="sim")],
        ended_unix=None if killed else started,
        duration_s=duration_s,
        warmup_s=warmup_s,
        interrupted=interrupted,
        stop_reason="interrupted" if interrupted else "duration",
        target_api=target_api or {},
    )


def write_run(
    run_dir: str | os.PathLike[str],
    meta: RunMeta,
    key_runs: list[KeyRun],
    extra_rows: list[dict[str, Any]] | None = None,
) -> Path:
    """Write run.json and one records file holding every simulated key."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    if meta.duration_s is None and meta.ended_unix is not None:
        ends = [float(kr.end.max()) for kr in key_runs if kr.end.size]
        ends += [float(r["end_s"]) for r in extra_rows or ()]
        meta.duration_s = max(ends, default=0.0)
    if meta.ended_unix is not None:
        meta.ended_unix = meta.started_unix + (meta.duration_s or 0.0)
    meta.write(path)
    with open(path / "records-sim.jsonl", "w", encoding="utf-8") as fh:
        for kr in key_runs:
            for row in key_run_rows(kr, meta.run_id):
                fh.write(json.dumps(row, separators=(",", ":")) + "\n")
        for row in extra_rows or []:
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")
    return path
