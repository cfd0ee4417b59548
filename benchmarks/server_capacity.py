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

The answer is the largest K whose median (over repetitions) server lateness p99 is
<= 2 ms. Each repetition starts a fresh server and steps through every K, in ascending
order on even repetitions and descending on odd ones, so drift in the shared machine's
load falls on every K alike; figures are medians (min–max) over repetitions.

``--profile K`` then runs py-spy (``pip install py-spy``) on a fresh server holding K
streams for the steady window and prints its top costs (own time and inclusive time).

    .venv/bin/python benchmarks/server_capacity.py                       # K = 50 .. 1600
    .venv/bin/python benchmarks/server_capacity.py --ks 100,200 --steady 5 --reps 5
    .venv/bin/python benchmarks/server_capacity.py --ks 200,300 --profile 250
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loadkit.server.process import start_server_process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import loadavg_text, machine, med_range, raise_fd_limit  # noqa: E402

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


def _profile_while(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy sampling ``pid`` for ``seconds`` into ``out`` (raw collapsed stacks)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return None
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "250",
        "--idle",
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


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
    base_url: str,
    key: str,
    admin_key: str,
    pid: int,
    k: int,
    ramp_s: float,
    warm_s: float,
    steady_s: float,
    itl_ms: float,
    profile: Path | None = None,
) -> dict[str, Any]:
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
    spy = _profile_while(pid, steady_s, profile) if profile else None
    await asyncio.sleep(steady_s)
    stats = await _admin(host, port, "GET", u.path + "/ai/admin/stats", admin_key)
    elapsed = time.perf_counter() - t0
    cpu = (_cpu_seconds(pid) - cpu0) / elapsed
    if spy is not None:
        # py-spy stops after its duration; awaited off the loop so streams keep flowing
        await asyncio.get_running_loop().run_in_executor(None, spy.wait)
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
        # CPU seconds the server spent per token written: how many streams one whole core
        # could drive, whatever share of its core this run got on a shared machine
        "cpu_us_per_token": cpu * elapsed * 1e6 / max(1, stats["tokens_written"]),
        "failures": sink.failures,
        "ideal_tok_s": k * 1000 / itl_ms,
    }


def streams_per_core(cpu_us_per_token: float, itl_ms: float) -> float:
    """Streams of ``itl_ms`` one whole core could feed at this CPU cost per token."""
    return 1e6 / cpu_us_per_token / (1000 / itl_ms)


