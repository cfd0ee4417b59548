"""Accuracy and overhead of the asyncio engine, beside a bare aiohttp loop in the same run.

Ceiling: against the canned C-speed nginx target (../shared/bench-targets/nginx), the most
requests per second one core drives (generator pinned with taskset), streaming and not,
with full records — and the same for a bare aiohttp loop (the floor for any Python client).
Lateness: open-loop constant rates against the same target; send_s − scheduled_s.
Accuracy: against the reference server with a fixed, jitter-free profile, measured TTFT and
ITL minus the profile at 1, 100 and 1,000 concurrent streams, engine vs bare loop.

    python benchmarks/engine_overhead.py                 # everything (about 3 minutes)
    python benchmarks/engine_overhead.py --only ceiling  # or: lateness, accuracy

Not a test: figures go to the README. Needs nginx (apt-get install -y nginx-light).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NGINX = ROOT.parent / "shared" / "bench-targets" / "nginx"
PY = sys.executable
GEN_CPU = "1"
SERVER_CPU = "0"
CONCURRENCY = 64


# ---------------------------------------------------------------------------------------
# The bare loop: what any Python client must at least spend (aiohttp, parse every chunk).


async def _bare(
    url: str,
    stream: bool,
    concurrency: int,
    seconds: float,
    out: str,
    warmup: float = 0.0,
    key: str = "k",
    model: str = "m",
    max_tokens: int = 16,
) -> None:
    import aiohttp

    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi there"}],
        "stream": stream,
        "max_tokens": max_tokens,
    }
    data = json.dumps(body).encode()
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Accept-Encoding": "identity",
    }
    ttft: list[float] = []
    itl: list[float] = []
    done = 0
    t_end = time.perf_counter() + seconds
    t_measure = time.perf_counter() + warmup
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600, sock_read=120)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, read_bufsize=1 << 20) as s:

        async def one() -> None:
            nonlocal done
            t0 = time.perf_counter()
            async with s.post(url, data=data, headers=headers) as r:
                if stream:
                    first = None
                    last = None
                    buf = b""
                    while True:
                        chunk = await r.content.readany()
                        if not chunk:
                            break
                        now = time.perf_counter()
                        buf += chunk
                        *events, buf = buf.split(b"\n\n")
                        for ev in events:
                            payload = ev[6:]
                            if payload == b"[DONE]":
                                continue
                            obj = json.loads(payload)
                            ch = obj.get("choices") or []
                            if ch and ch[0].get("delta", {}).get("content"):
                                if first is None:
                                    first = now
                                    if t0 >= t_measure:
                                        ttft.append(now - t0)
                                elif t0 >= t_measure:
                                    itl.append(now - last)
                                last = now
                else:
                    json.loads(await r.read())
            done += 1

        async def user() -> None:
            while time.perf_counter() < t_end:
                await one()

        await asyncio.gather(*(user() for _ in range(concurrency)))
    Path(out).write_text(json.dumps({"done": done, "seconds": seconds, "ttft": ttft, "itl": itl}))


# ---------------------------------------------------------------------------------------
# Helpers


def _pinned(cmd: list[str], cpu: str) -> list[str]:
    return (["taskset", "-c", cpu] if shutil.which("taskset") else []) + cmd


def _engine_run(scenario: str, out: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        _pinned(
            [
                PY,
                "-m",
                "loadkit",
                "run",
                scenario,
                "--engine",
                "async",
                "--out",
                str(out),
                "--no-analyze",
                "--quiet",
            ],
            GEN_CPU,
        ),
        check=True,
        env={**os.environ, **env},
    )
    return time.perf_counter() - t0


def _records(out: Path) -> list[dict]:
    rows = []
    for p in out.glob("records-*.jsonl"):
        rows += [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return rows


def _scenario(path: Path, base_url: str, load: str, duration: float, extra: str = "") -> str:
    path.write_text(f"""
