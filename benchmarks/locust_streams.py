"""How many concurrent streams one Locust worker process sustains with TTFT error <= 2 ms
against the reference server's fixed profile, beside the asyncio engine in the same run.

The server runs on CPU 0, the generator (one Locust process, or the asyncio engine) on
CPU 1. Each step holds K closed-loop streams on one key for a few seconds; the first
seconds are warm-up. TTFT error = measured TTFT − the profile's TTFT.

    python benchmarks/locust_streams.py                  # K = 10 … 400, both engines
    python benchmarks/locust_streams.py --ks 50,100 --seconds 6

``--giant 8,24`` measures instead how one key's giant SSE line (8 MiB, 24 MiB) affects
another key's streams in the same Locust process: key A streams one giant line after
another, key B holds 2 streams on a fixed profile (TTFT 50 ms, ITL 20 ms) from a scripted
server in its own process, whose own timing is reported beside it.

Not a test: figures go to the README.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PY = sys.executable
TTFT_MS = 50.0
ITL_MS = 50.0
TOKENS = 16


def run(
    engine: str, k: int, seconds: float, warmup: float, server_cfg: Path, tmp: Path
) -> dict[str, float]:
    sc = tmp / f"{engine}-{k}.toml"
    sc.write_text(f"""
name = "locust-bench"
[target]
base_url = "embedded"
server_config = "{server_cfg}"
[run]
duration_s = {seconds}
warmup_s = {warmup}
drain_s = 30
[tiers.bench]
requests = 100000000
window_s = 60
concurrency = 1000000
keys = 1
[[load]]
tier = "bench"
pattern = "closed"
concurrency = {k}
model = "fixed"
max_tokens = {TOKENS}
mix = {{ chat_stream = 1 }}
""")
    out = tmp / f"out-{engine}-{k}"
    cmd = [
        PY,
        "-m",
        "loadkit",
        "run",
        str(sc),
        "--engine",
        engine,
        "--out",
        str(out),
        "--no-analyze",
        "--quiet",
    ]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "1", *cmd]
    subprocess.run(cmd, check=True)
    recs = []
    for p in out.glob("records-*.jsonl"):
        recs += [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    ok = [
        r
        for r in recs
        if r["status"] == 200
        and r["send_s"] >= warmup
        and r["first_token_s"] is not None
        and not r["transport_error"]
    ]
    ttft = np.array([(r["first_token_s"] - r["send_s"]) * 1e3 - TTFT_MS for r in ok])
    itl = np.array([d * 1e3 - ITL_MS for r in ok for d in np.diff(r["chunk_s"])])
    span = seconds - warmup
    return {
        "streams": len(ok),
        "streams_per_s": len(ok) / span if span else 0.0,
        "ttft_p50": float(np.percentile(ttft, 50)) if ttft.size else float("nan"),
        "ttft_p99": float(np.percentile(ttft, 99)) if ttft.size else float("nan"),
        "itl_p99": float(np.percentile(itl, 99)) if itl.size else float("nan"),
        "errors": sum(1 for r in recs if r["status"] != 200 or r["transport_error"]),
    }


GIANT_TTFT_S, GIANT_ITL_S = 0.05, 0.02


def serve_giant(mb: int) -> None:
    """The scripted server (tests/locust_engine/servers.py) until stdin closes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.locust_engine.servers import Profile, ScriptedServer

    with ScriptedServer(profile=Profile(GIANT_TTFT_S, GIANT_ITL_S, 5), giant_mb=mb) as srv:
        print(srv.port, flush=True)
        sys.stdin.read()