def _top_costs(raw: Path, n: int = 15) -> list[str]:
    """Own and inclusive sample shares per function from py-spy's collapsed stacks; time
    waiting in the event loop's selector is reported apart as idle."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = stack.split(";")
        total += c
        if "select (selectors.py" in frames[-1] or "poll" in frames[-1].split(" (")[0]:
            idle += c
            continue
        fn = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
            if " (" in f
            else f
            for f in frames
        ]
        own[fn[-1]] += c
        for f in set(fn):
            incl[f] += c
    busy = max(1, total - idle)
    lines = [
        f"py-spy: {total} samples, {idle / max(1, total):.0%} idle in the selector; "
        f"shares below are of the {busy} busy samples"
    ]
    lines.append("own time:")
    lines += [f"  {c / busy:6.1%}  {f}" for f, c in own.most_common(n)]
    lines.append("inclusive time:")
    lines += [f"  {c / busy:6.1%}  {f}" for f, c in incl.most_common(n + 10)]
    return lines


def _one_rep(
    a: argparse.Namespace, ks: list[int], server_cpu: int | None, rep: int
) -> list[dict[str, Any]]:
    rows = []
    order = ks if rep % 2 == 0 else list(reversed(ks))
    with start_server_process(config_dict=_config(a.itl_ms), cpu=server_cpu) as srv:
        for k in order:
            la = loadavg_text()
            row = asyncio.run(
                run_step(
                    srv.base_url,
                    srv.key("bench-1"),
                    srv.admin_key,
                    srv.pid,
                    k,
                    a.ramp,
                    a.warm,
                    a.steady,
                    a.itl_ms,
                )
            )
            row["load"] = la
            rows.append(row)
            print(
                f"  rep {rep + 1} K={k}: {row['server_tok_s']:.0f} tok/s, lateness p99 "
                f"{row['late_p99']:.2f} ms, server CPU {row['server_cpu']:.0%}, "
                f"failures {row['failures']}, load {la}",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ks", default="50,100,200,400,800,1600", help="concurrent streams per step")
    p.add_argument("--reps", type=int, default=3, help="repetitions (a fresh server each)")
    p.add_argument("--ramp", type=float, default=1.0, help="seconds to open the K streams")
    p.add_argument("--warm", type=float, default=2.0, help="seconds after the ramp, unmeasured")
    p.add_argument("--steady", type=float, default=4.0, help="measured seconds per step")
    p.add_argument("--itl-ms", type=float, default=ITL_MS)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--profile", type=int, help="then profile the server at this K (py-spy)")
    p.add_argument("--profile-seconds", type=float, default=10.0)
    a = p.parse_args(argv)
    desc = machine()  # before pinning this process: it lists the usable CPUs
    ks = [int(x) for x in a.ks.split(",")]
    raise_fd_limit(2 * max([*ks, a.profile or 0]) + 256)  # the server inherits the limit
    cpus = os.sched_getaffinity(0)
    server_cpu = a.server_cpu if a.server_cpu in cpus else None
    if a.client_cpu in cpus and a.client_cpu != a.server_cpu:
        os.sched_setaffinity(0, {a.client_cpu})
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    for line in desc:
        print(line)
    print(
        f"server pinned to CPU {server_cpu}, client to CPU {a.client_cpu}; profile ITL "
        f"{a.itl_ms:g} ms, no TTFT, no jitter, no capacity limit; "
        f"ramp {a.ramp:g} s, warm "
        f"{a.warm:g} s, steady {a.steady:g} s; {a.reps} repetitions"
    )
    by_k: dict[int, list[dict[str, Any]]] = {k: [] for k in ks}
    for rep in range(a.reps):
        for row in _one_rep(a, ks, server_cpu, rep):
            by_k[row["k"]].append(row)
    print()
    print(
        "| K streams | ideal tok/s | server tok/s | lateness p50 (ms) | lateness p99 (ms) "
        "| lateness max (ms) | client ITL−profile p99 (ms) | server CPU | CPU µs per token "
        "| streams one whole core could drive | failures |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in ks:
        rs = by_k[k]
        col = {
            f: [float(r[f]) for r in rs if r[f] is not None] for f in rs[0] if f not in ("load",)
        }
        per_core = [streams_per_core(c, a.itl_ms) for c in col["cpu_us_per_token"]]
        print(
            f"| {k:,} | {k * 1000 / a.itl_ms:,.0f} | {med_range(col['server_tok_s'], '{:,.0f}')} "
            f"| {med_range(col['late_p50'], '{:.3f}')} | {med_range(col['late_p99'], '{:.2f}')} "
            f"| {med_range(col['late_max'], '{:.1f}')} | {med_range(col['client_p99'], '{:.2f}')} "
            f"| {med_range([c * 100 for c in col['server_cpu']], '{:.0f}')} % "
            f"| {med_range(col['cpu_us_per_token'], '{:.1f}')} "
            f"| {med_range(per_core, '{:,.0f}')} "
            f"| {sum(int(r['failures']) for r in rs)} |"
        )
    ok = [
        k
        for k in ks
        if all(r["late_p99"] is not None for r in by_k[k])
        and statistics.median(r["late_p99"] for r in by_k[k]) <= LATENESS_BUDGET_MS
        and not any(r["failures"] for r in by_k[k])
    ]
    print(
        "(lateness = the server's write hand-off minus the token's deadline; client "
        "ITL−profile includes the client's own lateness)"
    )
    if ok:
        k = max(ok)
        held = sum(1 for r in by_k[k] if r["late_p99"] <= LATENESS_BUDGET_MS)
        print(
            f"answer: largest K with median server lateness p99 <= "
            f"{LATENESS_BUDGET_MS:g} ms: {k} (held in {held} of {a.reps} repetitions)"
        )
    else:
        print(f"answer: no K kept median server lateness p99 <= {LATENESS_BUDGET_MS:g} ms")
    if a.profile:
        raw = Path(tempfile.mkdtemp(prefix="loadkit-spy-")) / "server.txt"
        with start_server_process(config_dict=_config(a.itl_ms), cpu=server_cpu) as srv:
            row = asyncio.run(
                run_step(
                    srv.base_url,
                    srv.key("bench-1"),
                    srv.admin_key,
                    srv.pid,
                    a.profile,
                    a.ramp,
                    a.warm,
                    a.profile_seconds,
                    a.itl_ms,
                    profile=raw,
                )
            )
        print()
        print(
            f"profile at K={a.profile} ({a.profile_seconds:g} s, load {loadavg_text()}): "
            f"lateness p99 {row['late_p99']:.2f} ms, server CPU {row['server_cpu']:.0%} "
            f"(py-spy pauses the process to sample: lateness while profiled is not the "
            f"benchmark's); raw stacks in {raw}"
        )
        if raw.exists():
            for line in _top_costs(raw):
                print(line)
    print(f"load average (1/5/15 min) at end: {loadavg_text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
