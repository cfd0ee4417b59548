"""PNG charts of a run (matplotlib, Agg backend), drawn to be read at a glance: legends
outside the axes, linear axes unless the range spans decades, one style per tier, x axes
clipped to the run, per-bin series faint under a smoothed one, a unit on every axis.
Everything is binned or reduced to a few hundred points before plotting, so a million
records draw as fast as a thousand."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from loadkit.analysis import figures
from loadkit.analysis.metrics import MetricValues
from loadkit.analysis.pooled import describe_groups
from loadkit.analysis.series import bin_max, rolling_mean, smooth_bins
from loadkit.analysis.stats import Stats
from loadkit.analysis.summary import Analysis, KeyAnalysis
from loadkit.analysis.throughput import bin_width, failed
from loadkit.analysis.token_charts import write_token_charts

MAX_KEYS_CHARTED = 12
DPI = figures.DPI
# The CDFs are drawn from a histogram of this many bins over the visible range (the
# empirical CDF exactly at each bin edge, log-spaced on a log axis): a tenth of a
# percent of the axis between points, finer than a pixel, in one pass over the values
# instead of sorting millions of pooled inter-token gaps.
CDF_BINS = 1024
CDF_CHUNK = 1 << 18  # values binned at a time: bounded scratch memory at any run size
# A CDF whose values span less than this ratio (p99.9 / p0.1) is drawn on a linear axis:
# a log axis over 50-120 ms only adds "6x10^1" ticks.
LOG_AXIS_RATIO = 20.0
RAW_ALPHA = 0.25
TIER_STYLES = (
    ("tab:blue", "-", 3.4),
    ("tab:orange", "--", 2.2),
    ("tab:green", ":", 1.8),
    ("tab:purple", "-.", 1.2),
)
# Wide and pale under the data: a series running exactly at the limit leaves it visible as a
# red halo instead of hiding it.
LIMIT_STYLE: dict[str, Any] = {
    "color": "red",
    "linestyle": "--",
    "linewidth": 2.6,
    "alpha": 0.55,
    "zorder": 0,
}
WIDE = 9.0  # inches: the time series and per-key charts
PANEL_IN = 1.5  # one key's panel
TWO_LINE_TITLE = figures.Margins(top=0.6)


def _save(fig: Any, out: Path, name: str, written: list[str]) -> None:
    figures.save_png(fig, out / name)
    written.append(name)


def _suptitle(fig: Any, title: str) -> None:
    fig.suptitle(title, y=1 - 0.1 / fig.get_figheight())


def _tier_style(code: int) -> tuple[str, str, float]:
    return TIER_STYLES[code % len(TIER_STYLES)]


def cdf_axis_is_log(values: np.ndarray) -> bool:
    """Log only when the values are positive and span more than LOG_AXIS_RATIO."""
    if values.size == 0 or values.min() <= 0:
        return False
    lo, hi = np.quantile(values, [0.001, 0.999])
    return bool(lo > 0 and hi / lo > LOG_AXIS_RATIO)


def _plain_ticks(ax: Any) -> None:
    """Log-axis ticks as plain numbers (50, 100, 200), not 6x10^1."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_formatter(NullFormatter())


@dataclass(frozen=True)
class Cdfs:
    """Empirical CDFs of one metric per tier, sampled at the edges of a shared histogram:
    ``fractions[g][j]`` of tier g's values lie at or below ``x[j]`` (to the bin)."""

    x: np.ndarray
    fractions: np.ndarray  # tiers x len(x)
    counts: np.ndarray  # values per tier
    log: bool  # whether the bins are log-spaced


