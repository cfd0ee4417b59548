"""What the asyncio engine costs beside a bare aiohttp loop, and what its send timestamp hides.

Every figure comes from interleaved repetitions (bare, engine, then engine, bare, ...), each
client a fresh process pinned to CPU 1 with the target on CPU 0, reported as the median
and range (min–max) over repetitions, ratios first. A run in which either client saw any
status but 200 or any transport error is invalid and stops the benchmark.

Sections (``--only``):

* ``ceiling``: closed loop, the most requests per second one client core drives, same
  duration for both clients, each rate over its own measured span (completions after its
  warm-up mark / time from that mark to its last completion), plus CPU seconds per
  request. Targets: the canned nginx target (``targets/nginx_canned.conf.in``; its
  "stream" is one 16-chunk body read at once, so this is parsing cost) and the streaming C
  target (``targets/sse_target.c``; 16 chunks each in its own write, a real gap, so this is
  per-read cost). ``fixed`` is the streaming target at a load both clients keep up with:
  the same work for both, so CPU per stream compares per-read cost directly.
* ``instructions``: the same, counted in instructions (valgrind, ``--tool=cachegrind``)
  instead of wall-clock: each client runs twice (short and long); instructions per
  request = the difference in instructions / the difference in requests, so start-up and
  imports cancel out. Deterministic enough for a shared, loaded machine. Last figures
  (2026-12-01, ``--only instructions``, bare ÷ engine with its own HTTP client / with
  aiohttp's): nginx stream 1.33 / 0.95, nginx JSON 1.02 / 0.68, C stream 1.25 / 0.94 (the
  README's benchmark section has the tables).

Clients (arms): ``bare`` (the bare aiohttp loop), ``engine`` (loadkit's asyncio engine as
``loadkit run`` runs it, with its own HTTP/1.1 client) and ``engine-aiohttp`` (the same
engine with ``[target] http_client = "aiohttp"``).
* ``lateness``: open loop, constant rate against nginx; ``send_s − scheduled_s``.
* ``arrival``: high connection churn (the streaming target closes every connection, so
  each request opens a new one): the recorded ``send_s − scheduled_s`` and
  ``conn_s − scheduled_s`` (when the connection was ready) beside when the request reached
  the server (its own read, and the kernel's receive timestamp, on the same monotonic
  clock) minus the schedule.
* ``accuracy``: against the reference server's fixed, jitter-free profile, TTFT and ITL
  minus the profile at 1, 100 and 1,000 streams, bare loop vs engine.
* ``twin`` (not in the default set): the engine with its records' Parquet twin against the
  engine without, at the ceiling against nginx, 20 s runs (several blocks converted while
  the run goes): throughput ratio and the CPU per request the twin adds.

    python benchmarks/engine_overhead.py                    # everything (~25 minutes)
    python benchmarks/engine_overhead.py --only ceiling --reps 5
    python benchmarks/engine_overhead.py --only instructions

Not a test: figures go to the README. Needs gcc and nginx (apt-get install -y nginx-light)
and, for ``instructions``, valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (  # noqa: E402
    PY,
    Target,
    http_json,
    interleaved,
    loadavg_text,
    machine,
    med_range,
    nginx_target,
    pct,
    pinned,
    raise_fd_limit,
    rate_over_span,
    sse_target,
)

GEN_CPU = 1
TARGET_CPU = 0
# "engine" is loadkit run's default (its own HTTP/1.1 client); "engine-aiohttp" the same
# engine with [target] http_client = "aiohttp".
ARMS = ("bare", "engine", "engine-aiohttp")
ENGINES = ARMS[1:]


# ---------------------------------------------------------------------------------------
# Children: one client run per process, result as JSON


async def _bare(spec: dict[str, Any]) -> dict[str, Any]:
    """The bare loop: what any Python client must at least spend (aiohttp, one session, no
    connection cap, every SSE event's JSON parsed, TTFT and ITL kept in lists)."""
    import aiohttp

    body = json.dumps(
        {
            "model": spec["model"],
            "messages": [{"role": "user", "content": "hi there"}],
            "stream": spec["stream"],
            "max_tokens": spec["max_tokens"],
        }
    ).encode()
    headers = {
        "Authorization": f"Bearer {spec['key']}",
        "Content-Type": "application/json",
        "Accept-Encoding": "identity",
    }
    url = spec["url"] + "/chat/completions"
    stream = spec["stream"]
    sends: list[float] = []
    ends: list[float] = []
    ttft: list[float] = []
    itl: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    reads = 0
    t_start = time.perf_counter()
    t_end = t_start + spec["seconds"]
    t_measure = t_start + spec.get("warmup", 0.0)
    conn = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=600, connect=10, sock_read=120)
    async with aiohttp.ClientSession(
        connector=conn, timeout=timeout, read_bufsize=1 << 20, auto_decompress=False
    ) as s:

        async def one() -> None:
            nonlocal reads
            t0 = time.perf_counter()
            try:
                async with s.post(url, data=body, headers=headers) as r:
                    statuses[r.status] += 1
                    if stream:
                        first = last = None
                        buf = b""
                        while True:
                            chunk = await r.content.readany()
                            if not chunk:
                                break
                            now = time.perf_counter()
                            reads += 1
                            buf += chunk
                            *events, buf = buf.split(b"\n\n")
                            for ev in events:
                                payload = ev[6:]
                                if payload == b"[DONE]":
                                    continue
                                ch = json.loads(payload).get("choices") or []
                                if ch and ch[0].get("delta", {}).get("content"):
                                    if first is None:
                                        first = now
                                        if t0 >= t_measure:
                                            ttft.append(now - t0)
                                    elif t0 >= t_measure and last is not None:
                                        itl.append(now - last)
                                    last = now
                    else:
                        json.loads(await r.read())
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                errors[type(exc).__name__] += 1
            sends.append(t0)
            ends.append(time.perf_counter())

        async def user() -> None:
            while time.perf_counter() < t_end:
                await one()

        await asyncio.gather(*(user() for _ in range(spec["concurrency"])))
    ok = statuses.get(200, 0)
    return {
        "requests": len(sends),
        "ok": ok,
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": dict(errors),
        "rate": rate_over_span(sends, ends, spec.get("warmup", 0.0)),
        "reads_per_req": reads / max(1, len(sends)),
        "ttft_ms": [x * 1e3 for x in ttft],
        "itl_ms": [x * 1e3 for x in itl],
    }


