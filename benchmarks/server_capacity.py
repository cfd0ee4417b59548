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
* the server's CPU time per token written (from ``/proc/PID/schedstat``: it does not
  depend on the share of the core the server got) and its CPU use,
* what separates the server from its surroundings: the share of the window the server
  was runnable but another process held its core ("waiting for its core"), bytes the
  client had not read yet (> 0 for long: the client, not the server, is behind), how
  long the admin requests took (a server whose loop stops reading sockets answers
  late), and listen-queue drops.

A step whose admin request is not answered within 30 s is reported as unanswered, and
stream connects time out after 10 s: a step never hangs. The answer is the largest K
whose median (over repetitions) server lateness p99 is <= 2 ms with the ideal token rate
delivered (>= 97 %). Each repetition starts
a fresh server and steps through every K, in ascending order on even repetitions and
descending on odd ones, so drift in the shared machine's load falls on every K alike;
figures are medians (min–max) over repetitions.

On a shared machine the server's lateness is mostly the share of its core it gets;
``--realtime`` (root) runs it SCHED_FIFO so the lateness is its own. ``--loop
asyncio,uvloop`` runs one interleaved arm per event loop; ``--against DIR`` runs another
checkout's server as a second interleaved arm (an A/B), with the ratio of CPU per token.
``--profile K`` then runs py-spy (``pip install py-spy``) on a fresh server holding K
streams and prints its top costs (own time and inclusive time).

    .venv/bin/python benchmarks/server_capacity.py                       # K = 100 .. 800
    .venv/bin/python benchmarks/server_capacity.py --ks 200,500 --reps 3 --realtime
    .venv/bin/python benchmarks/server_capacity.py --ks 200,400 --against ../main --realtime
    .venv/bin/python benchmarks/server_capacity.py --ks 100 --loop asyncio,uvloop
    .venv/bin/python benchmarks/server_capacity.py --ks 50 --reps 1 --profile 300
