"""The charts a planner reads at a glance: legends off the data, units on the axes, axes
clipped to the run, every tier visible, smoothed series over faint raw ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadkit.analysis import charts, series
from loadkit.analysis.summary import analyse, load_run
from tests.analysis.synthetic import Limiter, Timing, even_sends, run_meta, simulate_key, write_run

# Both tiers promise the same and their keys see the same load and timings, so every
# per-tier curve of one lies exactly on the other's: the case where a tier used to vanish.
LIMIT = Limiter("sliding_log", requests=30, window_s=10.0, concurrency=4)
RUN_S = 40.0
UNITS = ("(s)", "(ms)", "requests", "/s", "per s", "fraction of")


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every chart of a two-tier run, kept open as figures; the PNGs are written too."""
    tmp = tmp_path_factory.mktemp("charts")
    timing = Timing(ttft_s=0.07, itl_s=0.02, jitter=0.3)
    keys = [("free-1", "free", 0.5, 1), ("free-2", "free", 0.15, 2)]
    keys += [("pro-1", "pro", 0.5, 1), ("pro-2", "pro", 0.15, 2)]
    runs = [
        simulate_key(
            label, tier, LIMIT, even_sends(period, RUN_S), timing, np.random.default_rng(seed)
        )
        for label, tier, period, seed in keys
    ]
    meta = run_meta({"free": LIMIT, "pro": LIMIT}, [(label, tier) for label, tier, _, _ in keys])
    run = write_run(tmp / "run", meta, runs)
    result = analyse(*load_run(run))
    figures: dict[str, Any] = {}
    save = charts._save

    def keep(fig: Any, out: Path, name: str, written: list[str]) -> None:
        save(fig, out, name, written)
        figures[name] = fig

    charts._save = keep  # type: ignore[assignment]
    try:
        names = charts.write_charts(result, tmp)
    finally:
        charts._save = save  # type: ignore[assignment]
    yield {
        "figures": figures,
        "names": names,
        "dir": tmp,
        "t_end": float(result.cols.end.max()),
    }