name = "bench"
[target]
base_url = "{base_url}"
model = "m"
[run]
duration_s = {duration}
{extra or "drain_s = 10"}
[tiers.bench]
requests = 1000000
window_s = 60
concurrency = 1000000
keys_env = "BENCH_KEYS"
[[load]]
tier = "bench"
{load}
""")
    return str(path)


def _pct(a: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(np.asarray(a), q)) if len(a) else float("nan")


# ---------------------------------------------------------------------------------------
# Ceiling against nginx


def ceiling(tmp: Path, port: int) -> list[str]:
    lines = ["| client | mode | req/s (one core) | ratio to bare |", "|---|---|---|---|"]
    for mode, prefix, kind in (("stream", "sse", "chat_stream"), ("non-stream", "json", "chat")):
        base = f"http://127.0.0.1:{port}/{prefix}/v1"
        bare_out = tmp / f"bare-{mode}.json"
        secs = 8.0
        subprocess.run(
            _pinned(
                [
                    PY,
                    __file__,
                    "--bare",
                    f"{base}/ai/chat/completions",
                    "--stream",
                    str(mode == "stream"),
                    "--seconds",
                    str(secs),
                    "--out",
                    str(bare_out),
                ],
                GEN_CPU,
            ),
            check=True,
        )
        bare = json.loads(bare_out.read_text())
        bare_rps = bare["done"] / secs
        out = tmp / f"engine-{mode}"
        sc = _scenario(
            tmp / f"{mode}.toml",
            base,
            f'pattern = "closed"\nconcurrency = {CONCURRENCY}\nmix = {{ {kind} = 1 }}',
            secs,
        )
        _engine_run(sc, out, {"BENCH_KEYS": "bench-key"})
        recs = _records(out)
        ok = [r for r in recs if r["status"] == 200 and not r["transport_error"]]
        span = max(r["end_s"] for r in recs) - min(r["send_s"] for r in recs)
        rps = len(ok) / span
        lines.append(f"| bare aiohttp loop | {mode} | {bare_rps:,.0f} | 1.00 |")
        lines.append(f"| loadkit async engine | {mode} | {rps:,.0f} | {rps / bare_rps:.2f} |")
        print(lines[-2], lines[-1], sep="\n", flush=True)
    return lines


def lateness(tmp: Path, port: int) -> list[str]:
    lines = [
        "| rate (req/s) | sent | lateness p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---|---|---|---|",
    ]
    base = f"http://127.0.0.1:{port}/json/v1"
    for rate in (100, 500, 1000):
        out = tmp / f"late-{rate}"
        sc = _scenario(
            tmp / f"late-{rate}.toml",
            base,
            f'pattern = "constant"\nrate_per_s = {rate}\nmix = {{ chat = 1 }}',
            8.0,
        )
        _engine_run(sc, out, {"BENCH_KEYS": "bench-key"})
        recs = _records(out)
        late = np.array([r["send_s"] - r["scheduled_s"] for r in recs]) * 1e3
        lines.append(
            f"| {rate} | {len(recs)} | {_pct(late, 50):.3f} | {_pct(late, 99):.3f} | "
            f"{late.max():.3f} |"
        )
        print(lines[-1], flush=True)
    return lines


# ---------------------------------------------------------------------------------------
# Accuracy against the reference server (fixed profile)

TTFT_MS = 50.0
ITL_MS = 50.0  # 1,000 streams x 20 tokens/s stays within one server core (docs/server.md)
TOKENS = 16
STREAMS = (1, 100, 1000)
ACC_SECONDS = 8.0
ACC_WARMUP = 2.0  # connections opened, the closed loop settled


def accuracy(tmp: Path) -> list[str]:
    from loadkit.server.process import start_server_process

    cfg = {
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
    lines = [
        "| streams | client | streams measured | TTFT err p50 (ms) | p99 "
        "| ITL err p50 (ms) | p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    with start_server_process(config_dict=cfg, cpu=int(SERVER_CPU)) as srv:
        key = next(k for k in srv.keys if k["tier"] == "bench")["key"]
        for n in STREAMS:
            bare_out = tmp / f"acc-bare-{n}.json"
            cmd = [PY, __file__, "--bare", f"{srv.base_url}/ai/chat/completions",
                   "--stream", "True", "--concurrency", str(n), "--seconds", str(ACC_SECONDS),
                   "--warmup", str(ACC_WARMUP), "--key", key, "--model", "fixed",
                   "--max-tokens", str(TOKENS), "--out", str(bare_out)]  # fmt: skip
            subprocess.run(_pinned(cmd, GEN_CPU), check=True)
            bare = json.loads(bare_out.read_text())
            out = tmp / f"acc-engine-{n}"
            sc = _scenario(
                tmp / f"acc-{n}.toml",
                srv.base_url,
                f'pattern = "closed"\nconcurrency = {n}\nmix = {{ chat_stream = 1 }}\n'
                f'model = "fixed"\nmax_tokens = {TOKENS}',
                ACC_SECONDS,
                "drain_s = 30",
            )
            _engine_run(sc, out, {"BENCH_KEYS": key})
            recs = [r for r in _records(out) if r["status"] == 200 and r["send_s"] >= ACC_WARMUP]
            e_ttft = [(r["first_token_s"] - r["send_s"]) * 1e3 - TTFT_MS for r in recs]
            e_itl = [d * 1e3 - ITL_MS for r in recs for d in np.diff(r["chunk_s"])]
            b_ttft = [t * 1e3 - TTFT_MS for t in bare["ttft"]]
            b_itl = [t * 1e3 - ITL_MS for t in bare["itl"]]
            for name, a, b in (("bare loop", b_ttft, b_itl), ("loadkit", e_ttft, e_itl)):
                lines.append(
                    f"| {n} | {name} | {len(a)} | {_pct(a, 50):.2f} | {_pct(a, 99):.2f} | "
                    f"{_pct(b, 50):.2f} | {_pct(b, 99):.2f} |"
                )
                print(lines[-1], flush=True)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=("ceiling", "lateness", "accuracy"))
    ap.add_argument("--bare")
    ap.add_argument("--stream", default="True")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=CONCURRENCY)
    ap.add_argument("--warmup", type=float, default=0.0)
    ap.add_argument("--key", default="k")
    ap.add_argument("--model", default="m")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.bare:
        asyncio.run(
            _bare(
                a.bare,
                a.stream == "True",
                a.concurrency,
                a.seconds,
                a.out,
                a.warmup,
                a.key,
                a.model,
                a.max_tokens,
            )
        )
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="loadkit-bench-"))
    report: list[str] = [f"command: python {' '.join(sys.argv)}", ""]
    port = 18600
    need_nginx = a.only in (None, "ceiling", "lateness")
    if need_nginx:
        subprocess.run(
            [
                "taskset",
                "-c",
                SERVER_CPU,
                "bash",
                str(NGINX / "start.sh"),
                str(port),
                str(tmp / "nginx"),
            ],
            check=True,
        )
    try:
        if a.only in (None, "ceiling"):
            report += ["Ceiling (nginx canned target, 64 concurrent, generator on one core):"]
            report += ceiling(tmp, port) + [""]
        if a.only in (None, "lateness"):
            report += ["Send lateness vs schedule (open loop, constant rate):"]
            report += lateness(tmp, port) + [""]
        if a.only in (None, "accuracy"):
            report += [
                f"Accuracy vs the reference server's fixed profile (TTFT {TTFT_MS} ms, "
                f"ITL {ITL_MS} ms, {TOKENS} tokens):"
            ]
            report += accuracy(tmp) + [""]
    finally:
        if need_nginx:
            subprocess.run(["bash", str(NGINX / "stop.sh"), str(tmp / "nginx")], check=False)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
