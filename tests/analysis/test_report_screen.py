"""The report's first screen in headless Chromium: at 1280x800 it holds the verdict and the
limits table (geometry from the browser's own layout, colours from its screenshot).

Skipped, with the reason, only when no Chromium binary is on PATH; .ci/run installs
Debian's ``chromium`` so CI runs it."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadkit.analysis.report import write_report
from loadkit.analysis.summary import analyze_run, summarize_run
from tests.analysis.synthetic import Limiter, Timing, even_sends, run_meta, simulate_key, write_run

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary on PATH (Debian package 'chromium'; .ci/run installs it)",
)

WIDTH, HEIGHT = 1280, 800
GREEN, RED = (0x1A, 0x7F, 0x37), (0xCF, 0x22, 0x2E)  # the pass/held and fail/violated badges

# Runs in the page after layout: the boxes (in page coordinates) and texts of the opening
# screen's parts, written into the title, which --dump-dom then prints.
PROBE = """<script>
(function () {
  function box(id) {
    var e = document.getElementById(id);
    if (!e) return null;
    var r = e.getBoundingClientRect();
    return {top: r.top + scrollY, bottom: r.bottom + scrollY, left: r.left, right: r.right,
            text: e.innerText};
  }
  var rows = Array.prototype.slice.call(
    document.querySelectorAll('#limits-at-a-glance tr')).slice(2).map(function (tr) {
      return Array.prototype.map.call(tr.cells, function (c) { return c.innerText.trim(); });
    });
  document.title = JSON.stringify({
    width: innerWidth, verdict: box('verdict'), limits: box('limits-at-a-glance'),
    figures: box('figures-at-a-glance'), rows: rows});
})();
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
            f"--window-size={WIDTH},{HEIGHT}",
            *args,
        ],
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )


def first_screen(report: Path, tmp: Path) -> tuple[dict[str, Any], np.ndarray]:
    """One Chromium run over the report at 1280x800: the opening screen's geometry as the
    browser lays it out (from the probe) and the first screen as it paints it (RGB array)."""
    import matplotlib.image as mpimg

    probed, shot = tmp / "probed.html", tmp / "first-screen.png"
    page = report.read_text(encoding="utf-8")
    assert page.count("</body>") == 1
    probed.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium("--dump-dom", f"--screenshot={shot}", probed.as_uri()).stdout
    m = re.search(r"<title>(.*?)</title>", dom, re.S)
    assert m, "the probe wrote no title"
    geom: dict[str, Any] = json.loads(html.unescape(m.group(1)))
    rgb = np.round(mpimg.imread(shot)[..., :3] * 255).astype(np.int16)
    assert rgb.shape[:2] == (HEIGHT, WIDTH)
    return geom, rgb


def pixels_of(rgb: np.ndarray, colour: tuple[int, int, int], box: dict[str, float]) -> int:
    """How many pixels inside ``box`` are ``colour`` (give or take anti-aliasing)."""
    top, bottom = max(0, int(box["top"])), min(rgb.shape[0], int(np.ceil(box["bottom"])))
    left, right = max(0, int(box["left"])), min(rgb.shape[1], int(np.ceil(box["right"])))
    region = rgb[top:bottom, left:right]
    return int((np.abs(region - np.array(colour)).max(axis=-1) <= 6).sum())


def _run(
    tmp: Path,
    keys: list[tuple[str, str, Limiter]],
    promises: dict[str, Limiter],
    charts: bool,
) -> Path:
    runs = [
        simulate_key(
            label,
            tier,
            lim,
            np.concatenate([even_sends(0.25, 40.0), np.linspace(20, 21, 30)]),
            Timing(),
        )
        for label, tier, lim in keys
    ]
    meta = run_meta(promises, [(label, tier) for label, tier, _ in keys])
    run = write_run(tmp / "run", meta, runs)
    if charts:
        analyze_run(run, charts=True)
    else:  # the page without its charts: the first screen is the same, the test quicker
        write_report(summarize_run(run, charts=False), run)
    return run / "report.html"


FREE = Limiter("sliding_log", requests=30, window_s=10.0, concurrency=4)
PRO = Limiter("sliding_log", requests=100, window_s=10.0, concurrency=8)


def test_first_screen_holds_the_verdict_and_the_limits_table_of_every_key(tmp_path):
    keys = [(f"free-{i}", "free", FREE) for i in range(1, 5)]
    keys += [(f"pro-{i}", "pro", PRO) for i in range(1, 5)]
    # with its charts, as a run writes it: the page below the first screen is long
    report = _run(tmp_path, keys, {"free": FREE, "pro": PRO}, charts=True)
    summary = json.loads((report.parent / "summary.json").read_text())
    assert summary["verdict"] == "pass"

    geom, rgb = first_screen(report, tmp_path)
    assert geom["width"] == WIDTH
    verdict, limits, figures = geom["verdict"], geom["limits"], geom["figures"]
    assert verdict["text"].startswith("Verdict: PASS")
    assert 0 <= verdict["top"] < verdict["bottom"] <= limits["top"]
    assert limits["bottom"] <= HEIGHT, f"limits table ends at {limits['bottom']} px"
    assert figures["bottom"] <= HEIGHT, f"key figures end at {figures['bottom']} px"
    assert limits["right"] <= WIDTH
    # one row per key, in the summary's order, each with its tier and its badges' words
    assert [r[:2] for r in geom["rows"]] == [[k, t] for k, t, _ in keys]
    by_key = {(x["key"], x["kind"]): x for x in summary["limits"]}
    for row in geom["rows"]:
        req, conc = by_key[(row[0], "requests")], by_key[(row[0], "concurrency")]
        assert row[3:5] == [req["enforced"], req["honoured"]]
        assert row[7:9] == [conc["enforced"], conc["honoured"]]
    assert "TTFT" in figures["text"] and "req/s" in figures["text"]

    # painted, not just laid out: the green PASS badge and the held badges are on screen
    assert pixels_of(rgb, GREEN, verdict) > 500
    assert pixels_of(rgb, GREEN, limits) > 2000
    assert pixels_of(rgb, RED, limits) == 0


def test_a_broken_limiter_shows_fail_and_the_violated_key_on_the_first_screen(tmp_path):
    broken = Limiter("none", requests=30, window_s=10.0, concurrency=4)
    keys = [("free-1", "free", FREE), ("free-2", "free", broken), ("pro-1", "pro", PRO)]
    report = _run(tmp_path, keys, {"free": FREE, "pro": PRO}, charts=False)
    summary = json.loads((report.parent / "summary.json").read_text())
    assert summary["verdict"] == "fail"

    geom, rgb = first_screen(report, tmp_path)
    verdict, limits = geom["verdict"], geom["limits"]
    assert verdict["text"].startswith("Verdict: FAIL")
    assert limits["bottom"] <= HEIGHT
    rows = {r[0]: r for r in geom["rows"]}
    assert rows["free-2"][3] == "violated"
    assert "violated" not in rows["free-1"] + rows["pro-1"]
    assert pixels_of(rgb, RED, verdict) > 500
    assert pixels_of(rgb, RED, limits) > 200