def tier_cdfs(
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    row_group: np.ndarray,
    ngroups: int,
    lo: float,
    hi: float,
    log: bool,
) -> Cdfs:
    """The CDF over [lo, hi] of the values of each group (``row_group[rows[i]]`` for value
    i; -1: none), the values read as (values, rows) blocks; values above ``hi`` count, off
    the axis. The values are not reordered."""
    nb = CDF_BINS
    a, span = (np.log(lo), np.log(hi) - np.log(lo)) if log else (lo, hi - lo)
    # a hair under nb / span: the largest value falls in the last bin, not past it
    scale = nb / span * (1 - 1e-9) if span > 0 else 0.0
    counts = np.zeros((ngroups + 1) * (nb + 1), dtype=np.int64)
    # where each row's group starts in the counts; row 0 gathers the values of no group
    offset = (row_group.astype(np.intp) + 1) * (nb + 1)
    buf = np.empty(CDF_CHUNK)
    for values, rows in blocks:
        for start in range(0, values.size, CDF_CHUNK):
            v = values[start : start + CDF_CHUNK]
            pos = buf[: v.size]
            if log:
                np.log(v, out=pos)
                pos -= a
                pos *= scale
            else:
                np.multiply(v, scale, out=pos)
                pos -= a * scale
            np.clip(pos, 0, nb, out=pos)
            idx = pos.astype(np.intp)
            idx += offset[rows[start : start + CDF_CHUNK]]
            counts += np.bincount(idx, minlength=counts.size)
    per = counts.reshape(ngroups + 1, nb + 1)[1:]
    n = per.sum(axis=1)
    steps = np.arange(nb + 1) / scale if scale else np.zeros(nb + 1)
    edges = np.exp(a + steps) if log else a + steps
    cum = np.cumsum(per[:, :nb], axis=1) / np.maximum(n, 1)[:, None]
    fractions = np.concatenate([np.zeros((ngroups, 1)), cum], axis=1)
    return Cdfs(edges, fractions, n, log)


def _extremes(mv: MetricValues) -> tuple[float, float]:
    """The smallest and largest value (NaN when any is NaN, as numpy's min and max)."""
    if mv.in_memory():  # no block copies: the values as they are held
        values = mv.values
        return float(values.min()), float(values.max())
    low, peak = np.inf, -np.inf
    for values, _ in mv.blocks():
        low, peak = np.minimum(low, values.min()), np.maximum(peak, values.max())
    return float(low), float(peak)


def _by_tier(mv: MetricValues, tier_of_row: np.ndarray, ntiers: int) -> list[Stats]:
    """``describe`` of each tier's values (every endpoint), then of all values (rows
    without a tier too), read in blocks."""
    group = tier_of_row.astype(np.int64) + 1  # 0: rows without a tier
    sets = [[c + 1] for c in range(ntiers)] + [list(range(ntiers + 1))]
    return describe_groups(partial(mv.blocks, group), ntiers + 1, sets)


def _quantile_of(c: Cdfs, q: float) -> float:
    """The bin edge where the pooled CDF first reaches ``q``."""
    pooled = (c.fractions * c.counts[:, None]).sum(axis=0) / max(int(c.counts.sum()), 1)
    return float(c.x[min(int(np.searchsorted(pooled, q)), c.x.size - 1)])


def chart_cdfs(result: Analysis, out: Path, written: list[str]) -> None:
    cols = result.cols
    tiers = cols.tier.names
    for metric, title, unit in (
        ("ttft_ms", "Time to first token", "requests"),
        ("itl_ms", "Inter-token latency", "gaps between chunks"),
    ):
        mv = result.values[metric].load()
        table = result.summary.latency.table(metric)
        xlabel = f"{title.lower()} (ms)"
        cdfs = None
        right = None
        exact: list[Stats] | None = None  # per tier and of all values, when asked for
        if mv.size:
            low, peak = _extremes(mv)
            top = table.overall.p99_9
            if top is None or table.overall.count != mv.size:
                exact = _by_tier(mv, cols.tier.codes, len(tiers))
                top = exact[-1].p99_9
                assert top is not None
            # The last 0.1 % would stretch the axis over an empty flat top: cut it, and say so.
            hi = peak
            if peak > top * 1.1:
                right = top * 1.05
                hi = right
                xlabel += f"; axis ends at p99.9 = {top:,.0f} ms, max {peak:,.0f} ms"
            maybe_log = low > 0 and top / low > LOG_AXIS_RATIO
            cdfs = tier_cdfs(mv.blocks(), cols.tier.codes, len(tiers), low, max(hi, low), maybe_log)
            log = maybe_log and top / max(_quantile_of(cdfs, 0.001), low) > LOG_AXIS_RATIO
        drawn = [c for c in range(len(tiers)) if cdfs is not None and cdfs.counts[c]]
        fig, (ax,) = figures.figure(8.0, 2.9, legend_rows=figures.legend_rows(len(drawn), 1))
        for code in drawn:
            assert cdfs is not None
            name = tiers[code]
            color, style, lw = _tier_style(code)
            st = table.by_tier.get(name)
            if st is None or st.count != cdfs.counts[code]:  # the table: inference only
                exact = exact or _by_tier(mv, cols.tier.codes, len(tiers))
                st = exact[code]
            p50, p99 = (np.nan if q is None else q for q in (st.p50, st.p99))
            # Each tier its own colour, dash and width: a tier whose curve lies on another's
            # still shows (the wider line under the narrower), and the legend states its
            # p50 and p99 in figures.
            ax.plot(
                cdfs.x,
                cdfs.fractions[code],
                color=color,
                linestyle=style,
                linewidth=lw,
                alpha=0.85,
                zorder=2 + code,
                label=f"{name}: p50 {p50:,.0f} ms, p99 {p99:,.0f} ms (n={cdfs.counts[code]:,})",
            )
        if right is not None:
            ax.set_xlim(right=right)
        if cdfs is not None and log:
            ax.set_xscale("log")
            _plain_ticks(ax)
        elif mv.size and low >= 0:
            ax.set_xlim(left=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"fraction of {unit}")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{title}: cumulative distribution per tier")
        ax.grid(alpha=0.3)
        figures.legend_below(fig, ax, ncols=1)
        _save(fig, out, f"{metric.replace('_ms', '')}_cdf.png", written)


