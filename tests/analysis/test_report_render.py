"""report.html rendered by headless Chromium (skipped when chromium is not installed)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from loadkit.analysis.summary import analyze_run
from tests.analysis.synthetic import Limiter, Timing, even_sends, run_meta, simulate_key, write_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH")
def test_report_renders_in_headless_chromium(tmp_path):
    lim = Limiter("fixed_window", requests=20, window_s=10.0, concurrency=4)
    kr = simulate_key(
        "key-a",
        "free",
        lim,
        np.concatenate([even_sends(0.3, 30.0), np.linspace(29, 31, 40)]),
        Timing(),
    )
    run = write_run(tmp_path / "run", run_meta({"free": lim}, [("key-a", "free")]), [kr])
    analyze_run(run, charts=True)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            (run / "report.html").as_uri(),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # a blank page compresses to a few KB
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] >= 1900 and img.shape[1] >= 1200
    assert float(np.std(img[..., :3])) > 0.05  # not a uniform page