def giant(mbs: list[int], seconds: float) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from loadkit.scenario import Key
    from tests.locust_engine.helpers import by_key, run_direct, scenario
    from tests.locust_engine.servers import key_for

    print(f"command: python {' '.join(sys.argv)}")
    print("| giant line | giant streams | B streams | B TTFT err p50 / max (ms) | B ITL err max |")
    print("|---|---|---|---|---|")
    for mb in [0, *mbs]:
        srv = subprocess.Popen(
            [PY, __file__, "--serve-giant", str(max(mb, 1))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert srv.stdout is not None
            port = int(srv.stdout.readline())
            loads = [{"tier": "pro", "keys": [2], "pattern": "closed", "concurrency": 2}]
            if mb:
                loads.insert(0, {"tier": "pro", "keys": [1], "pattern": "closed", "concurrency": 1})
            sc = scenario(
                f"http://127.0.0.1:{port}/v1", ["pro"], loads, run={"duration_s": seconds}
            )
            keys = [Key("pro-1", "pro", key_for("giant")), Key("pro-2", "pro", key_for("ok"))]
            _, recs = run_direct(sc, keys, Path(tempfile.mkdtemp()) / "run")
        finally:
            srv.communicate(timeout=30)
        got = by_key(recs)
        b = got["pro-2"]
        ttft = np.array([(r.first_token_s - r.send_s - GIANT_TTFT_S) * 1e3 for r in b])
        itl = np.array([(d - GIANT_ITL_S) * 1e3 for r in b for d in np.diff(r.chunk_s)])
        print(
            f"| {f'{mb} MiB' if mb else 'none'} | {len(got.get('pro-1', []))} | {len(b)} | "
            f"{np.percentile(ttft, 50):.1f} / {ttft.max():.1f} | {itl.max():.1f} |",
            flush=True,
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="25,100,200,400,800")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--giant", metavar="MB,MB", help="one key's giant SSE line vs another key")
    ap.add_argument("--serve-giant", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_giant:
        serve_giant(a.serve_giant)
        return 0
    if a.giant:
        giant([int(x) for x in a.giant.split(",")], a.seconds)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="loadkit-locust-bench-"))
    server_cfg = tmp / "server.json"
    server_cfg.write_text(
        json.dumps(
            {
                "tiers": {
                    "bench": {
                        "requests": 100_000_000,
                        "window_s": 60,
                        "concurrency": 1_000_000,
                        "keys": 1,
                    }
                },
                "models": [
                    {
                        "id": "fixed",
                        "context_length": 8192,
                        "ttft_ms": TTFT_MS,
                        "prefill_ms_per_token": 0,
                        "ttft_jitter_ms": 0,
                        "itl_ms": ITL_MS,
                        "itl_jitter_ms": 0,
                        "decode_capacity_tps": 0,
                    }
                ],
            }
        )
    )
    os.environ.setdefault("PYTHONHASHSEED", "0")
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"profile: TTFT {TTFT_MS} ms, ITL {ITL_MS} ms, {TOKENS} tokens; server on CPU 0, "
        "generator on CPU 1"
    )
    print("| K streams | engine | streams/s | TTFT err p50 (ms) | p99 | ITL err p99 | errors |")
    print("|---|---|---|---|---|---|---|")
    best = {"locust": 0, "async": 0}
    for k in (int(x) for x in a.ks.split(",")):
        for engine in ("locust", "async"):
            r = run(engine, k, a.seconds, a.warmup, server_cfg, tmp)
            print(
                f"| {k} | {engine} | {r['streams_per_s']:.0f} | {r['ttft_p50']:.2f} | "
                f"{r['ttft_p99']:.2f} | {r['itl_p99']:.2f} | {r['errors']} |",
                flush=True,
            )
            if r["ttft_p50"] <= 2.0 and r["errors"] == 0:
                best[engine] = max(best[engine], k)
    # The median is the criterion: the reference server's own timer resolution (about 1 ms,
    # epoll rounds to whole milliseconds) already puts its p99 near 2 ms at any load.
    print(
        f"\nlargest K with TTFT error p50 <= 2 ms: Locust {best['locust']}, "
        f"asyncio engine {best['async']} (p99 in the table)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
