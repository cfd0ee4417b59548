"""Plain Locust use, as a performance engineer runs it: `locust -f $(loadkit locustfile)`
with keys from the environment, the web UI (on loopback unless a login protects it, with
its TTFT tab) and --csv."""

from __future__ import annotations

import csv
import http.cookiejar
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter

import psutil
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


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADKIT_")}
    return {**env, **extra}


def listener(pid: int, port: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in psutil.Process(pid).net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port:
                return c.laddr.ip
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


def test_web_ui_run_on_loopback_with_ttft_and_exact_records(tmp_path):
    out = tmp_path / "run"
    users = [
        {"user_class_name": "FreeTierUser", "fixed_count": 2},
        {"user_class_name": "PaidTierUser", "fixed_count": 1},
    ]
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
        env = clean_env(
            LOADKIT_KEYS_FILE=str(srv.workdir / "keys.json"),
            LOADKIT_OUT=str(out),
            LOADKIT_MIX="chat_stream=3,chat=1",
            LOADKIT_MAX_TOKENS="6",
            LOADKIT_WAIT_S="0.05",
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(locustfile()),
                "--host",
                srv.base_url,
                "--web-port",
                str(port),  # no --web-host
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
                "--config-users",
                json.dumps(users),
            ],  # fmt: skip
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            bound = listener(proc.pid, port)
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
    assert bound == "127.0.0.1", "the web UI listens on loopback unless asked otherwise"
    assert stats is not None, "the TTFT table never appeared in the web UI's stats"
    data, ttft = stats
    assert ttft[0]["name"] == "chat_stream" and ttft[0]["median"] > 0
    names = {row["name"] for row in data["stats"]}
    assert "TTFT" not in {row.get("method") for row in data["stats"]}, "no TTFT rows in totals"
    assert names <= {"chat_stream", "chat", "Aggregated"}
    assert b"extended_tabs" in html or b"TTFT" in html
    # --csv also writes the TTFT table beside Locust's own files
    ttft_csv = (tmp_path / "lc_ttft.csv").read_text().splitlines()
    assert ttft_csv[0].startswith("name,count,median") and ttft_csv[1].startswith("chat_stream,")

    # What ran: 2 free users and 1 paid user took the keys round-robin, one record per
    # request Locust counted, every request the server saw among them.
    recs = iter_records(out)
    with open(tmp_path / "lc_stats.csv", newline="") as fh:
        rows = {r["Name"]: r for r in csv.DictReader(fh)}
    assert len(recs) == int(rows["Aggregated"]["Request Count"])
    by_kind = Counter("chat_stream" if r.stream else "chat" for r in recs)
    assert by_kind == {k: int(rows[k]["Request Count"]) for k in ("chat_stream", "chat")}
    assert {(r.key, r.tier) for r in recs} == {
        ("free-1", "free"),
        ("free-2", "free"),
        ("pro-1", "pro"),
    }
    assert {r.endpoint for r in recs} == {"chat"}
    seen = {json.loads(x)["request_id"] for x in (tmp_path / "truth.jsonl").read_text().split()}
    assert seen <= {r.request_id for r in recs}
    # Locust's stop at --run-time ends open requests: those are recorded as cancelled, the
    # rest succeeded (the limits are far above this load)
    assert all(r.status == 200 or r.transport_error == "cancelled" for r in recs)
    assert all(r.request_id in seen for r in recs if r.status == 200)
    # records and run metadata for `loadkit analyze`
    meta = read_run_meta(out)
    assert meta.tiers["free"] == {"requests": 60, "window_s": 60.0, "concurrency": 3}
    assert [(w.status, w.sent, w.records) for w in meta.workers] == [("ok", len(recs), len(recs))]
    written = "".join(p.read_text() for p in out.iterdir() if p.is_file()) + log
    assert secrets and not any(secret in written for secret in secrets), "keys never written"


def start_ui(tmp_path, *args: str, **env: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(locustfile()),
            "--host",
            "http://127.0.0.1:9/api/v1",
            "--web-port",
            str(port),
            *args,
        ],  # fmt: skip
        env=clean_env(LOADKIT_FREE_KEYS="sk-test-free", LOADKIT_OUT=str(tmp_path / "run"), **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, port


def test_web_ui_beyond_loopback_without_login_refuses_to_start(tmp_path):
    proc, port = start_ui(tmp_path, "--web-host", "0.0.0.0")
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, log[-2000:]
    assert "refusing to start the Locust web UI on 0.0.0.0" in log
    assert "--web-host 127.0.0.1" in log and "--web-login" in log and "LOADKIT_WEB_PASSWORD" in log
    # and a login without a password is no login ("*" is every interface, as "")
    proc, port = start_ui(tmp_path, "--web-host", "*", "--web-login")
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--web-login is set but no password is" in log, log[-2000:]
    assert not (tmp_path / "run").exists(), "refused before anything was written"


def test_web_login_protects_the_ui(tmp_path):
    proc, port = start_ui(
        tmp_path, "--web-host", "127.0.0.1", "--web-login", LOADKIT_WEB_PASSWORD="pw-123"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        listener(proc.pid, port)
        anonymous = urllib.request.build_opener()
        with anonymous.open(f"{base}/stats/requests", timeout=5) as r:
            assert urllib.parse.urlparse(r.url).path == "/login"  # redirected, no stats
        with anonymous.open(f"{base}/loadkit/ttft.csv", timeout=5) as r:
            assert urllib.parse.urlparse(r.url).path == "/login"

        def login(password: str) -> urllib.request.OpenerDirector:
            jar = urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
            opener = urllib.request.build_opener(jar)
            form = urllib.parse.urlencode({"username": "loadkit", "password": password})
            with opener.open(f"{base}/loadkit/login", form.encode(), timeout=5) as r:
                r.read()
            return opener

        with login("wrong").open(f"{base}/stats/requests", timeout=5) as r:
            assert urllib.parse.urlparse(r.url).path == "/login"
        with login("pw-123").open(f"{base}/stats/requests", timeout=5) as r:
            assert urllib.parse.urlparse(r.url).path == "/stats/requests"
            assert "stats" in json.loads(r.read())
    finally:
        proc.terminate()
        log, _ = proc.communicate(timeout=30)
    assert "pw-123" not in log


def test_plain_mode_options_address_the_target_and_users_back_off(tmp_path):
    """`locust -f $(loadkit locustfile)` by hand against a gateway with its own layout and
    auth header: options (and their LOADKIT_ spellings) say how; a user whose key gets
    404 for everything backs off instead of spinning."""
    from tests.locust_engine.servers import ScriptedServer, key_for

    out = tmp_path / "run"
    free, pro = key_for("404"), key_for("ok")
    users = [
        {"user_class_name": "FreeTierUser", "fixed_count": 1},
        {"user_class_name": "PaidTierUser", "fixed_count": 1},
    ]
    with ScriptedServer() as srv:
        env = clean_env(
            LOADKIT_FREE_KEYS=free,
            LOADKIT_PRO_KEYS=pro,
            LOADKIT_OUT=str(out),
            LOADKIT_MIX="chat_stream=1,models=1",
            LOADKIT_API="openai",
            LOADKIT_HEADERS='{"X-Org": "${TEST_ORG_ID}"}',
            TEST_ORG_ID="org-7",
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(locustfile()),
                "--headless",
                "--host",
                srv.base + "/gw",
                "-u",
                "2",
                "-r",
                "2",
                "--run-time",
                "4s",
                "--config-users",
                json.dumps(users),
                "--exit-code-on-error",
                "0",
                "--loadkit-auth-header",
                "x-api-key",
                "--loadkit-auth-scheme",
                "none",
                "--loadkit-paths",
                '{"chat": "/deploy/chat"}',
            ],  # fmt: skip
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        seen = list(srv.seen)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {s.path for s in seen} == {"/gw/deploy/chat", "/gw/models"}
    for s in seen:
        assert s.headers["x-api-key"] in (free, pro) and "authorization" not in s.headers
        assert s.headers["x-org"] == "org-7"
    recs = iter_records(out)
    paid = [r for r in recs if r.key == "pro-1"]
    assert len(paid) >= 5 and all(r.status == 200 for r in paid if r.transport_error is None)
    # the free user, 404 after 404 over 4 s with LOADKIT_WAIT_S 0: paused 1 s, then 2 s
    failed = sorted((r for r in recs if r.key == "free-1"), key=lambda r: r.send_s)
    assert 2 <= len(failed) <= 4 and sum(s.headers["x-api-key"] == free for s in seen) <= 4
    assert [r.pause_s for r in failed[:2]] == [1.0, 2.0]
    assert read_run_meta(out).target_api["auth"] == "x-api-key: <key>"


def test_plain_mode_options_that_cannot_address_a_target_are_refused(tmp_path):
    proc, _ = start_ui(tmp_path, "--headless", "--loadkit-api", "oai")
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, log[-2000:]
    assert "--loadkit-api: expected 'auto', 'seed' or 'openai', got 'oai'" in log
