"""The floor under ``server_capacity.py``: the CPU per token of a server that does nothing
but what every streaming server must, on this machine. K coroutines each sleep to their
next deadline (every ITL, phases spread evenly) and hand a fixed ~190-byte SSE chunk
(with its HTTP chunk framing) to the transport; no HTTP parsing, no JSON, no token
generation. A forked reader on another CPU drains the K sockets. The process is pinned
to one CPU; CPU time per token does not depend on the share of it the process got.

``--wakes sleep,pacer``: each stream a coroutine sleeping to its deadlines (one loop
timer per token), or a callback of the server's pacer (one heap and one timer for all
streams, ``loadkit.server.pacer``), as the server's token pump is.

    .venv/bin/python benchmarks/server_floor.py --ks 100,500 --loops asyncio,uvloop
    .venv/bin/python benchmarks/server_floor.py --ks 500,1500 --loops uvloop --wakes sleep,pacer
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import machine  # noqa: E402

from loadkit.server.pacer import Pacer  # noqa: E402

CHUNK = b"b9\r\n" + b"data: " + b"x" * 175 + b"\n\n\r\n"


def _reader(port: int, k: int, cpu: int | None) -> None:
    """In a child process: connect K sockets and read them until the server closes."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(k)]
    ep = select.epoll()
    by_fd = {s.fileno(): s for s in socks}
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    left = k
    while left:
        for fd, _ in ep.poll():
            if not by_fd[fd].recv(65536):
                ep.unregister(fd)
                left -= 1
    os._exit(0)


async def _serve(
    ls: socket.socket, k: int, itl_ns: int, seconds: float, wake: str
) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    ls.setblocking(False)
    transports = []
    for _ in range(k):
        s, _ = await loop.sock_accept(ls)
        t, _ = await loop.connect_accepted_socket(asyncio.Protocol, s)
        transports.append(t)
    tokens = 0

    async def stream(t: Any, i: int) -> None:  # asyncio's or uvloop's transport
        nonlocal tokens
        deadline = time.perf_counter_ns() + i * itl_ns // k
        end = time.perf_counter_ns() + int(seconds * 1e9)
        while deadline < end:
            deadline += itl_ns
            delay = deadline - time.perf_counter_ns()
            await asyncio.sleep(max(0, delay) / 1e9)
            t.write(CHUNK)
            tokens += 1

    def paced(p: Pacer, t: Any, i: int, left: list[int]) -> None:
        deadline = time.perf_counter_ns() + i * itl_ns // k
        end = time.perf_counter_ns() + int(seconds * 1e9)

        def tick() -> None:
            nonlocal deadline, tokens
            t.write(CHUNK)
            tokens += 1
            deadline += itl_ns
            if deadline < end:
                p.at(deadline, tick)
            else:
                left[0] -= 1
                if not left[0]:
                    finished.set()

        deadline += itl_ns
        p.at(deadline, tick)

    finished = asyncio.Event()
    c0 = time.process_time()
    if wake == "pacer":
        p, left = Pacer(loop), [k]
        for i, t in enumerate(transports):
            paced(p, t, i, left)
        await finished.wait()
    else:
        await asyncio.gather(*(stream(t, i) for i, t in enumerate(transports)))
    cpu = time.process_time() - c0
    for t in transports:
        t.close()
    return cpu, tokens


def one(
    k: int, loop_name: str, wake: str, itl_ms: float, seconds: float, cpus: tuple[int, int]
) -> float:
    """CPU µs per token of the bare server with ``k`` streams on ``loop_name``, woken by
    ``wake`` (``sleep`` or ``pacer``)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)
    port = ls.getsockname()[1]
    avail = os.sched_getaffinity(0)
    pid = os.fork()
    if pid == 0:
        _reader(port, k, cpus[1] if cpus[1] in avail else None)
    main = _serve(ls, k, round(itl_ms * 1e6), seconds, wake)
    runner: Callable[[Coroutine[Any, Any, tuple[float, int]]], tuple[float, int]] = asyncio.run
    if loop_name == "uvloop":
        import uvloop

        runner = uvloop.run
    try:
        cpu, tokens = runner(main)
    finally:
        ls.close()
        os.waitpid(pid, 0)
    return cpu / max(1, tokens) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ks", default="100,500")
    p.add_argument("--loops", default="asyncio,uvloop")
    p.add_argument("--wakes", default="sleep", help="sleep, pacer, or both: sleep,pacer")
    p.add_argument("--itl-ms", type=float, default=20.0)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    a = p.parse_args(argv)
    for line in machine():
        print(line)
    if a.server_cpu in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {a.server_cpu})
    print("| K streams | loop | wake-ups | CPU µs per token (each repetition) |")
    print("|---|---|---|---|")
    for k in (int(x) for x in a.ks.split(",")):
        for name in a.loops.split(","):
            for wake in a.wakes.split(","):
                runs = [
                    one(k, name, wake, a.itl_ms, a.seconds, (a.server_cpu, a.client_cpu))
                    for _ in range(a.reps)
                ]
                each = ", ".join(f"{r:.1f}" for r in runs)
                print(f"| {k} | {name} | {wake} | {each} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