def _engine(spec: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The loadkit asyncio engine through its public API, a full record written per
    request (as ``loadkit run`` does)."""
    from loadkit.engine.async_engine import run_engine
    from loadkit.records import RecordWriter
    from loadkit.runmeta import Clock
    from loadkit.scenario import resolve_keys
    from loadkit.scenario.parse import scenario_from_dict

    load: dict[str, Any] = {
        "tier": "bench",
        "mix": {("chat_stream" if spec["stream"] else "chat"): 1},
        "model": spec["model"],
        "max_tokens": spec["max_tokens"],
        **spec["load"],
    }
    scenario = scenario_from_dict(
        {
            "name": "bench",
            "target": {
                "base_url": spec["url"],
                "model": spec["model"],
                **({"http_client": spec["http_client"]} if spec.get("http_client") else {}),
            },
            "run": {"duration_s": spec["seconds"], "drain_s": 30},
            "tiers": {
                "bench": {
                    "requests": 10**9,
                    "window_s": 60,
                    "concurrency": 10**7,
                    "keys_env": "BENCH_KEYS",
                }
            },
            "load": [load],
        }
    )
    keys = resolve_keys(scenario, {"BENCH_KEYS": spec["key"]})
    path = tmp / "records.jsonl"
    clock = Clock()
    # arm "engine-no-twin": the record file without its Parquet twin (section ``twin``)
    twin = {"twin_block_bytes": None} if spec.get("no_twin") else {}

    def start() -> None:  # t=0 when the load begins, as loadkit run sets it
        clock.mono_anchor_ns, clock.wall_anchor = time.perf_counter_ns(), time.time()

    with RecordWriter(path, **twin) as writer:
        run_engine(
            scenario, keys, spec["url"], writer, clock, "bench", progress=False, on_start=start
        )
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    statuses = Counter(r["status"] for r in recs)
    errors = Counter(r["transport_error"] for r in recs if r["transport_error"])
    measured = [r for r in recs if r["send_s"] >= spec.get("warmup", 0.0)]
    ttft = [(r["first_token_s"] - r["send_s"]) * 1e3 for r in measured if r["first_token_s"]]
    itl = [
        (b - a) * 1e3
        for r in measured
        for a, b in zip(r["chunk_s"], r["chunk_s"][1:], strict=False)
    ]
    # reads the engine saw: distinct arrival times of content chunks (+ the headers' read)
    reads = sum(len(set(r["chunk_s"])) for r in recs)
    out: dict[str, Any] = {
        "requests": len(recs),
        "ok": statuses.get(200, 0)
        - sum(1 for r in recs if r["status"] == 200 and r["transport_error"]),
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": dict(errors),
        "rate": rate_over_span(
            [r["send_s"] for r in recs], [r["end_s"] for r in recs], spec.get("warmup", 0.0)
        ),
        "reads_per_req": reads / max(1, len(recs)),
        "ttft_ms": ttft,
        "itl_ms": itl,
    }
    if spec.get("keep_records"):
        out["mono_anchor_ns"] = clock.mono_anchor_ns
        out["records"] = [
            [r["request_id"], r["scheduled_s"], r["send_s"], r["headers_s"], r["end_s"]]
            + [r.get("conn_s")]
            for r in recs
        ]
    return out


def child_main(arm: str, spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    raise_fd_limit(4 * spec.get("concurrency", 1) + 4096)
    # imports before the CPU clock starts: start-up is not per-request cost
    import aiohttp  # noqa: F401

    import loadkit.engine.async_engine  # noqa: F401
    import loadkit.records  # noqa: F401
    import loadkit.scenario.parse  # noqa: F401

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if arm == "engine-no-twin":
        spec["no_twin"] = True
    if arm == "engine-aiohttp":
        spec["http_client"] = "aiohttp"
    res = asyncio.run(_bare(spec)) if arm == "bare" else _engine(spec, Path(spec_path).parent)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    res["cpu_s"] = cpu
    res["wall_s"] = time.perf_counter() - t0
    res["cpu_ms_per_req"] = cpu * 1e3 / max(1, res["requests"])
    res["cpu_share"] = cpu / res["wall_s"]  # how much of its core the client got
    Path(spec["out"]).write_text(json.dumps(res))
    return 0


# ---------------------------------------------------------------------------------------
# The parent


class Invalid(RuntimeError):
    """A run that saw errors: its figures would not mean what they say."""


def run_client(
    arm: str, spec: dict[str, Any], tmp: Path, tag: str, wrap: list[str] | None = None
) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix=f"{arm}-{tag}-", dir=tmp))
    spec = {**spec, "out": str(d / "result.json")}
    (d / "spec.json").write_text(json.dumps(spec))
    cmd = pinned([*(wrap or []), PY, __file__, "--child", arm, str(d / "spec.json")], GEN_CPU)
    subprocess.run(cmd, check=True, cwd=d)
    res: dict[str, Any] = json.loads((d / "result.json").read_text())
    res["dir"] = str(d)
    bad = res["requests"] - res["ok"]
    if bad or res["errors"] or not res["requests"]:
        raise Invalid(
            f"{arm} run {tag}: {bad} of {res['requests']} requests failed "
            f"(statuses {res['statuses']}, errors {res['errors']})"
        )
    return res


def _spec(
    url: str, stream: bool, concurrency: int, seconds: float, warmup: float
) -> dict[str, Any]:
    return {
        "url": url,
        "stream": stream,
        "concurrency": concurrency,
        "seconds": seconds,
        "warmup": warmup,
        "key": "bench-key",
        "model": "m",
        "max_tokens": 16,
        "load": {"pattern": "closed", "concurrency": concurrency},
    }


def ceiling(tmp: Path, a: argparse.Namespace, out: list[str]) -> None:
    cases = [
        ("nginx canned stream (1 read)", "nginx", "/sse/v1", True, a.concurrency, None),
        ("nginx canned JSON", "nginx", "/json/v1", False, a.concurrency, None),
        (
            f"C stream, 16 writes, gap {a.gap_ms:g} ms",
            "sse",
            "/v1",
            True,
            a.sse_concurrency,
            a.gap_ms,
        ),
        (
            f"C stream at fixed load ({a.fixed_concurrency} streams, gap {a.fixed_gap_ms:g} ms)",
            "sse",
            "/v1",
            True,
            a.fixed_concurrency,
            a.fixed_gap_ms,
        ),
    ]
    rows = []
    for name, kind, prefix, stream, conc, gap in cases:
        if a.cases and not any(c in name for c in a.cases.split(",")):
            continue
        la0 = loadavg_text()

        def go(tgt: Target, conc: int = conc, stream: bool = stream, prefix: str = prefix) -> Any:
            spec = _spec(tgt.base + prefix, stream, conc, a.seconds, a.warmup)
            return interleaved(ARMS, a.reps, lambda arm, rep: run_client(arm, spec, tmp, f"{rep}"))

        if kind == "nginx":
            with nginx_target(TARGET_CPU, tmp / f"nginx-{len(rows)}") as tgt:
                res = go(tgt)
        else:
            with sse_target(TARGET_CPU, gap_ms=gap or 0.0) as tgt:
                res = go(tgt)
                srv = http_json(tgt.base + "/stats")
        b = res["bare"]
        row = {"name": name, "load": f"{la0} → {loadavg_text()}", "conc": conc}
        for cl in ARMS:
            e = res[cl]
            row[cl + "_thr"] = [y["rate"] / x["rate"] for x, y in zip(b, e, strict=True)]
            row[cl + "_cpur"] = [
                x["cpu_ms_per_req"] / y["cpu_ms_per_req"] for x, y in zip(b, e, strict=True)
            ]
            row[cl + "_rate"] = [x["rate"] for x in e]
            row[cl + "_cpu"] = [x["cpu_ms_per_req"] for x in e]
            row[cl + "_reads"] = [x["reads_per_req"] for x in e]
            row[cl + "_share"] = [x["cpu_share"] for x in e]
        if kind == "sse":
            row["server_late"] = srv["lateness_ms"]
        rows.append(row)
        for cl in ENGINES:
            print(
                f"  {name}: {cl}/bare throughput {med_range(row[cl + '_thr'])}, "
                f"CPU {med_range(row[cl + '_cpur'])}",
                flush=True,
            )
    out += [
        f"Ceiling: closed loop, {a.seconds:g} s per run ({a.warmup:g} s warm-up), {a.reps} "
        "interleaved repetitions per client, client on CPU 1, target on CPU 0 (the C target "
        "as SCHED_FIFO when allowed); median (min–max) over repetitions. Reads per request "
        "count the bare loop's reads (headers and the [DONE] read included) and the engine's "
        "distinct content-chunk times; CPU share = client CPU seconds / wall seconds (below "
        "1.0 when other processes took part of its core).",
        "",
        "| target | concurrency | client | ÷ bare, throughput | bare ÷, CPU per request "
        "| load avg before → after |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for arm in ENGINES:
            out.append(
                f"| {r['name']} | {r['conc']} | {arm} | {med_range(r[arm + '_thr'])} | "
                f"{med_range(r[arm + '_cpur'])} | {r['load']} |"
            )
    out += [
        "",
        "| target | client | req/s | CPU ms per request | reads per request | CPU share |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for arm in ARMS:
            out.append(
                f"| {r['name']} | {arm} | {med_range(r[arm + '_rate'], '{:,.0f}')} | "
                f"{med_range(r[arm + '_cpu'], '{:.3f}')} | "
                f"{med_range(r[arm + '_reads'], '{:.1f}')} | "
                f"{med_range(r[arm + '_share'], '{:.2f}')} |"
            )
    for r in rows:
        if "server_late" in r:
            s = r["server_late"]
            out.append(
                f"\n{r['name']}: the target's own chunk lateness over all its runs p50 "
                f"{s['p50']:.3f} / p99 {s['p99']:.3f} / max {s['max']:.3f} ms"
            )
    out.append("")


def twin(tmp: Path, a: argparse.Namespace, out: list[str]) -> None:
    """The engine with its records' Parquet twin (``loadkit.parquet_twin``: parsed and
    written on a thread of its own) against the engine without, at the ceiling against
    nginx; runs of ``--twin-seconds`` so that several 16 MB blocks are converted while the
    run goes. CPU per request counts every thread of the client and the close."""
    arms = ("engine", "engine-no-twin")
    rows = []
    for name, prefix, stream in (
        ("nginx canned stream (1 read)", "/sse/v1", True),
        ("nginx canned JSON", "/json/v1", False),
    ):
        if a.cases and not any(c in name for c in a.cases.split(",")):
            continue
        la0 = loadavg_text()
        with nginx_target(TARGET_CPU, tmp / f"nginx-twin-{len(rows)}") as tgt:
            spec = _spec(tgt.base + prefix, stream, a.concurrency, a.twin_seconds, a.warmup)
            res = interleaved(
                arms, a.reps, lambda arm, rep, spec=spec: run_client(arm, spec, tmp, f"{rep}")
            )
        w, wo = res["engine"], res["engine-no-twin"]
        thr = [x["rate"] / y["rate"] for x, y in zip(w, wo, strict=True)]
        extra = [
            (x["cpu_ms_per_req"] - y["cpu_ms_per_req"]) * 1000.0 for x, y in zip(w, wo, strict=True)
        ]
        rows.append((name, thr, extra, w, wo, f"{la0} → {loadavg_text()}"))
        print(f"  {name}: with ÷ without twin, throughput {med_range(thr)}", flush=True)
    out += [
        f"Parquet twin: closed loop against nginx, {a.twin_seconds:g} s per run, {a.reps} "
        "interleaved repetitions per arm; median (min–max).",
        "",
        "| target | with ÷ without twin, throughput | req/s with / without | "
        "CPU µs per request added | requests per run | load avg |",
        "|---|---|---|---|---|---|",
    ]
    for name, thr, extra, w, wo, load in rows:
        out.append(
            f"| {name} | {med_range(thr)} | {med_range([x['rate'] for x in w], '{:,.0f}')} / "
            f"{med_range([x['rate'] for x in wo], '{:,.0f}')} | {med_range(extra, '{:.1f}')} | "
            f"{med_range([x['requests'] for x in w], '{:,.0f}')} | {load} |"
        )
    out.append("")


# ---------------------------------------------------------------------------------------
# Instructions (valgrind)

_IREFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def _instructions(arm: str, spec: dict[str, Any], tmp: Path, tag: str) -> tuple[int, int, float]:
    d = tmp / f"cg-{arm}-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    wrap = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        f"--cachegrind-out-file={d}/cg.out",
        f"--log-file={d}/vg.log",
    ]
    res = run_client(arm, spec, tmp, tag, wrap=wrap)
    m = _IREFS.search((d / "vg.log").read_text())
    assert m, f"no I refs in {d}/vg.log"
    return int(m.group(1).replace(",", "")), int(res["requests"]), float(res["reads_per_req"])


def instructions(tmp: Path, a: argparse.Namespace, out: list[str]) -> None:
    cases = [
        ("nginx canned stream (1 read)", "nginx", "/sse/v1", True, 8, None),
        ("nginx canned JSON", "nginx", "/json/v1", False, 8, None),
        ("C stream, 16 writes, gap 20 ms", "sse", "/v1", True, 8, 20.0),
    ]
    out += [
        f"Instructions per request (valgrind --tool=cachegrind; each client run for "
        f"{a.vg_short:g} s and {a.vg_long:g} s under valgrind, per request = Δ instructions ÷ "
        "Δ requests, so start-up cancels out; concurrency 8):",
        "",
        "| target | bare ÷ engine | bare ÷ engine-aiohttp | bare loop | engine | engine-aiohttp "
        "| reads per request (bare / engine / engine-aiohttp) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, kind, prefix, stream, conc, gap in cases:
        if a.cases and not any(c in name for c in a.cases.split(",")):
            continue

        def go(
            tgt: Target,
            conc: int = conc,
            stream: bool = stream,
            prefix: str = prefix,
            name: str = name,
        ) -> dict[str, float]:
            per: dict[str, float] = {}
            for arm in ARMS:
                n = {}
                for secs in (a.vg_short, a.vg_long):
                    spec = _spec(tgt.base + prefix, stream, conc, secs, 0.0)
                    n[secs] = _instructions(arm, spec, tmp, f"{secs:g}")
                (i1, n1, _), (i2, n2, reads) = n[a.vg_short], n[a.vg_long]
                per[arm] = (i2 - i1) / (n2 - n1)
                per[arm + "_reads"] = reads
                print(f"  {name} {arm}: {per[arm]:,.0f} instructions/request "
                      f"({n1} and {n2} requests, {reads:.1f} reads each)", flush=True)  # fmt: skip
            return per

        if kind == "nginx":
            with nginx_target(
                TARGET_CPU, tmp / f"nginx-vg-{prefix.strip('/').split('/')[0]}"
            ) as tgt:
                per = go(tgt)
        else:
            with sse_target(TARGET_CPU, gap_ms=gap or 0.0) as tgt:
                per = go(tgt)
        out.append(
            f"| {name} | {per['bare'] / per['engine']:.2f} | "
            f"{per['bare'] / per['engine-aiohttp']:.2f} | {per['bare']:,.0f} | "
            f"{per['engine']:,.0f} | {per['engine-aiohttp']:,.0f} | {per['bare_reads']:.1f} / "
            f"{per['engine_reads']:.1f} / {per['engine-aiohttp_reads']:.1f} |"
        )
    out.append("")


# ---------------------------------------------------------------------------------------
# Send lateness (open loop)


def lateness(tmp: Path, a: argparse.Namespace, out: list[str]) -> None:
    out += [
        f"Send lateness, open loop at a constant rate against nginx JSON, {a.seconds:g} s per "
        f"run, {a.reps} repetitions; send_s − scheduled_s in ms, median (min–max) over "
        "repetitions:",
        "",
        "| rate (req/s) | p50 | p99 | max | load avg before → after |",
        "|---|---|---|---|---|",
    ]
    with nginx_target(TARGET_CPU, tmp / "nginx-late") as tgt:
        for rate in a.late_rates:
            la0 = loadavg_text()
            p50, p99, mx = [], [], []
            for rep in range(a.reps):
                spec = _spec(tgt.base + "/json/v1", False, 0, a.seconds, 0.0)
                spec["load"] = {"pattern": "constant", "rate_per_s": rate}
                spec["keep_records"] = True
                res = run_client("engine", spec, tmp, f"late-{rate}-{rep}")
                late = [(r[2] - r[1]) * 1e3 for r in res["records"]]
                p50.append(pct(late, 50))
                p99.append(pct(late, 99))
                mx.append(max(late))
            out.append(
                f"| {rate:,} | {med_range(p50, '{:.3f}')} | {med_range(p99, '{:.3f}')} | "
                f"{med_range(mx, '{:.2f}')} | {la0} → {loadavg_text()} |"
            )
            print("  " + out[-1], flush=True)
    out.append("")


# ---------------------------------------------------------------------------------------
# Arrival lateness at the server vs the recorded send lateness (connection churn)


def arrival(tmp: Path, a: argparse.Namespace, out: list[str]) -> None:
    cases = [
        (f"constant {r:,} streams/s", {"pattern": "constant", "rate_per_s": r})
        for r in a.churn_rates
    ] + [
        (
            f"bursts of {b:,} every 2 s",
            {"pattern": "burst", "burst_size": b, "burst_period_s": 2.0, "phase_s": 0.5},
        )
        for b in a.churn_bursts
    ]
    out += [
        "Arrival lateness under connection churn: the streaming C target closes every "
        f"connection after its response ({a.churn_gap_ms:g} ms gap, 16 chunks), so every "
        f"request opens a new one; open loop for {a.seconds:g} s, {a.reps} repetitions. "
        "Per request, minus its scheduled time, in ms: `send` = the engine's recorded "
        "send_s; `conn` = its recorded conn_s (the connection was ready); `kernel rx` = the "
        "kernel's receive timestamp of the request's first bytes "
        "at the server (SO_TIMESTAMPNS); `server read` = when the server read them. Median "
        "(min–max) over repetitions of each percentile:",
        "",
        "| load | requests | send p50 | send p99 | conn p50 | conn p99 | kernel rx p50 "
        "| kernel rx p99 | server read p50 | server read p99 | server read max "
        "| load avg before → after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, load in cases:
        la0 = loadavg_text()
        cols: dict[str, list[float]] = {}
        nreq = []
        for rep in range(a.reps):
            log = tmp / f"arrivals-{len(out)}-{rep}.log"
            with sse_target(TARGET_CPU, gap_ms=a.churn_gap_ms, close=True, log=log) as tgt:
                spec = _spec(tgt.base + "/v1", True, 0, a.seconds, 0.0)
                spec["load"] = load
                spec["keep_records"] = True
                res = run_client("engine", spec, tmp, f"arrival-{rep}")
            anchor = res["mono_anchor_ns"]
            srv = {}
            for line in log.read_text().splitlines():
                rid, krx, _acc, first, _done = line.split()
                srv[rid] = (int(krx), int(first))
            send, conn, krx_late, read_late = [], [], [], []
            for rid, sched, sent, _h, _e, conn_s in res["records"]:
                if rid not in srv:
                    raise Invalid(f"request {rid} never reached the server")
                k, f = srv[rid]
                send.append((sent - sched) * 1e3)
                if conn_s is not None:  # a record of this loadkit: when the connection was ready
                    conn.append((conn_s - sched) * 1e3)
                read_late.append(((f - anchor) / 1e9 - sched) * 1e3)
                if k:
                    krx_late.append(((k - anchor) / 1e9 - sched) * 1e3)
            nreq.append(len(send))
            for label, vals in (
                ("send", send),
                ("conn", conn),
                ("krx", krx_late),
                ("read", read_late),
            ):
                for q in (50, 99, 100):
                    cols.setdefault(f"{label}{q}", []).append(pct(vals, q))
        f3 = "{:.2f}"
        out.append(
            f"| {name} | {med_range(nreq, '{:,.0f}')} | {med_range(cols['send50'], f3)} | "
            f"{med_range(cols['send99'], f3)} | {med_range(cols['conn50'], f3)} | "
            f"{med_range(cols['conn99'], f3)} | {med_range(cols['krx50'], f3)} | "
            f"{med_range(cols['krx99'], f3)} | {med_range(cols['read50'], f3)} | "
            f"{med_range(cols['read99'], f3)} | {med_range(cols['read100'], f3)} | "
            f"{la0} → {loadavg_text()} |"
        )
        print("  " + out[-1], flush=True)
    out.append("")


# ---------------------------------------------------------------------------------------
# Accuracy against the reference server (fixed profile)

TTFT_MS = 50.0
ITL_MS = 50.0
TOKENS = 16


def accuracy(tmp: Path, a: argparse.Namespace, out: list[str]) -> None:
    from loadkit.server.process import start_server_process

    cfg = {
        # the OpenAI layout: the bare loop posts to <base>/chat/completions
        "server": {"api": "openai"},
        "tiers": {
            "bench": {"requests": 10_000_000, "window_s": 60.0, "concurrency": 100_000, "keys": 1}
        },
        "models": [
            {
                "id": "fixed",
                "context_length": 8192,
                "capabilities": ["chat", "completion"],
                "ttft_ms": TTFT_MS,
                "prefill_ms_per_token": 0.0,
                "ttft_jitter_ms": 0.0,
                "itl_ms": ITL_MS,
                "itl_jitter_ms": 0.0,
                "decode_capacity_tps": 0,
            }
        ],
    }
    out += [
        f"Accuracy against the reference server (CPU 0), fixed profile TTFT {TTFT_MS:g} ms, "
        f"ITL {ITL_MS:g} ms, {TOKENS} tokens, closed loop {a.acc_seconds:g} s "
        f"({a.acc_warmup:g} s warm-up), {a.reps} interleaved repetitions; measured minus "
        "profile in ms, median (min–max) over repetitions:",
        "",
        "| streams | client | TTFT err p50 | TTFT err p99 | ITL err p50 | ITL err p99 "
        "| load avg before → after |",
        "|---|---|---|---|---|---|---|",
    ]
    with start_server_process(config_dict=cfg, cpu=TARGET_CPU) as srv:
        key = next(k for k in srv.keys if k["tier"] == "bench")["key"]
        for n in a.acc_streams:
            la0 = loadavg_text()
            spec = _spec(srv.base_url, True, n, a.acc_seconds, a.acc_warmup)
            spec.update(key=key, model="fixed", max_tokens=TOKENS)
            res = interleaved(
                ARMS,
                a.reps,
                lambda arm, rep, spec=spec, n=n: run_client(arm, spec, tmp, f"acc{n}-{rep}"),
            )
            la1 = loadavg_text()
            for arm in ARMS:
                rs = res[arm]
                t50 = [pct([x - TTFT_MS for x in r["ttft_ms"]], 50) for r in rs]
                t99 = [pct([x - TTFT_MS for x in r["ttft_ms"]], 99) for r in rs]
                i50 = [pct([x - ITL_MS for x in r["itl_ms"]], 50) for r in rs]
                i99 = [pct([x - ITL_MS for x in r["itl_ms"]], 99) for r in rs]
                out.append(
                    f"| {n:,} | {arm} | {med_range(t50)} | {med_range(t99)} | "
                    f"{med_range(i50)} | {med_range(i99)} | {la0} → {la1} |"
                )
                print("  " + out[-1], flush=True)
    out.append("")


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        return child_main(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--only", help="comma-separated: ceiling,instructions,lateness,arrival,accuracy,twin"
    )
    ap.add_argument(
        "--cases", help="ceiling/instructions: only targets whose name contains one of these"
    )
    ap.add_argument("--reps", type=int, default=5, help="repetitions per client (interleaved)")
    ap.add_argument("--seconds", type=float, default=6.0, help="duration of each run")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured start of each run")
    ap.add_argument("--concurrency", type=int, default=64, help="closed loop against nginx")
    ap.add_argument("--sse-concurrency", type=int, default=256)
    ap.add_argument("--gap-ms", type=float, default=2.0, help="streaming target's gap (ceiling)")
    ap.add_argument("--fixed-concurrency", type=int, default=16)
    ap.add_argument("--fixed-gap-ms", type=float, default=10.0)
    ap.add_argument("--vg-short", type=float, default=4.0)
    ap.add_argument("--vg-long", type=float, default=12.0)
    ap.add_argument(
        "--churn-rates", type=lambda s: [int(x) for x in s.split(",")], default=[200, 400, 800]
    )
    ap.add_argument(
        "--churn-bursts", type=lambda s: [int(x) for x in s.split(",") if x], default=[500, 1500]
    )
    ap.add_argument("--churn-gap-ms", type=float, default=5.0)
    ap.add_argument(
        "--late-rates",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[100, 500, 1000, 2000, 4000],
        help="lateness: open-loop rates (req/s)",
    )
    ap.add_argument(
        "--acc-streams", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100, 1000]
    )
    ap.add_argument("--acc-seconds", type=float, default=8.0)
    ap.add_argument("--acc-warmup", type=float, default=2.0)
    ap.add_argument("--twin-seconds", type=float, default=20.0)
    a = ap.parse_args()
    only = set((a.only or "ceiling,instructions,lateness,arrival,accuracy").split(","))
    raise_fd_limit(16384)
    out = [f"command: python {' '.join(sys.argv)}", *machine()]
    out += ["the C target runs SCHED_FIFO when allowed (it needs ~10 % of its core)", ""]
    print("\n".join(out), flush=True)
    with tempfile.TemporaryDirectory(prefix="loadkit-bench-") as t:
        tmp = Path(t)
        for name, fn in (
            ("ceiling", ceiling),
            ("instructions", instructions),
            ("lateness", lateness),
            ("arrival", arrival),
            ("accuracy", accuracy),
            ("twin", twin),
        ):
            if name in only:
                fn(tmp, a, out)
    out.append(f"load average (1/5/15 min) at end: {loadavg_text()}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
