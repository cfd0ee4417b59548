"""What the benchmark scripts share: the machine's description, load average, CPU pinning,
interleaved repetitions with medians and ranges, free loopback ports, and the two
C-speed targets (the canned nginx target and the streaming ``targets/sse_target.c``).

Not part of the library: benchmarks import it as ``from _bench import ...`` (their own
directory is on ``sys.path`` when run as scripts).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGETS = HERE / "targets"
PY = sys.executable


# ---------------------------------------------------------------------------------------
# The machine


def loadavg() -> tuple[float, float, float]:
    a, b, c = os.getloadavg()
    return (a, b, c)


def loadavg_text() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*loadavg())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> list[str]:
    """Lines describing this machine and software, for a benchmark's output."""
    import aiohttp

    cpus = sorted(os.sched_getaffinity(0))
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB memory"
    except (OSError, ValueError, IndexError):
        pass
    try:
        gcc = subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout
    except OSError:
        gcc = ""
    try:
        nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    except OSError:
        nginx = ""
    return [
        f"machine: {cpu_model()}, {os.cpu_count()} cores (usable: {cpus}){mem}; "
        f"Linux {platform.release()}",
        f"software: Python {platform.python_version()}, aiohttp {aiohttp.__version__}"
        + (f", gcc {gcc.strip()}" if gcc.strip() else "")
        + (f", {nginx.strip().split(': ')[-1]}" if nginx.strip() else ""),
        f"load average (1/5/15 min) at start: {loadavg_text()}",
    ]


# ---------------------------------------------------------------------------------------
# Processes and ports


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """``cmd`` run on one CPU (taskset), or as is when there is no such CPU or no taskset."""
    if cpu is None or cpu not in os.sched_getaffinity(0) or not shutil.which("taskset"):
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


def realtime_prefix() -> list[str]:
    """``chrt -f 10`` when this process may use it (root): a target that sleeps most of
    the time then keeps its schedule on a core that other processes share, without taking
    the core from them (it needs ~10 % of it). Empty when not allowed."""
    if not shutil.which("chrt"):
        return []
    ok = subprocess.run(["chrt", "-f", "10", "true"], capture_output=True).returncode == 0
    return ["chrt", "-f", "10"] if ok else []


def free_port() -> int:
    """A loopback port free right now (for servers such as nginx that cannot bind port 0;
    the caller retries if another process takes it first)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_fd_limit(need: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, need) if hard == resource.RLIM_INFINITY else min(hard, max(soft, need))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_json(url: str, method: str = "GET", timeout: float = 10.0) -> Any:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


# ---------------------------------------------------------------------------------------
# Statistics


def pct(values: Sequence[float], q: float) -> float:
    """Exact percentile (linear interpolation, numpy's default); NaN when empty."""
    if not len(values):
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def med_range(values: Sequence[float], fmt: str = "{:,.2f}") -> str:
    """``median (min–max)`` of repetitions."""
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def interleaved(
    arms: Sequence[str], reps: int, run: Callable[[str, int], dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Run each arm ``reps`` times, alternating (A B, then B A, ...) so slow drift in the
    machine's load falls on every arm alike; ``run(arm, rep)`` returns one result."""
    out: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for rep in range(reps):
        order = list(arms) if rep % 2 == 0 else list(reversed(arms))
        for arm in order:
            out[arm].append(run(arm, rep))
    return out


def rate_over_span(sends: Sequence[float], ends: Sequence[float], warmup_s: float) -> float:
    """Completions per second over the run's own measured span: requests that ended after
    the first send + ``warmup_s``, divided by the time from that mark to the last end."""
    if not sends:
        return 0.0
    mark = min(sends) + warmup_s
    last = max(ends)
    n = sum(1 for e in ends if e >= mark)
    return n / (last - mark) if last > mark else 0.0


# ---------------------------------------------------------------------------------------
# Targets


@dataclass(frozen=True)
class Target:
    base: str  # scheme://host:port
    pid: int


def build_sse_target(build_dir: Path | None = None) -> Path:
    """Compile ``targets/sse_target.c`` with the machine's gcc (once per source version)."""
    src = TARGETS / "sse_target.c"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    d = build_dir or Path(tempfile.gettempdir()) / "loadkit-bench-build"
    d.mkdir(parents=True, exist_ok=True)
    exe = d / f"sse_target-{digest}"
    if not exe.exists():
        tmp = d / f".sse_target-{digest}-{os.getpid()}"
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(tmp), str(src)], check=True)
        tmp.replace(exe)
    return exe


@contextmanager
def sse_target(
    cpu: int | None,
    gap_ms: float,
    chunks: int = 16,
    ttft_ms: float = 0.0,
    close: bool = False,
    log: Path | None = None,
) -> Iterator[Target]:
    """The streaming C target on an ephemeral loopback port, pinned to ``cpu``."""
    exe = build_sse_target()
    cmd = [
        *realtime_prefix(),
        str(exe),
        "--port",
        "0",
        "--chunks",
        str(chunks),
        "--gap-ms",
        str(gap_ms),
    ]
    cmd += ["--ttft-ms", str(ttft_ms)] + (["--close"] if close else [])
    cmd += ["--log", str(log)] if log else []
    proc = subprocess.Popen(pinned(cmd, cpu), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening "):
            raise RuntimeError(f"sse_target did not start: {line!r}")
        yield Target(f"http://{line.split()[1]}", proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def nginx_target(cpu: int | None, workdir: Path) -> Iterator[Target]:
    """The canned nginx target (``targets/nginx_canned.conf.in``: one fixed JSON body under
    /json/, one fixed 16-chunk stream as a single body under /sse/) on a free loopback
    port, one worker process pinned to ``cpu``."""
    if not shutil.which("nginx"):
        raise RuntimeError("nginx not installed: apt-get install -y nginx-light")
    conf_in = (TARGETS / "nginx_canned.conf.in").read_text()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    for _attempt in range(5):
        port = free_port()
        conf = workdir / "nginx.conf"
        conf.write_text(conf_in.replace("PORT", str(port)))
        r = subprocess.run(
            pinned(["nginx", "-c", str(conf), "-p", str(workdir)], cpu),
            capture_output=True,
            text=True,
        )
        if r.returncode == 0:
            break
        if "Address already in use" not in r.stderr:
            raise RuntimeError(f"nginx did not start: {r.stderr.strip()}")
    else:
        raise RuntimeError("nginx: no free port after 5 attempts")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                http_json(f"{base}/json/v1/models", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        pid = int((workdir / "nginx.pid").read_text())
        yield Target(base, pid)
    finally:
        pidfile = workdir / "nginx.pid"
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
