"""`loadkit run` with no scenario: the built-in scenario on the embedded server, end to end,
as a newcomer runs it (shortened with --duration)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# Long enough for every free-tier probe to act: free-1's burst of 70 starts at 2 s and is
# all sent by 4.7 s even on a loaded 2-core machine.
DURATION_S = "8"


# Locust is the default engine, so its run is the newcomer's: with the charts and the
# report. The asyncio run is analysed without them (--no-charts: seconds of a shared
# machine; test_token_e2e reads an asyncio run's report).
@pytest.mark.parametrize(("engine", "charts"), [("locust", True), ("async", False)])
def test_default_run_end_to_end(tmp_path, engine, charts):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadkit",
            "run",
            "--duration",
            DURATION_S,
            "--engine",
            engine,
            "--out",
            str(out),
            *(() if charts else ("--no-charts",)),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    # progress was visible while it ran, then the verdict table (and the report's path)
    assert "done" in proc.stderr and "429" in proc.stderr
    assert "VERDICT" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] in ("pass", "inconclusive")
    kinds = {(e["key"], e["kind"]): e for e in summary["limits"]}
    # the built-in scenario provokes the free tier's limits within seconds
    assert kinds[("free-1", "requests")]["enforced"] in ("held", "possible")
    assert kinds[("free-1", "requests")]["offered"]["requests"] > 60
    assert kinds[("free-2", "concurrency")]["offered"]["max_concurrent"] > 3
    assert {"pro-1", "pro-2"} <= {k for k, _ in kinds}
    charted = ("ttft_cdf.png", "arrival_per_key.png", "inflight_per_key.png")
    if charts:
        assert "report" in proc.stdout
        assert (out / "report.html").stat().st_size > 10_000
        for chart in charted:
            assert (out / chart).exists()
    else:
        assert not (out / "report.html").exists()
        assert not any((out / chart).exists() for chart in charted)
