"""`loadkit run` with no scenario: the built-in scenario on the embedded server, end to end,
as a newcomer runs it (shortened with --duration)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("engine", ["locust", "async"])
def test_default_run_end_to_end(tmp_path, engine):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadkit",
            "run",
            "--duration",
            "12",
            "--engine",
            engine,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    # progress was visible while it ran, then the verdict table and the report's path
    assert "done" in proc.stderr and "429" in proc.stderr
    assert "VERDICT" in proc.stdout and "report" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] in ("pass", "inconclusive")
    kinds = {(e["key"], e["kind"]): e for e in summary["limits"]}
    # the built-in scenario provokes the free tier's limits within seconds
    assert kinds[("free-1", "requests")]["enforced"] in ("held", "possible")
    assert kinds[("free-1", "requests")]["offered"]["requests"] > 60
    assert kinds[("free-2", "concurrency")]["offered"]["max_concurrent"] > 3
    assert {"pro-1", "pro-2"} <= {k for k, _ in kinds}
    assert (out / "report.html").stat().st_size > 10_000
    for chart in ("ttft_cdf.png", "arrival_per_key.png", "inflight_per_key.png"):
        assert (out / chart).exists()