def _overlap(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def test_every_chart_is_written(drawn):
    assert sorted(drawn["names"]) == sorted(
        [
            "ttft_cdf.png",
            "itl_cdf.png",
            "latency_over_time.png",
            "throughput_over_time.png",
            "inflight_per_key.png",
            "window_per_key.png",
            "arrival_per_key.png",
            "status_over_time.png",
        ]
    )


def test_no_legend_covers_an_axes_and_none_is_cut_off(drawn):
    for name, fig in drawn["figures"].items():
        renderer = fig.canvas.get_renderer()
        fig.canvas.draw()
        legends = list(fig.legends) + [a.get_legend() for a in fig.axes if a.get_legend()]
        assert legends, f"{name} has no legend"
        page = fig.bbox
        for leg in legends:
            box = leg.get_window_extent(renderer)
            for ax in fig.axes:
                assert _overlap(box, ax.get_window_extent(renderer)) == 0, (
                    f"{name}: a legend lies over the axes {ax.get_ylabel()!r}"
                )
            assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1, f"{name}: legend cut off"
            assert page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1, f"{name}: legend cut off"


def _y_labels(ax: Any) -> list[str]:
    """An axes' y label, or the labels of the panels stacked in it (per-key charts)."""
    if ax.get_ylabel():
        return [ax.get_ylabel()]
    return [t.get_text() for t in ax.texts if t.get_rotation() == 90]


def test_every_axis_has_a_unit(drawn):
    for name, fig in drawn["figures"].items():
        for ax in fig.axes:
            assert _y_labels(ax), f"{name}: an axes without a y label"
            for ylabel in _y_labels(ax):
                assert any(u in ylabel for u in UNITS), f"{name}: y axis {ylabel!r} has no unit"
        xlabel = fig.axes[-1].get_xlabel()
        assert "(s)" in xlabel or "(ms)" in xlabel, f"{name}: x axis {xlabel!r} has no unit"


def test_each_key_has_its_own_labelled_panel(drawn):
    keys = ["free-1 (free)", "free-2 (free)", "pro-1 (pro)", "pro-2 (pro)"]
    for name in ("inflight_per_key.png", "window_per_key.png", "arrival_per_key.png"):
        (ax,) = drawn["figures"][name].axes
        assert [label.split("\n")[0] for label in _y_labels(ax)] == keys, name
        # one y tick label at 0 per panel, each panel scaled to its own data
        assert [t.get_text() for t in ax.texts].count("0") == len(keys), name


def test_time_axes_end_with_the_run(drawn):
    t_end = drawn["t_end"]
    for name in (
        "latency_over_time.png",
        "throughput_over_time.png",
        "inflight_per_key.png",
        "window_per_key.png",
        "status_over_time.png",
    ):
        for ax in drawn["figures"][name].axes:
            assert ax.get_xlim() == pytest.approx((0.0, t_end)), name
    # spans no longer than the run (the old axis ran to three windows whatever the run)
    for ax in drawn["figures"]["arrival_per_key.png"].axes:
        assert ax.get_xlim()[1] <= t_end + 1e-6


def test_a_narrow_latency_range_gets_a_linear_axis_with_plain_ticks(drawn):
    ax = drawn["figures"]["ttft_cdf.png"].axes[0]
    assert ax.get_xscale() == "linear"
    assert charts.cdf_axis_is_log(np.geomspace(5, 5000, 200))
    assert not charts.cdf_axis_is_log(np.linspace(50, 120, 200))
    assert not charts.cdf_axis_is_log(np.linspace(0, 120, 200))  # a zero cannot go on a log axis


def test_each_tier_shows_in_the_itl_chart_even_where_the_curves_coincide(drawn):
    """Both tiers stream alike, so their curves lie on each other: both colours must still
    be painted, and the legend gives each tier's p50 and p99."""
    import matplotlib.colors as mcolors
    import matplotlib.image as mpimg

    fig = drawn["figures"]["itl_cdf.png"]
    labels = fig.legends[0].get_texts()
    assert [t.get_text().split(":")[0] for t in labels] == ["free", "pro"]
    assert all("p50" in t.get_text() and "p99" in t.get_text() for t in labels)
    ax = fig.axes[0]
    img = mpimg.imread(drawn["dir"] / "itl_cdf.png")[..., :3]
    h, w = img.shape[:2]
    x0, y0, x1, y1 = ax.get_position().extents  # the axes only: not the legend's samples
    plot = img[int((1 - y1) * h) + 2 : int((1 - y0) * h) - 2, int(x0 * w) + 2 : int(x1 * w) - 2]
    lines = ax.get_lines()
    assert len(lines) == 2
    assert lines[0].get_xydata().tolist() == lines[1].get_xydata().tolist()  # they coincide
    for line in lines:
        rgb = np.array(mcolors.to_rgb(line.get_color()))
        alpha = line.get_alpha() or 1.0
        # a line drawn with alpha over the white page, or over the other tier's line
        shades = [(1 - alpha) + alpha * rgb] + [
            (1 - alpha) * np.array(mcolors.to_rgb(o.get_color())) + alpha * rgb
            for o in lines
            if o is not line
        ]
        painted = sum(int((np.abs(plot - c).max(axis=-1) < 0.04).sum()) for c in shades)
        assert painted > 300, f"{line.get_label()} is hidden ({painted} pixels)"


def test_throughput_is_three_panels_of_at_most_two_series(drawn):
    fig = drawn["figures"]["throughput_over_time.png"]
    assert len(fig.axes) == 3
    for ax in fig.axes:
        labelled = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        faint = [ln for ln in ax.get_lines() if ln.get_label().startswith("_")]
        assert 1 <= len(labelled) <= 2
        assert len(faint) == len(labelled)  # each smoothed series over its raw one, faint
        assert all((ln.get_alpha() or 1) <= charts.RAW_ALPHA for ln in faint)


def test_latency_over_time_draws_smoothed_p99_over_the_faint_per_bin_one(drawn):
    fig = drawn["figures"]["latency_over_time.png"]
    for ax in fig.axes:
        lines = ax.get_lines()
        raw = [ln for ln in lines if (ln.get_alpha() or 1) <= charts.RAW_ALPHA]
        solid = [ln for ln in lines if (ln.get_alpha() or 1) > charts.RAW_ALPHA]
        assert len(raw) == len(solid) == 2
        for r, s in zip(raw, solid, strict=True):
            ry, sy = np.asarray(r.get_ydata()), np.asarray(s.get_ydata())
            # smoother: smaller steps from one point to the next
            steps = [np.abs(np.diff(y[np.isfinite(y)])).mean() for y in (sy, ry)]
            assert steps[0] < steps[1]


def test_sliding_quantiles_take_each_window_of_bins():
    times = np.array([0.5, 1.5, 2.5, 3.5, 4.5])
    values = np.array([10.0, 50.0, 20.0, 40.0, 30.0])
    q = series.sliding_quantiles(times, values, 1.0, 5, 3, (0.0, 1.0))
    # bin i spans bins i-1..i+1 (cut at the ends)
    assert q[1.0].tolist() == [50.0, 50.0, 50.0, 40.0, 40.0]
    assert q[0.0].tolist() == [10.0, 10.0, 20.0, 20.0, 30.0]
    one = series.sliding_quantiles(times, values, 1.0, 5, 1, (0.5,))
    assert one[0.5].tolist() == values.tolist()
    # every second window: bins 0, 2 and 4
    strided = series.sliding_quantiles(times, values, 1.0, 5, 3, (1.0,), stride=2)
    assert strided[1.0].tolist() == [50.0, 50.0, 40.0]


def test_rolling_mean_skips_empty_bins_and_cuts_the_window_at_the_ends():
    v = np.array([1.0, np.nan, 3.0, 5.0, np.nan])
    out = series.rolling_mean(v, 3)
    assert out.tolist() == pytest.approx([1.0, 2.0, 4.0, 4.0, 5.0])
    assert np.isnan(series.rolling_mean(np.array([np.nan, np.nan]), 3)).all()


def test_time_quantiles_match_the_per_bin_and_sliding_series():
    rng = np.random.default_rng(3)
    times = rng.uniform(0, 50, 4000)
    values = rng.lognormal(4, 1, 4000)
    values[::7] = values[0]  # ties
    for nbins, k, stride in ((50, 5, 1), (50, 7, 2), (10, 1, 1), (60, 9, 3)):
        raw, smooth = charts.time_quantiles(times, values, 1.0, nbins, k, stride, (0.5, 0.99))
        want_raw = series.binned_quantiles(times, values, 1.0, nbins, (0.5, 0.99))
        want = series.sliding_quantiles(times, values, 1.0, nbins, k, (0.5, 0.99), stride)
        for q in (0.5, 0.99):
            np.testing.assert_array_equal(raw[q], want_raw[q])
            np.testing.assert_array_equal(smooth[q], want[q])


def test_in_flight_per_bin_matches_the_merged_event_count():
    rng = np.random.default_rng(5)
    for n in (0, 1, 50, 3000):
        starts = np.round(rng.uniform(0, 30, n), 1)  # ties between starts and ends
        ends = starts + np.round(rng.exponential(1.5, n), 1)  # some of zero length
        for width, nbins in ((1.0, 31), (0.5, 62), (5.0, 7)):
            want = series.step_max_per_bin(starts, ends, width, nbins)
            got = charts.open_max_per_bin(starts, ends, width, nbins)
            np.testing.assert_array_equal(got, want)


def test_chart_files_are_pngs_of_exactly_the_drawn_pixels(drawn):
    from PIL import Image

    fig = drawn["figures"]["status_over_time.png"]
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    with Image.open(drawn["dir"] / "status_over_time.png") as im:
        assert im.format == "PNG"
        assert round(im.info["dpi"][0]) == charts.DPI
        assert np.array_equal(np.asarray(im.convert("RGB")), pixels)


@pytest.mark.parametrize("log", [False, True])
def test_cdf_curves_are_each_tiers_empirical_cdf(log):
    """The CDF charts' curves: for every tier, the fraction of its values at or below each
    point drawn, values past the axis end counting as above it."""
    rng = np.random.default_rng(11)
    rows = rng.integers(0, 500, 20_000).astype(np.int32)
    tier_of_row = rng.integers(-1, 3, 500).astype(np.int8)  # -1: a row without a tier
    values = rng.lognormal(3, 1, rows.size)
    lo, hi = float(values.min()), float(np.quantile(values, 0.99))  # the axis cut at p99
    blocks = [(values[i : i + 7000], rows[i : i + 7000]) for i in range(0, rows.size, 7000)]
    got = charts.tier_cdfs(blocks, tier_of_row, 3, lo, hi, log)
    assert got.x[0] == pytest.approx(lo) and got.x[-1] == pytest.approx(hi)
    for tier in range(3):
        mine = np.sort(values[tier_of_row[rows] == tier])
        assert got.counts[tier] == mine.size
        want = np.searchsorted(mine, got.x, side="right") / mine.size
        np.testing.assert_allclose(got.fractions[tier], want, atol=2 / mine.size)
        assert got.fractions[tier][-1] < 1  # the values past the cut are not on the axis