"""

from __future__ import annotations

import argparse
import array
import asyncio
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import termios
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from loadkit.server.process import start_server_process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import loadavg_text, machine, med_range, raise_fd_limit  # noqa: E402

ITL_MS = 20.0
LATENESS_BUDGET_MS = 2.0
# A step whose server delivered less than this share of the ideal tokens/s in its window
# does not count as held, whatever its lateness: an overloaded server answers the admin
# requests so late that the window can fall after its streams ended.
DELIVERED_SHARE = 0.97


def _config(itl_ms: float) -> dict[str, Any]:
    return {
        "tiers": {"bench": {"requests": 10**9, "window_s": 60, "concurrency": 100_000, "keys": 1}},
        "models": [{"id": "bench", "itl_ms": itl_ms, "context_length": 100_000}],
    }


def _schedstat(pid: int | str) -> tuple[int, int]:
    """(CPU ns, ns spent runnable but waiting for a CPU) of a process's main thread: the
    second is the time other processes held its core (a shared machine's share)."""
    with open(f"/proc/{pid}/schedstat") as f:
        cpu, wait, _ = f.read().split()
    return int(cpu), int(wait)


def _tcp_ext(*names: str) -> list[int]:
    """Machine-wide TcpExt counters (``ListenOverflows``, ``TCPSynRetrans``, ...)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            table = dict(zip(head.split()[1:], vals.split()[1:], strict=True))
            return [int(table.get(n, 0)) for n in names]
    return [0 for _ in names]


def _unread_bytes(clients: list[_StreamClient]) -> int:
    """Bytes sitting unread in the client sockets' receive queues: > 0 for long means the
    client, not the server, is behind (and its full queues push back on the server)."""
    total = 0
    buf = array.array("i", [0])
    for c in clients:
        sock = c.transport.get_extra_info("socket") if c.transport is not None else None
        if sock is None or sock.fileno() < 0:
            continue
        try:
            fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
        except OSError:
            continue
        total += buf[0]
    return total


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
        "--nonblocking",  # sampling without pausing the server
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


ADMIN_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0


async def _admin(host: str, port: int, method: str, path: str, admin_key: str) -> Any:
    """One admin request on a new connection, bounded by ``ADMIN_TIMEOUT_S`` (a server
    whose event loop stops reading sockets answers late or never)."""
    async with asyncio.timeout(ADMIN_TIMEOUT_S):
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
    drops0, syn0 = _tcp_ext("ListenDrops", "TCPSynRetrans")

    async def stream(i: int) -> None:
        await asyncio.sleep(ramp_s * i / k)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                _, proto = await loop.create_connection(
                    lambda: _StreamClient(request, sink, itl_ms), host, port
                )
        except (OSError, TimeoutError):
            sink.failures += 1
            return
        clients.append(proto)
        await proto.done

    tasks = [asyncio.create_task(stream(i)) for i in range(k)]
    row: dict[str, Any] = {"k": k, "ideal_tok_s": k * 1000 / itl_ms, "failures": 0}
    spy = None
    try:
        await asyncio.sleep(ramp_s + warm_s)
        t_ask = time.perf_counter()
        await _admin(host, port, "POST", u.path + "/ai/admin/stats/reset", admin_key)
        t0 = time.perf_counter()
        cpu0, wait0 = _schedstat(pid)
        ccpu0, cwait0 = _schedstat("self")
        sink.start, sink.end = t0, t0 + steady_s
        spy = _profile_while(pid, steady_s, profile) if profile else None
        await asyncio.sleep(steady_s / 2)
        unread_mid = _unread_bytes(clients)
        await asyncio.sleep(steady_s / 2)
        cpu1, wait1 = _schedstat(pid)
        ccpu1, cwait1 = _schedstat("self")
        t1 = time.perf_counter()
        unread_end = _unread_bytes(clients)
        stats = await _admin(host, port, "GET", u.path + "/ai/admin/stats", admin_key)
        t2 = time.perf_counter()
    except TimeoutError:
        # The server did not answer an admin request in time: its loop is not reading
        # sockets. Nothing measured in this step can be trusted.
        row["failures"] = k
        row["error"] = f"an admin request took over {ADMIN_TIMEOUT_S:g} s"
        return row
    finally:
        if spy is not None:
            # py-spy stops after its duration; awaited off the loop so streams keep flowing
            await asyncio.get_running_loop().run_in_executor(None, spy.wait)
        for c in clients:
            if c.transport is not None:
                c.transport.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = t1 - t0
    drops1, syn1 = _tcp_ext("ListenDrops", "TCPSynRetrans")
    lat = stats["lateness"]
    tokens = stats["tokens_written"]
    row.update(
        {
            "server_tok_s": tokens / elapsed,
            "client_tok_s": sink.events / elapsed,
            "late_p50": lat["p50_ms"],
            "late_p99": lat["p99_ms"],
            "late_max": lat["max_ms"],
            "client_p50": _pct(sink.gaps, 50),
            "client_p99": _pct(sink.gaps, 99),
            "server_cpu": (cpu1 - cpu0) / 1e9 / elapsed,
            # the share of the window the server was ready to run but another process
            # held its core: lateness then measures the machine, not the server
            "server_wait": (wait1 - wait0) / 1e9 / elapsed,
            "client_cpu": (ccpu1 - ccpu0) / 1e9 / elapsed,
            "client_wait": (cwait1 - cwait0) / 1e9 / elapsed,
            # CPU seconds the server spent per token written: how many streams one whole
            # core could drive, whatever share of its core this run got on a shared machine
            "cpu_us_per_token": (cpu1 - cpu0) / 1e3 / max(1, tokens),
            "unread_kib": max(unread_mid, unread_end) / 1024,
            "admin_ms": max(t0 - t_ask, t2 - t1) * 1000,
            "listen_drops": drops1 - drops0,
            "syn_retrans": syn1 - syn0,
            "failures": sink.failures,
        }
    )
    return row


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


@dataclass(frozen=True)
class Arm:
    """One server build under test: this checkout, or another one (``--against``), with
    extra ``loadkit serve`` arguments (``--loop``)."""

    name: str
    src: str | None = None  # a checkout's root: the server imports loadkit from there
    args: tuple[str, ...] = ()


@contextmanager
def _server(a: argparse.Namespace, arm: Arm, server_cpu: int | None) -> Iterator[Any]:
    here = os.getcwd()
    if arm.src is not None:
        # ``python -m loadkit`` imports from its working directory first (ahead of the
        # editable install): the server subprocess inherits this one's.
        os.chdir(arm.src)
    try:
        srv = start_server_process(
            config_dict=_config(a.itl_ms), cpu=server_cpu, extra_args=list(arm.args)
        )
    finally:
        os.chdir(here)
    with srv:
        if a.realtime:
            # SCHED_FIFO: the server runs whenever it is ready, whatever else shares its
            # core, so its lateness is its own; the kernel still keeps 5 % for the others.
            os.sched_setscheduler(srv.pid, os.SCHED_FIFO, os.sched_param(10))
        yield srv


def _step(a: argparse.Namespace, srv: Any, k: int, seconds: float, profile: Path | None = None):
    return asyncio.run(
        run_step(
            srv.base_url,
            srv.key("bench-1"),
            srv.admin_key,
            srv.pid,
            k,
            a.ramp,
            a.warm,
            seconds,
            a.itl_ms,
            profile=profile,
        )
    )


def _one_rep(
    a: argparse.Namespace, arm: Arm, ks: list[int], server_cpu: int | None, rep: int
) -> list[dict[str, Any]]:
    rows = []
    order = ks if rep % 2 == 0 else list(reversed(ks))
    with _server(a, arm, server_cpu) as srv:
        for k in order:
            la = loadavg_text()
            row = _step(a, srv, k, a.steady)
            row["load"] = la
            row["arm"] = arm.name
            rows.append(row)
            if "error" in row:
                print(f"  rep {rep + 1} {arm.name} K={k}: {row['error']}", flush=True)
                continue
            p99 = "n/a" if row["late_p99"] is None else f"{row['late_p99']:.2f} ms"
            print(
                f"  rep {rep + 1} {arm.name} K={k}: {row['server_tok_s']:.0f} tok/s, lateness "
                f"p99 {p99}, server CPU {row['server_cpu']:.0%} "
                f"(waiting for its core {row['server_wait']:.0%}), "
                f"{row['cpu_us_per_token']:.1f} µs/token, client unread "
                f"{row['unread_kib']:.0f} KiB, admin {row['admin_ms']:.0f} ms, "
                f"failures {row['failures']}, load {la}",
                flush=True,
            )
    return rows


def _table(a: argparse.Namespace, arm: Arm, ks: list[int], by_k: dict[int, list[dict[str, Any]]]):
    print()
    print(f"{arm.name}:")
    print(
        "| K streams | ideal tok/s | server tok/s | lateness p50 (ms) | lateness p99 (ms) "
        "| lateness max (ms) | client ITL−profile p99 (ms) | server CPU | waiting for its "
        "core | CPU µs per token | streams one whole core could drive | client unread (KiB) "
        "| admin reply (ms) | listen drops | failures |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in ks:
        rs = [r for r in by_k[k] if "error" not in r]
        bad = len(by_k[k]) - len(rs)
        if not rs:
            print(f"| {k:,} | {bad} of {len(by_k[k])} repetitions: no answer from the server |")
            continue

        def col(f: str, fmt: str, scale: float = 1.0, rs: list[dict[str, Any]] = rs) -> str:
            return med_range([float(r[f]) * scale for r in rs if r[f] is not None], fmt)

        per_core = [streams_per_core(r["cpu_us_per_token"], a.itl_ms) for r in rs]
        unanswered = f" ({bad} steps unanswered)" if bad else ""
        print(
            f"| {k:,} | {k * 1000 / a.itl_ms:,.0f} | {col('server_tok_s', '{:,.0f}')} "
            f"| {col('late_p50', '{:.3f}')} | {col('late_p99', '{:.2f}')} "
            f"| {col('late_max', '{:.1f}')} | {col('client_p99', '{:.2f}')} "
            f"| {col('server_cpu', '{:.0f}', 100)} % | {col('server_wait', '{:.0f}', 100)} % "
            f"| {col('cpu_us_per_token', '{:.1f}')} | {med_range(per_core, '{:,.0f}')} "
            f"| {col('unread_kib', '{:.0f}')} | {col('admin_ms', '{:.0f}')} "
            f"| {sum(int(r['listen_drops']) for r in rs)} "
            f"| {sum(int(r['failures']) for r in rs)}{unanswered} |"
        )

    def held(r: dict[str, Any]) -> bool:
        return (
            r["late_p99"] <= LATENESS_BUDGET_MS
            and r["server_tok_s"] >= DELIVERED_SHARE * r["ideal_tok_s"]
        )

    ok = [
        k
        for k in ks
        if by_k[k]
        and all("error" not in r and r["late_p99"] is not None for r in by_k[k])
        and statistics.median(r["late_p99"] for r in by_k[k]) <= LATENESS_BUDGET_MS
        and statistics.median(r["server_tok_s"] / r["ideal_tok_s"] for r in by_k[k])
        >= DELIVERED_SHARE
        and not any(r["failures"] for r in by_k[k])
    ]
    if ok:
        k = max(ok)
        n_held = sum(1 for r in by_k[k] if held(r))
        print(
            f"answer ({arm.name}): largest K with median server lateness p99 <= "
            f"{LATENESS_BUDGET_MS:g} ms and >= {DELIVERED_SHARE:.0%} of the ideal tok/s: {k} "
            f"(held in {n_held} of {len(by_k[k])} repetitions)"
        )
    else:
        print(
            f"answer ({arm.name}): no K kept median server lateness p99 <= "
            f"{LATENESS_BUDGET_MS:g} ms with >= {DELIVERED_SHARE:.0%} of the ideal tok/s"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ks", default="100,200,300,500,800", help="concurrent streams per step")
    p.add_argument("--reps", type=int, default=3, help="repetitions (a fresh server each)")
    p.add_argument("--ramp", type=float, default=1.0, help="seconds to open the K streams")
    p.add_argument("--warm", type=float, default=2.0, help="seconds after the ramp, unmeasured")
    p.add_argument("--steady", type=float, default=4.0, help="measured seconds per step")
    p.add_argument("--itl-ms", type=float, default=ITL_MS)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument(
        "--realtime",
        action="store_true",
        help="run the server SCHED_FIFO (root): on a shared machine its lateness is then "
        "its own, not the share of the core it got",
    )
    p.add_argument(
        "--loop",
        default="auto",
        help="loadkit serve --loop for this tree: auto, asyncio, uvloop, or a comma list "
        "(one interleaved arm each: --loop asyncio,uvloop)",
    )
    p.add_argument(
        "--against",
        metavar="DIR",
        help="also run the server of another checkout (its root), interleaved: an A/B",
    )
    p.add_argument("--profile", type=int, help="then profile the server at this K (py-spy)")
    p.add_argument("--profile-seconds", type=float, default=10.0)
    a = p.parse_args(argv)
    desc = machine()  # before pinning this process: it lists the usable CPUs
    ks = [int(x) for x in a.ks.split(",")]
    loops = a.loop.split(",")
    arms = [Arm("this" if len(loops) == 1 else f"this, {x}", None, ("--loop", x)) for x in loops]
    if a.against:
        arms.append(Arm(f"against {a.against}", str(Path(a.against).resolve())))
    raise_fd_limit(2 * max([*ks, a.profile or 0]) + 256)  # the server inherits the limit
    cpus = os.sched_getaffinity(0)
    server_cpu = a.server_cpu if a.server_cpu in cpus else None
    if a.client_cpu in cpus and a.client_cpu != a.server_cpu:
        os.sched_setaffinity(0, {a.client_cpu})
    print(f"command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    for line in desc:
        print(line)
    print(
        f"server pinned to CPU {server_cpu}{' SCHED_FIFO' if a.realtime else ''}, client to "
        f"CPU {a.client_cpu}; profile ITL {a.itl_ms:g} ms, no TTFT, no jitter, no capacity "
        f"limit; ramp {a.ramp:g} s, warm {a.warm:g} s, steady {a.steady:g} s; "
        f"{a.reps} repetitions; arms: {', '.join(x.name for x in arms)}"
    )
    by_arm: dict[str, dict[int, list[dict[str, Any]]]] = {x.name: {k: [] for k in ks} for x in arms}
    for rep in range(a.reps):
        for arm in arms if rep % 2 == 0 else list(reversed(arms)):
            for row in _one_rep(a, arm, ks, server_cpu, rep):
                by_arm[arm.name][row["k"]].append(row)
    for arm in arms:
        _table(a, arm, ks, by_arm[arm.name])
    for other in arms[1:]:
        mine, theirs = by_arm[arms[0].name], by_arm[other.name]
        ratios = [
            statistics.median(r["cpu_us_per_token"] for r in mine[k] if "error" not in r)
            / statistics.median(r["cpu_us_per_token"] for r in theirs[k] if "error" not in r)
            for k in ks
            if any("error" not in r for r in mine[k]) and any("error" not in r for r in theirs[k])
        ]
        if ratios:
            print(
                f"CPU per token, {arms[0].name} / {other.name} (median per K): "
                + ", ".join(f"{r:.2f}" for r in ratios)
            )
    print(
        "(lateness = the server's write hand-off minus the token's deadline; client "
        "ITL−profile includes the client's own lateness; waiting for its core = the share "
        "of the window the server was runnable while another process held its CPU; client "
        "unread = bytes the client had not read yet, the larger of two samples; admin reply "
        "= the slower of the stats reset and stats requests)"
    )
    if a.profile:
        raw = Path(tempfile.mkdtemp(prefix="loadkit-spy-")) / "server.txt"
        with _server(a, arms[0], server_cpu) as srv:
            row = _step(a, srv, a.profile, a.profile_seconds, profile=raw)
        print()
        if "error" in row:
            print(f"profile at K={a.profile}: {row['error']}")
        else:
            print(
                f"profile at K={a.profile} ({a.profile_seconds:g} s, load {loadavg_text()}): "
                f"lateness p99 {row['late_p99'] or float('nan'):.2f} ms, "
                f"server CPU {row['server_cpu']:.0%}, "
                f"{row['cpu_us_per_token']:.1f} µs/token (py-spy reads the process 250 times "
                f"a second: figures while profiled are not the benchmark's); raw stacks in {raw}"
            )
        if raw.exists():
            for line in _top_costs(raw):
                print(line)
    print(f"load average (1/5/15 min) at end: {loadavg_text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
