"""`loadkit run` with no scenario: the built-in scenario on the embedded server, end to end,
as a newcomer runs it (shortened with --duration)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DefaultRun, run_default

pytestmark = pytest.mark.slow


# Locust is the default engine, so its run is the newcomer's: with the charts and the
# report. The asyncio run is analysed without them (--no-charts: seconds of a shared
# machine; test_token_e2e reads an asyncio run's report), and shared with the history test.
@pytest.mark.parametrize("engine", ["locust", "async"])
def test_default_run_end_to_end(request, tmp_path, engine):
    if engine == "async":
        run: DefaultRun = request.getfixturevalue("default_async_run")
    else:
        run = run_default(tmp_path, engine)
    proc, out, charts = run.proc, run.out, engine == "locust"
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
    else:  # --no-charts: analysed (the table, summary.json) without charts or report
        assert not (out / "report.html").exists()
        assert not list(out.glob("*.png"))
