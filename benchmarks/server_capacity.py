"""How many concurrent streams can the reference server drive on one core while keeping
its own token timing honest?

The server runs as a subprocess pinned to one CPU; this client (pinned to another CPU)
opens K concurrent streams with a fixed, jitter-free profile (ITL 20 ms, no TTFT, no
decode-capacity limit), ramps them in over one second, then measures a steady window:

* tokens/s the server delivered (its own counter),
* the server's per-token write lateness (hand-off to the transport minus the token's
  deadline) p50/p99/max, from ``GET /ai/admin/stats``,
* the client-measured inter-chunk gap minus the profile's ITL, p50/p99 (this includes
  the client's own lateness: at high K the single client core is a bottleneck too),
* the server process's CPU use during the window.

The answer is the largest K whose server lateness p99 is <= 2 ms.

    .venv/bin/python benchmarks/server_capacity.py            # K = 50 .. 1600
    .venv/bin/python benchmarks/server_capacity.py --ks 100,200 --steady 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from loadkit.server.process import start_server_process

ITL_MS = 20.0
LATENESS_BUDGET_MS = 2.0


def _config(itl_ms: float) -> dict[str, Any]:
    return {
        "tiers": {"bench": {"requests": 10**9, "window_s": 60, "concurrency": 100_000, "keys": 1}},
        "models": [{"id": "bench", "itl_ms": itl_ms, "context_length": 100_000}],
    }


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class _StreamClient(asyncio.Protocol):
    """A bare HTTP/1.1 stream reader: it only timestamps reads and counts SSE events, so
    the one client core can keep up with far more streams than a full HTTP client."""

    def __init__(self, request: bytes, sink: _Sink, itl_ms: float) -> None:
        self.request = request
        self.sink = sink
        self.itl_ms = itl_ms
        self.last: float | None = None
        self.status_checked = False
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        t = time.perf_counter()
        if not self.status_checked:
            self.status_checked = True
            if not data.startswith(b"HTTP/1.1 200"):
                self.sink.failures += 1
                assert self.transport is not None
                self.transport.close()
                return
        sink = self.sink
        if sink.start <= t <= sink.end:
            sink.events += data.count(b"data: ")
            if self.last is not None:
                sink.gaps.append((t - self.last) * 1000 - self.itl_ms)
        self.last = t

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Sink:
    def __init__(self) -> None:
        self.start = float("inf")
        self.end = float("-inf")
        self.gaps: list[float] = []
        self.events = 0
        self.failures = 0


async def _admin(host: str, port: int, method: str, path: str, admin_key: str) -> Any:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {admin_key}\r\n"
        f"Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
    )
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw[:300]
    return json.loads(body)


async def run_step(
    base_url: str, key: str, admin_key: str, pid: int, k: int, ramp_s: float, warm_s: float,
    steady_s: float, itl_ms: float,
) -> dict[str, Any]:  # fmt: skip
    u = urlsplit(base_url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    tokens_per_stream = int((ramp_s + warm_s + steady_s + 3.0) * 1000 / itl_ms)
    body = json.dumps(
        {"model": "bench", "prompt": "x", "max_tokens": tokens_per_stream, "stream": True}
    ).encode()
    request = (
        f"POST {u.path}/ai/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sink = _Sink()
    loop = asyncio.get_running_loop()
    clients: list[_StreamClient] = []

    async def stream(i: int) -> None:
        await asyncio.sleep(ramp_s * i / k)
        try:
            _, proto = await loop.create_connection(
                lambda: _StreamClient(request, sink, itl_ms), host, port
            )
        except OSError:
            sink.failures += 1
            return
        clients.append(proto)
        await proto.done

    tasks = [asyncio.create_task(stream(i)) for i in range(k)]
    await asyncio.sleep(ramp_s + warm_s)
    await _admin(host, port, "POST", u.path + "/ai/admin/stats/reset", admin_key)
    cpu0 = _cpu_seconds(pid)
    t0 = time.perf_counter()
    sink.start, sink.end = t0, t0 + steady_s
    await asyncio.sleep(steady_s)
    stats = await _admin(host, port, "GET", u.path + "/ai/admin/stats", admin_key)
    elapsed = time.perf_counter() - t0
    cpu = (_cpu_seconds(pid) - cpu0) / elapsed
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = stats["lateness"]
    return {
        "k": k,
        "server_tok_s": stats["tokens_written"] / elapsed,
        "client_tok_s": sink.events / elapsed,
        "late_p50": lat["p50_ms"],
        "late_p99": lat["p99_ms"],
        "late_max": lat["max_ms"],
        "client_p50": _pct(sink.gaps, 50),
        "client_p99": _pct(sink.gaps, 99),
        "server_cpu": cpu,
        "failures": sink.failures,
        "ideal_tok_s": k * 1000 / itl_ms,
    }


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need)) if hard != resource.RLIM_INFINITY else max(soft, need)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ks", default="50,100,200,400,800,1600", help="concurrent streams per step")
    p.add_argument("--ramp", type=float, default=1.0, help="seconds to open the K streams")
    p.add_argument("--warm", type=float, default=2.0, help="seconds after the ramp, unmeasured")
    p.add_argument("--steady", type=float, default=4.0, help="measured seconds per step")
    p.add_argument("--itl-ms", type=float, default=ITL_MS)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=180.0, help="stop stepping after this")
    a = p.parse_args(argv)
    ks = [int(x) for x in a.ks.split(",")]
    _raise_fd_limit(2 * max(ks) + 256)  # the server subprocess inherits the limit
    cpus = os.sched_getaffinity(0)
    server_cpu = a.server_cpu if a.server_cpu in cpus else None
    if a.client_cpu in cpus and a.client_cpu != a.server_cpu:
        os.sched_setaffinity(0, {a.client_cpu})
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print(
        f"server pinned to CPU {server_cpu}, client to CPU {a.client_cpu}; profile ITL "
        f"{a.itl_ms:g} ms, no TTFT, no jitter, no capacity limit; steady {a.steady:g} s"
    )
    rows = []
    started = time.monotonic()
    with start_server_process(config_dict=_config(a.itl_ms), cpu=server_cpu) as srv:
        for k in ks:
            if time.monotonic() - started > a.max_seconds:
                print(f"(stopping: --max-seconds {a.max_seconds:g} reached before K={k})")
                break
            row = asyncio.run(
                run_step(srv.base_url, srv.key("bench-1"), srv.admin_key, srv.pid, k, a.ramp,
                         a.warm, a.steady, a.itl_ms)
            )  # fmt: skip
            rows.append(row)
            print(
                f"  K={k}: {row['server_tok_s']:.0f} tok/s, lateness p99 "
                f"{row['late_p99']:.2f} ms", flush=True,
            )  # fmt: skip
    hdr = (f"{'K':>6} {'ideal tok/s':>11} {'server tok/s':>12} {'client tok/s':>12} "
           f"{'late p50':>9} {'late p99':>9} {'late max':>9} {'cli ITL-20 p50':>14} "
           f"{'cli ITL-20 p99':>14} {'srv CPU':>7} {'fail':>4}")  # fmt: skip
    print()
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r['k']:>6} {r['ideal_tok_s']:>11.0f} {r['server_tok_s']:>12.0f} "
            f"{r['client_tok_s']:>12.0f} {r['late_p50']:>9.3f} {r['late_p99']:>9.3f} "
            f"{r['late_max']:>9.2f} {r['client_p50']:>14.2f} {r['client_p99']:>14.2f} "
            f"{r['server_cpu'] * 100:>6.0f}% {r['failures']:>4}"
        )
    ok = [r["k"] for r in rows if r["late_p99"] is not None and r["late_p99"] <= LATENESS_BUDGET_MS]
    print("(lateness and client ITL-20 in ms; lateness = write hand-off minus deadline)")
    if ok:
        print(f"answer: largest K with server lateness p99 <= {LATENESS_BUDGET_MS:g} ms: {max(ok)}")
    else:
        print(f"answer: no K kept server lateness p99 <= {LATENESS_BUDGET_MS:g} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
