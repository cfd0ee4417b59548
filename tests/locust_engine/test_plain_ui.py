"""Plain Locust use as a performance engineer sees it: the web UI's tables by tier and by
key, a free user refused with 429 that waits out Retry-After instead of spinning, a stream
open when the run stops (recorded once, as stopped), the records folder said at start and
end, and Ctrl-C that stops cleanly with every record written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from loadkit.locust_engine import locustfile
from loadkit.records import iter_records
from loadkit.runmeta import read_run_meta
from tests.locust_engine.servers import ScriptedServer, key_for
from tests.locust_engine.test_plain_mode import clean_env, free_port, listener

pytestmark = pytest.mark.slow

RETRY_AFTER_S = 1.0
RUN_S = 3.0


def request_ids(srv: ScriptedServer) -> list[str]:
    return [s.headers.get("x-loadkit-request-id", "") for s in srv.seen]


def assert_one_record_each(recs: list, seen: list[str]) -> None:
    """Every request the server saw has exactly one record; a record the server did not
    see is a request the stop cancelled on its way out."""
    ids = Counter(r.request_id for r in recs)
    assert max(ids.values()) == 1 and len(seen) == len(set(seen))
    assert set(seen) <= set(ids), set(seen) - set(ids)
    unseen = [r for r in recs if r.request_id not in set(seen)]
    assert all(r.transport_error == "cancelled" for r in unseen), unseen


def stats(port: int) -> dict[str, list[dict[str, object]]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/requests", timeout=2) as r:
            data = json.loads(r.read())
    except OSError:
        return None
    return {e["key"]: e["data"] for e in data.get("extended_stats", [])}


def test_web_ui_tables_by_tier_and_key_a_limited_user_waits_and_a_stop_records_once(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    users = [
        {"user_class_name": "FreeTierUser", "fixed_count": 1},
        {"user_class_name": "PaidTierUser", "fixed_count": 2},
    ]
    # free-1 is refused (429, Retry-After 1 s); pro-1 streams; pro-2's one stream lasts
    # past the stop, so it is open when Locust kills its user.
    with ScriptedServer(slow_s=30.0, retry_after=str(int(RETRY_AFTER_S))) as srv:
        port = free_port()
        env = clean_env(
            LOADKIT_FREE_KEYS=key_for("429"),
            LOADKIT_PRO_KEYS=f"{key_for('ok')},{key_for('slow')}",
            LOADKIT_OUT=str(out),
            LOADKIT_MIX="chat_stream=1",
            LOADKIT_WAIT_S="0",  # Locust's default: only the backoff keeps free-1 from spinning
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(locustfile()),
                "--host",
                srv.base,
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
                f"{RUN_S:g}s",
                "--config-users",
                json.dumps(users),
            ],  # fmt: skip
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            listener(proc.pid, port)
            during = None
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                ext = stats(port)
                tiers = {r["tier"]: r for r in (ext or {}).get("tiers", [])}
                if tiers.get("free", {}).get("limited") and tiers.get("pro", {}).get("ok"):
                    during = ext
                    break
                time.sleep(0.2)
            log, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        seen = request_ids(srv)
    assert during is not None, "the tables by tier and key never showed the run: " + log[-2000:]
    tiers = {r["tier"]: r for r in during["tiers"]}
    assert tiers["free"]["keys"] == 1 and tiers["free"]["ok"] == 0
    assert isinstance(tiers["pro"]["ttft_p50"], float) and tiers["pro"]["ttft_p50"] > 0
    keys = {r["key"]: r for r in during["keys"]}
    assert keys["free-1"]["status"].startswith("limited (429")
    assert keys["free-1"]["status"].endswith(f"waits {RETRY_AFTER_S:.1f} s")
    assert keys["pro-1"]["status"] == "ok"
    assert keys["pro-2"]["status"] == "no answer yet"  # its stream is still open

    recs = iter_records(out)
    # Every request the server saw has exactly one record, the open stream included.
    assert_one_record_each(recs, seen)
    by_key: dict[str, list] = {}
    for r in sorted(recs, key=lambda r: r.send_s):
        by_key.setdefault(r.key, []).append(r)
    (open_stream,) = by_key["pro-2"]
    assert open_stream.transport_error == "cancelled"
    # free-1 waited Retry-After after each 429: one request per second at most, never a spin
    limited = [r for r in by_key["free-1"] if r.transport_error != "cancelled"]
    assert all(r.status == 429 and r.pause_s == RETRY_AFTER_S for r in limited)
    assert 1 <= len(limited) <= RUN_S / RETRY_AFTER_S + 1
    gaps = [b.send_s - a.send_s for a, b in zip(limited, limited[1:], strict=False)]
    assert all(g >= RETRY_AFTER_S for g in gaps), gaps
    # the records folder is said at the start and, with the count, at the end
    assert f"records and run.json go to {out}" in log
    assert f"{len(recs)} records in {out} (analyse them with: loadkit analyze {out})" in log
    assert "Traceback" not in log


def test_ctrl_c_in_plain_mode_stops_cleanly_with_every_record(tmp_path: Path) -> None:
    out = tmp_path / "run"
    users = [
        {"user_class_name": "FreeTierUser", "fixed_count": 1},
        {"user_class_name": "PaidTierUser", "fixed_count": 1},
    ]
    # pro-1's streams last 2 s: one is open at the interrupt and finishes in the grace
    with ScriptedServer(slow_s=2.0) as srv:
        env = clean_env(
            LOADKIT_FREE_KEYS=key_for("ok"),
            LOADKIT_PRO_KEYS=key_for("slow"),
            LOADKIT_OUT=str(out),
            LOADKIT_MIX="chat_stream=1",
            LOADKIT_WAIT_S="0.05",
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(locustfile()),
                "--headless",
                "--host",
                srv.base,
                "-u",
                "2",
                "-r",
                "2",
                "--run-time",
                "60s",
                "--config-users",
                json.dumps(users),
            ],  # fmt: skip
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and proc.poll() is None:
                # the master has written records: the run is under way
                if sum(1 for p in out.glob("records-*.jsonl") for _ in p.open()) >= 5:
                    break
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            log, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        seen = request_ids(srv)
    assert proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]
    recs = iter_records(out)
    assert_one_record_each(recs, seen)
    assert {r.key for r in recs} == {"free-1", "pro-1"}
    meta = read_run_meta(out)
    assert [(w.status, w.sent, w.records) for w in meta.workers] == [("ok", len(recs), len(recs))]
    assert f"{len(recs)} records in {out}" in log


def test_run_time_counts_from_the_start_however_slow_the_start_up(tmp_path: Path) -> None:
    """gevent's loop reads the clock once per turn: a start-up that keeps it from turning
    (imports on a busy machine; here a 3 s sleep) must not come off --run-time."""
    out = tmp_path / "run"
    slow = Path(__file__).with_name("slow_start.py")
    users = [{"user_class_name": "FreeTierUser", "fixed_count": 1}]
    with ScriptedServer() as srv:
        env = clean_env(
            LOADKIT_FREE_KEYS=key_for("ok"),
            LOADKIT_OUT=str(out),
            LOADKIT_MIX="chat=1",
            LOADKIT_WAIT_S="0.2",
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                f"{locustfile()},{slow}",
                "--headless",
                "--host",
                srv.base,
                "-u",
                "1",
                "-r",
                "1",
                "--run-time",
                "4s",
                "--config-users",
                json.dumps(users),
            ],  # fmt: skip
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The timer can fire late on a busy machine, never early: 4 s from t=0 (it read 0.1 s
    # before the fix).
    duration = read_run_meta(out).duration_s
    assert duration is not None and duration >= 3.9, duration
    assert max(r.send_s for r in iter_records(out)) >= 3.0
