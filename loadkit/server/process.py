"""Start the reference server as a subprocess (``python -m loadkit serve --port 0``),
optionally pinned to one CPU, and wait for its ready file. Keys stay in a private temp
directory; ``stop()`` sends SIGTERM, waits, then kills, and keeps what the server wrote
to stdout and stderr (``proc.stdout``, ``proc.stderr``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


class ServerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], workdir: Path, ready: dict[str, Any]):
        self.proc = proc
        self.workdir = workdir
        self.ready = ready
        self.base_url: str = ready["base_url"]
        self.api: str = ready.get("api", "seed")
        self.port: int = ready["port"]
        self.stdout = b""  # filled by stop()
        self.stderr = b""
        doc = json.loads(Path(ready["keys_file"]).read_text())
        self.admin_key: str = doc["admin"]["key"]
        self.admin_label: str = doc["admin"]["label"]
        self.keys: list[dict[str, str]] = doc["keys"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def key(self, label: str) -> str:
        for k in self.keys:
            if k["label"] == label:
                return k["key"]
        if label == self.admin_label:
            return self.admin_key
        raise KeyError(label)

    def labels(self, tier: str | None = None) -> list[str]:
        return [k["label"] for k in self.keys if tier is None or k["tier"] == tier]

    @property
    def api_root(self) -> str:
        """What an OpenAI client's ``base_url`` takes (``…/api/v1/ai`` or ``…/v1``)."""
        from loadkit.server.app import api_root, base_path

        return self.base_url[: -len(base_path(self.api))] + api_root(self.api)

    def stats(self) -> dict[str, Any]:
        import urllib.request

        req = urllib.request.Request(
            self.api_root + "/admin/stats",
            headers={"Authorization": f"Bearer {self.admin_key}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            doc: dict[str, Any] = json.loads(r.read())
            return doc

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for name in ("stdout", "stderr"):
            f = self.workdir / f"{name}.txt"
            if f.exists():
                setattr(self, name, f.read_bytes())
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server_process(
    config_path: str | Path | None = None,
    truth_path: str | Path | None = None,
    config_dict: dict[str, Any] | None = None,
    cpu: int | None = None,
    timeout_s: float = 20.0,
    extra_args: list[str] | None = None,
    api: str | None = None,
) -> ServerProcess:
    """Run ``python -m loadkit serve`` on an ephemeral port and wait until it listens.
    ``config_dict`` is written as JSON next to the keys (TOML-shaped dict, same schema);
    ``api`` ("seed" or "openai") overrides the config's path layout."""
    if config_path is not None and config_dict is not None:
        raise ValueError("give config_path or config_dict, not both")
    workdir = Path(tempfile.mkdtemp(prefix="loadkit-server-"))
    os.chmod(workdir, 0o700)
    if config_dict is not None:
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps(config_dict))
    ready_file = workdir / "ready.json"
    cmd = [
        sys.executable, "-m", "loadkit", "serve", "--host", "127.0.0.1", "--port", "0",
        "--ready-file", str(ready_file), "--keys-file", str(workdir / "keys.json"), "--quiet",
        # Ends with this process however it ends, and then removes its keys.
        "--parent-pid", str(os.getpid()), "--cleanup-dir", str(workdir),
    ]  # fmt: skip
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    if truth_path is not None:
        cmd += ["--truth", str(truth_path)]
    if api is not None:
        cmd += ["--api", api]
    cmd += extra_args or []
    stderr_path = workdir / "stderr.txt"
    with open(stderr_path, "wb") as err, open(workdir / "stdout.txt", "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
    if cpu is not None:
        try:
            os.sched_setaffinity(proc.pid, {cpu})
        except OSError:
            proc.kill()
            proc.wait()
            shutil.rmtree(workdir, ignore_errors=True)
            raise
    deadline = time.monotonic() + timeout_s
    while True:
        if ready_file.exists():
            try:
                ready = json.loads(ready_file.read_text())
                return ServerProcess(proc, workdir, ready)
            except (ValueError, OSError):
                pass  # torn read is impossible (atomic rename) but stay safe
        code = proc.poll()
        if code is not None or time.monotonic() > deadline:
            if code is None:
                proc.kill()
                proc.wait()
            text = stderr_path.read_text(errors="replace")[-4000:]
            shutil.rmtree(workdir, ignore_errors=True)
            why = f"exited with {code}" if code is not None else f"not ready in {timeout_s}s"
            raise RuntimeError(f"loadkit serve {why}; stderr:\n{text}")
        time.sleep(0.02)  # polling a file: there is nothing to await across processes
