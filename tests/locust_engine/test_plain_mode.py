"""Plain Locust use, as a performance engineer runs it: `locust -f locustfiles/tier_users.py`
with keys from the environment, the web UI (with its TTFT tab) and --csv."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from loadkit.locust_engine import locustfile
from loadkit.records import iter_records
from loadkit.runmeta import read_run_meta
from loadkit.server.process import start_server_process

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_ui_shows_ttft_without_touching_locust_totals(tmp_path):
    out = tmp_path / "run"
    with start_server_process(
        config_dict={
            "tiers": {
                "free": {"requests": 1000, "window_s": 60, "concurrency": 10, "keys": 2},
                "pro": {"requests": 1000, "window_s": 60, "concurrency": 10, "keys": 1},
            }
        },
        truth_path=tmp_path / "truth.jsonl",
    ) as srv:
        port = free_port()
        env = {
            **os.environ,
            "LOADKIT_KEYS_FILE": str(srv.workdir / "keys.json"),
            "LOADKIT_OUT": str(out),
            "LOADKIT_MIX": "chat_stream=3,chat=1",
            "LOADKIT_MAX_TOKENS": "6",
            "LOADKIT_WAIT_S": "0.05",
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(locustfile()),
                "--host",
                srv.base_url,
                "--web-host",
                "127.0.0.1",
                "--web-port",
                str(port),
                "--autostart",
                "--autoquit",
                "1",
                "-u",
                "3",
                "-r",
                "3",
                "--run-time",
                "4s",
                "--csv",
                str(tmp_path / "lc"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            stats = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/stats/requests", timeout=2
                    ) as r:
                        data = json.loads(r.read())
                    ext = {e["key"]: e["data"] for e in data.get("extended_stats", [])}
                    if ext.get("ttft"):
                        stats = (data, ext["ttft"])
                        break
                except OSError:
                    pass
                time.sleep(0.3)
            html = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
            secrets = [
                k["key"] for k in json.loads((srv.workdir / "keys.json").read_text())["keys"]
            ]
            log, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert stats is not None, "the TTFT table never appeared in the web UI's stats"
    data, ttft = stats
    assert ttft[0]["name"] == "chat_stream" and ttft[0]["median"] > 0
    names = {row["name"] for row in data["stats"]}
    assert "TTFT" not in {row.get("method") for row in data["stats"]}, "no TTFT rows in totals"
    assert names <= {"chat_stream", "chat", "Aggregated"}
    assert b"extended_tabs" in html or b"TTFT" in html
    # --csv also writes the TTFT table beside Locust's own files
    csv = (tmp_path / "lc_ttft.csv").read_text().splitlines()
    assert csv[0].startswith("name,count,median") and csv[1].startswith("chat_stream,")
    # records and run metadata for `loadkit analyze`
    recs = iter_records(out)
    assert recs and {r.key for r in recs} <= {"free-1", "free-2", "pro-1"}
    assert {r.tier for r in recs} == {"free", "pro"}
    meta = read_run_meta(out)
    assert meta.tiers["free"] == {"requests": 60, "window_s": 60.0, "concurrency": 3}
    assert [w.status for w in meta.workers] == ["ok"]
    written = "".join(p.read_text() for p in out.iterdir() if p.is_file()) + log
    assert secrets and not any(secret in written for secret in secrets), "keys never written"