def _faint_and_smooth(
    ax: Any, x: np.ndarray, raw: np.ndarray, smooth: np.ndarray, color: str, label: str
) -> None:
    ax.plot(x, raw, color=color, alpha=RAW_ALPHA, linewidth=0.8)
    ax.plot(x, smooth, color=color, linewidth=2.0, label=label)


def time_quantiles(
    times: np.ndarray,
    values: np.ndarray,
    width: float,
    nbins: int,
    k: int,
    stride: int,
    qs: tuple[float, ...],
) -> tuple[dict[float, np.ndarray], dict[float, np.ndarray]]:
    """``series.binned_quantiles`` and ``series.sliding_quantiles`` (the same nearest-rank
    figures) from one sort of the values by time bin: the bin numbers fit 16 bits, which
    numpy sorts by radix in a pass or two, where sorting the values themselves in each bin
    took most of this chart's time at a million records."""
    raw = {q: np.full(nbins, np.nan) for q in qs}
    centres = np.arange(0, nbins, max(1, stride))
    smooth = {q: np.full(centres.size, np.nan) for q in qs}
    if values.size == 0:
        return raw, smooth
    b = np.clip(times // width, 0, nbins - 1).astype(np.int16 if nbins < 2**15 else np.int64)
    order = np.argsort(b, kind="stable")
    v = values[order]
    bounds = np.concatenate(([0], np.cumsum(np.bincount(b, minlength=nbins))))
    del b, order

    def fill(out: dict[float, np.ndarray], i: int, lo: int, hi: int) -> None:
        ranks = [int(np.floor(q * (hi - lo - 1))) for q in qs]
        part = np.partition(v[lo:hi], ranks)
        for q, r in zip(qs, ranks, strict=True):
            out[q][i] = part[r]

    for i in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
        fill(raw, i, int(bounds[i]), int(bounds[i + 1]))
    first = np.clip(centres - k // 2, 0, nbins)
    last = np.clip(centres - k // 2 + k, 0, nbins)
    for i in range(centres.size):
        lo, hi = int(bounds[first[i]]), int(bounds[last[i]])
        if hi > lo:
            fill(smooth, i, lo, hi)
    return raw, smooth


def chart_latency_time(
    result: Analysis, out: Path, written: list[str], width: float, nbins: int, t_end: float
) -> None:
    cols = result.cols
    k = smooth_bins(nbins)
    fig, axes = figures.figure(WIDE, 2.0, 2, legend_rows=1, sharex=True)
    x = (np.arange(nbins) + 0.5) * width
    stride = max(1, k // 4)
    xs = (np.arange(0, nbins, stride) + 0.5) * width
    for ax, metric, name in (
        (axes[0], "ttft_ms", "time to first token"),
        (axes[1], "e2e_ms", "end-to-end latency"),
    ):
        mv = result.values[metric].load()
        raw, smooth = time_quantiles(
            cols.send[mv.rows], mv.values, width, nbins, k, stride, (0.5, 0.99)
        )
        for q, color in ((0.99, "tab:red"), (0.5, "tab:blue")):
            ax.plot(x, raw[q], color=color, alpha=RAW_ALPHA, linewidth=0.8)
            ax.plot(
                xs,
                smooth[q],
                color=color,
                linewidth=2.0,
                label=f"p{q * 100:g} over {k * width:g} s",
            )
        ax.set_ylabel(f"{name} (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_xlim(0, t_end)
    axes[1].set_xlabel("run time (s), by send time")
    _suptitle(fig, f"Latency over time (faint: per {width:g} s bin)")
    figures.legend_below(fig, axes[0], ncols=2)
    _save(fig, out, "latency_over_time.png", written)


def chart_throughput_time(
    result: Analysis, out: Path, written: list[str], nbins: int, t_end: float
) -> None:
    tl = result.summary.throughput.timeline
    w = tl.bin_s
    x = np.array(tl.start_s) + w / 2
    k = smooth_bins(len(tl.start_s) or nbins)
    fig, axes = figures.figure(WIDE, 1.6, 3, figures.Margins(right=1.55, gap=0.25), sharex=True)
    panels = (
        (
            axes[0],
            "requests/s",
            (("completed", "tab:blue", "2xx responses"), ("sent", "tab:gray", "requests sent")),
        ),
        (axes[1], "429 refusals\n(per s)", (("throttled", "tab:red", "429 responses"),)),
        (axes[2], "output tokens/s", (("output_tokens", "tab:purple", "output tokens"),)),
    )
    for ax, ylabel, series in panels:
        for field, color, label in series:
            rate = np.array(getattr(tl, field), dtype=np.float64) / w
            _faint_and_smooth(ax, x, rate, rolling_mean(rate, k), color, label)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
    axes[0].set_xlim(0, t_end)
    axes[-1].set_xlabel("run time (s)")
    _suptitle(fig, f"Throughput over time (faint: per {w:g} s bin; solid: mean over {k * w:g} s)")
    _save(fig, out, "throughput_over_time.png", written)


def chart_status_time(
    result: Analysis, out: Path, written: list[str], width: float, nbins: int, t_end: float
) -> None:
    cols = result.cols
    st = cols.status
    classes = [
        ("2xx", (st >= 200) & (st < 300), "tab:green"),
        ("429", st == 429, "tab:orange"),
        ("other 4xx", (st >= 400) & (st < 500) & (st != 429), "tab:purple"),
        ("5xx", st >= 500, "tab:red"),
        ("no response", st == 0, "black"),
    ]
    # Stacked bars a few seconds wide: one-second bars of a long run are a noisy comb.
    k = max(1, smooth_bins(nbins) // 2)
    bw, nb = width * k, max(1, int(np.ceil(nbins / k)))
    x = np.arange(nb) * bw
    edges = np.arange(nb + 1) * bw
    fig, (ax,) = figures.figure(WIDE, 2.9, legend_rows=1)
    bottom = np.zeros(nb)
    b = np.clip((cols.end // bw).astype(np.int64), 0, nb - 1)
    for name, mask, color in classes:
        counts = np.bincount(b[mask], minlength=nb) / bw
        if counts.any():
            # one filled outline per class, stacked: the bars of a long run in one artist
            top = bottom + counts
            ax.stairs(top, edges, baseline=bottom, fill=True, color=color, label=name)
            bottom = top
    cut = np.bincount(b[failed(cols) & (st == 200)], minlength=nb) / bw
    if cut.any():
        ax.step(x, cut, where="post", color="black", label="200 cut by transport error")
    ax.set_xlim(0, t_end)
    ax.set_xlabel("run time (s), by end time")
    ax.set_ylabel("responses/s")
    ax.set_title(f"Status codes over time ({bw:g} s bars)")
    ax.grid(alpha=0.3, axis="y")
    figures.legend_below(fig, ax, ncols=6)
    _save(fig, out, "status_over_time.png", written)


def _key_panels(title: str, tops: list[float]) -> tuple[Any, Any, figures.Panels]:
    """One Axes holding a panel per key (``figures.Panels``), titled, with a legend row."""
    n = len(tops)
    fig, (ax,) = figures.figure(WIDE, PANEL_IN * (n + (n - 1) * figures.PANEL_GAP), legend_rows=1)
    _suptitle(fig, title)
    return fig, ax, figures.Panels(ax, tops)


def _key_label(k: KeyAnalysis, unit: str) -> str:
    return f"{k.label} ({k.tier})\n{unit}"


def open_max_per_bin(starts: np.ndarray, ends: np.ndarray, width: float, nbins: int) -> np.ndarray:
    """``series.step_max_per_bin`` (the most intervals [start, end) open at once within each
    bin) from the starts and the ends sorted apart: the count only rises at a start, so a
    bin's most is the count on entering it or just after one of its starts, with an end at
    the same instant as a start taken first. Two sorts of nearly sorted arrays instead of
    sorting the merged events."""
    keep = ends > starts
    if not keep.any():
        return np.zeros(nbins)
    s, e = np.sort(starts[keep]), np.sort(ends[keep])
    after_start = np.arange(1, s.size + 1) - np.searchsorted(e, s, side="right")
    in_bin, _ = bin_max(s, after_start.astype(np.float64), width, nbins)
    t0 = np.arange(nbins) * width
    entry = np.searchsorted(s, t0, side="left") - np.searchsorted(e, t0, side="left")
    return np.asarray(np.maximum(in_bin, entry))


def chart_inflight(
    result: Analysis, out: Path, written: list[str], width: float, nbins: int, t_end: float
) -> None:
    keys = result.keys[:MAX_KEYS_CHARTED]
    if not keys:
        return
    margin = result.summary.settings.concurrency_margin_s
    levels = []
    for k in keys:
        kv = k.view(result.cols)
        adm, maybe = kv.admitted, kv.maybe
        levels.append(
            (
                open_max_per_bin(kv.s[maybe], kv.e[maybe], width, nbins),
                open_max_per_bin(kv.hi[adm], kv.e[adm] - margin, width, nbins),
            )
        )
    tops = [
        max(float(possible.max(initial=0)) * 1.05, k.policy.concurrency * 1.25)
        for k, (possible, _) in zip(keys, levels, strict=True)
    ]
    fig, ax, panels = _key_panels(f"In-flight requests per key (most in each {width:g} s)", tops)
    x = np.arange(nbins) * width
    panels.plot(
        {i: (x, possible) for i, (possible, _) in enumerate(levels)},
        drawstyle="steps-post",
        color="tab:blue",
        label="possibly in flight (send to end)",
        alpha=0.45,
    )
    panels.plot(
        {i: (x, certain) for i, (_, certain) in enumerate(levels)},
        drawstyle="steps-post",
        color="tab:blue",
        label="certainly in flight (headers to end)",
    )
    # The cap under the data (a line sitting exactly on it stays visible), from 0 up.
    panels.hlines(
        {i: k.policy.concurrency for i, k in enumerate(keys)}, label="promised cap", **LIMIT_STYLE
    )
    ax.set_xlim(0, t_end)
    ax.set_xlabel("run time (s)")
    panels.finish([_key_label(k, "requests") for k in keys])
    figures.legend_below(fig, ax, ncols=3)
    _save(fig, out, "inflight_per_key.png", written)


def trailing_window_per_bin(
    mid: np.ndarray, window_s: float, width: float, nbins: int
) -> np.ndarray:
    """The most admissions (instants ``mid``, sorted) in a trailing window of ``window_s``
    at any time within each bin."""
    level = np.arange(mid.size) + 1 - np.searchsorted(mid, mid - window_s, side="right")
    in_bin, _ = bin_max(mid, level.astype(np.float64), width, nbins)
    # the trailing count only rises at admissions: a bin's max is at its start or an event
    t0 = np.arange(nbins) * width
    entry = np.searchsorted(mid, t0, side="right") - np.searchsorted(
        mid, t0 - window_s, side="right"
    )
    return np.asarray(np.maximum(in_bin, entry))


def chart_window(
    result: Analysis, out: Path, written: list[str], width: float, nbins: int, t_end: float
) -> None:
    keys = result.keys[:MAX_KEYS_CHARTED]
    if not keys:
        return
    levels = []
    for k in keys:
        kv = k.view(result.cols)
        adm = kv.admitted
        mid = np.sort((kv.s[adm] + kv.hi[adm]) / 2.0)
        levels.append(trailing_window_per_bin(mid, k.policy.window_s, width, nbins))
    tops = [
        max(float(level.max(initial=0)) * 1.05, k.policy.requests * 1.15)
        for k, level in zip(keys, levels, strict=True)
    ]
    fig, ax, panels = _key_panels("Admitted requests in the trailing window, per key", tops)
    x = np.arange(nbins) * width
    panels.plot(
        {i: (x, level) for i, level in enumerate(levels)},
        drawstyle="steps-post",
        color="tab:blue",
        label="admitted in the trailing window (midpoint of send and headers)",
    )
    panels.hlines(
        {i: k.policy.requests for i, k in enumerate(keys)}, label="promised limit", **LIMIT_STYLE
    )
    ax.set_xlim(0, t_end)
    ax.set_xlabel("run time (s)")
    panels.finish([_key_label(k, f"requests / {k.policy.window_s:g} s") for k in keys])
    figures.legend_below(fig, ax, ncols=2)
    _save(fig, out, "window_per_key.png", written)


def chart_arrival(result: Analysis, out: Path, written: list[str], t_end: float) -> None:
    keys = result.keys[:MAX_KEYS_CHARTED]
    if not keys:
        return
    arrival = result.summary.arrival
    # No span is longer than the run: the axis ends with it, three windows at most.
    horizon = max(min(max(3 * k.policy.window_s for k in keys), t_end), 1e-3)
    drawn: list[Any] = []
    for k in keys:
        curve = arrival.get(k.label)
        if not curve:
            drawn.append(None)
            continue
        w, n_lim = k.policy.window_s, k.policy.requests
        own = max(min(3 * w, t_end), 1e-3)
        spans = np.array([p.span_s for p in curve.points])
        ks = np.array([p.k for p in curve.points])
        sel = spans <= own
        xs, ys = spans[sel], ks[sel]
        if ys.size and ks.size and ys[-1] == ks[-1]:  # every admission seen: flat from here on
            xs, ys = np.append(xs, own), np.append(ys, ys[-1])
        t = np.linspace(1e-9, own, 600)
        bounds = [b for b in curve.bounds if b.t_s <= own]
        drawn.append((xs, ys, t, n_lim * np.ceil(t / w), bounds))
    tops = [
        1.0
        if d is None
        else 1.05
        * max(
            float(d[1].max(initial=0)),
            float(d[3].max(initial=0)),
            max((b.possible for b in d[4]), default=0),
        )
        for d in drawn
    ]
    fig, ax, panels = _key_panels("Arrival curve: most admissions in any span of length t", tops)
    shown = {i: d for i, d in enumerate(drawn) if d is not None}
    panels.plot(
        {i: (d[0], d[1]) for i, d in shown.items()},
        drawstyle="steps-post",
        color="tab:blue",
        label="observed (midpoint estimate)",
    )
    panels.plot(
        {i: (d[2], d[3]) for i, d in shown.items()}, label="promised N·ceil(t/W)", **LIMIT_STYLE
    )
    for name, marker, color in (("certain", "^", "black"), ("possible", "v", "gray")):
        panels.plot(
            {
                i: ([b.t_s for b in d[4]], [getattr(b, name) for b in d[4]])
                for i, d in shown.items()
            },
            linestyle="none",
            marker=marker,
            color=color,
            label=name,
            zorder=3,
        )
    ax.set_xlim(0, horizon)
    ax.set_xlabel("span length t (s)")
    panels.finish([_key_label(k, "requests") for k in keys])
    if shown:
        figures.legend_below(fig, ax, ncols=4)
    _save(fig, out, "arrival_per_key.png", written)


def write_charts(result: Analysis, out_dir: Path) -> list[str]:
    """Write every chart into ``out_dir``; returns the file names."""
    written: list[str] = []
    t_end = float(np.max(result.cols.end)) if result.cols.n else 1.0
    t_end = max(t_end, 1e-3)
    width = bin_width(t_end)
    nbins = max(1, int(np.ceil(t_end / width)))
    with figures.collector_paused():
        chart_cdfs(result, out_dir, written)
        chart_latency_time(result, out_dir, written, width, nbins, t_end)
        chart_throughput_time(result, out_dir, written, nbins, t_end)
        chart_inflight(result, out_dir, written, width, nbins, t_end)
        chart_window(result, out_dir, written, width, nbins, t_end)
        chart_arrival(result, out_dir, written, t_end)
        chart_status_time(result, out_dir, written, width, nbins, t_end)
        write_token_charts(result, out_dir, written)
    return written
