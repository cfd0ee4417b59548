"""``loadkit serve`` as a process: ready file, keys file (0600), a banner that names
labels and tiers but never a key, exit 0 on SIGTERM, exit 2 naming the bad config field."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadkit.server.process import start_server_process
from loadkit.server.truth import read_truth
from tests.server.conftest import Raw


def test_start_server_process_with_config_dict(tmp_path: Path) -> None:
    truth = tmp_path / "truth.jsonl"
    cfg = {"tiers": {"free": {"requests": 2, "window_s": 5, "concurrency": 1, "keys": 1}}}
    srv = start_server_process(config_dict=cfg, truth_path=truth)
    try:
        assert srv.base_url.startswith("http://127.0.0.1:") and srv.base_url.endswith("/api/v1")
        assert [k["label"] for k in srv.keys] == ["free-1"]
        raw = Raw(srv.base_url)
        body = {"model": "loadkit-instant", "prompt": "x"}
        codes = [raw.request("POST", "/ai/completions", body, srv.key("free-1"))[0]
                 for _ in range(3)]  # fmt: skip
        assert codes == [200, 200, 429]
        assert srv.stats()["admitted"] == 3  # two completions and this stats request
        keys_file = Path(srv.ready["keys_file"])
        assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
        assert srv.ready["pid"] == srv.pid
    finally:
        assert srv.stop() == 0
    recs = read_truth(truth)
    assert [r["decision"] for r in recs][:3] == ["admitted", "admitted", "rate_limited"]
    assert not Path(srv.workdir).exists()


def test_banner_names_labels_never_keys(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    keys_file = tmp_path / "keys.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadkit", "serve", "--port", "0", "--ready-file", str(ready),
         "--keys-file", str(keys_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        info = json.loads(ready.read_text())
        assert set(info) == {"host", "port", "base_url", "api", "keys_file", "pid", "loop"}
        assert info["api"] == "seed"
        assert info["keys_file"] == str(keys_file.resolve())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    text = out.decode() + err.decode()
    doc = json.loads(keys_file.read_text())
    assert doc["admin"]["label"] == "admin"
    assert [k["label"] for k in doc["keys"]] == [
        *(f"free-{i}" for i in range(1, 6)),
        "pro-1",
        "pro-2",
        "enterprise-1",
    ]
    for k in [doc["admin"], *doc["keys"]]:
        assert k["key"] not in text
    assert "free-1" in text and "60 requests / 60s, 3 concurrent" in text
    assert str(keys_file.resolve()) in text and info["base_url"] in text
    assert stat.S_IMODE(os.stat(keys_file).st_mode) == 0o600


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[tiers.free]\nrequests = -3\n")
    r = subprocess.run([sys.executable, "-m", "loadkit", "serve", "--config", str(p)],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2
    assert "tiers.free.requests" in r.stderr and "-3" in r.stderr
    with pytest.raises(RuntimeError, match="limiter.mode"):
        start_server_process(config_dict={"limiter": {"mode": "nope"}})


def test_serve_binds_loopback_unless_asked() -> None:
    """``loadkit serve`` listens on 127.0.0.1 by default, and no command in the README or
    the docs binds it wider."""
    import re
    import shlex

    from loadkit.cli import _build_parser

    parser = _build_parser()
    assert parser.parse_args(["serve"]).host == "127.0.0.1"
    root = Path(__file__).resolve().parents[2]
    seen = 0
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", doc.read_text(), re.S):
            for line in block.splitlines():
                line = line.split(" #", 1)[0].strip().rstrip("&").strip()
                if line.startswith("loadkit serve") and "[" not in line:
                    seen += 1
                    args = parser.parse_args(shlex.split(line)[1:])
                    assert args.host in ("127.0.0.1", "localhost", "::1"), (doc.name, line)
    assert seen >= 1


def test_a_server_started_for_a_run_ends_when_the_run_is_killed(tmp_path):
    """SIGKILL of the process that started the server (e.g. `loadkit run`) ends the server
    within a second or so and removes its keys."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    info = tmp_path / "info.json"
    code = (
        "import json, sys, time\n"
        "from loadkit.server.process import start_server_process\n"
        "srv = start_server_process()\n"
        f"open({str(info)!r}, 'w').write(json.dumps({{'pid': srv.pid, 'dir': str(srv.workdir)}}))\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while not info.exists() or not info.read_text():
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        d = json.loads(info.read_text())
        assert (tmp_path / d["dir"]).exists() and os.path.exists(
            os.path.join(d["dir"], "keys.json")
        )
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while _alive(d["pid"]):
            assert time.monotonic() < deadline, "the server outlived the process that started it"
            time.sleep(0.05)
        assert not os.path.exists(d["dir"]), "the keys folder outlived the run"
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped by init) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _uvloop_installed() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_serve_streams_on_either_event_loop(loop: str) -> None:
    if loop == "uvloop" and not _uvloop_installed():
        pytest.skip("uvloop is not installed (pip install 'loadkit[uvloop]')")
    cfg = {"models": [{"id": "timed", "itl_ms": 5}]}
    with start_server_process(config_dict=cfg, extra_args=["--loop", loop]) as srv:
        assert srv.ready["loop"] == loop
        raw = Raw(srv.base_url)
        body = {"model": "timed", "prompt": "x", "max_tokens": 6, "stream": True}
        status, _, data = raw.request("POST", "/ai/completions", body, srv.key("free-1"))
        assert status == 200 and data.endswith(b"data: [DONE]\n\n")
        assert data.count(b"data: {") == 6
        assert srv.stats()["lateness"]["count"] == 6


def test_serve_auto_loop_is_uvloop_when_installed() -> None:
    with start_server_process() as srv:
        assert srv.ready["loop"] == ("uvloop" if _uvloop_installed() else "asyncio")


def test_loop_uvloop_without_uvloop_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from loadkit.server.main import loop_factory

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now fails
    assert loop_factory("auto") == ("asyncio", None)
    assert loop_factory("asyncio") == ("asyncio", None)
    with pytest.raises(ImportError):
        loop_factory("uvloop")
