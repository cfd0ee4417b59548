"""PNG charts of a run (matplotlib, Agg backend). Everything is binned or reduced to a few
hundred points before plotting, so a million records draw as fast as a thousand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from loadkit.analysis.summary import Analysis
from loadkit.analysis.throughput import bin_width, failed
from loadkit.analysis.token_charts import write_token_charts

MAX_KEYS_CHARTED = 12
DPI = 90
CDF_LEVELS = np.concatenate([np.linspace(0, 0.99, 397), 1 - np.geomspace(0.01, 1e-5, 60), [1.0]])


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: Path, name: str, written: list[str]) -> None:
    fig.savefig(out / name, dpi=DPI)
    _plt().close(fig)
    written.append(name)


def binned_quantiles(
    times: np.ndarray, values: np.ndarray, width: float, nbins: int, qs: tuple[float, ...]
) -> dict[float, np.ndarray]:
    """Nearest-rank quantiles of ``values`` per time bin (NaN for empty bins), no Python loop
    over bins."""
    out = {q: np.full(nbins, np.nan) for q in qs}
    if values.size == 0:
        return out
    b = np.clip((times // width).astype(np.int64), 0, nbins - 1)
    order = np.lexsort((values, b))
    counts = np.bincount(b, minlength=nbins)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = counts > 0
    sv = values[order]
    for q in qs:
        pos = starts + np.floor(q * (counts - 1)).astype(np.int64)
        out[q][has] = sv[pos[has]]
    return out


def _bin_max(
    times_sorted: np.ndarray, values: np.ndarray, width: float, nbins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin max of ``values`` (times sorted ascending) and the index of each bin's first
    event (``size`` when none); bins without events hold -inf."""
    first = np.searchsorted(times_sorted, np.arange(nbins) * width, side="left")
    out = np.full(nbins, -np.inf)
    nxt = np.append(first[1:], times_sorted.size)
    has = nxt > first
    if has.any():
        # each segment runs to the next non-empty bin's first event: exactly this bin's events
        out[has] = np.maximum.reduceat(values, first[has])
    return out, first


def step_max_per_bin(starts: np.ndarray, ends: np.ndarray, width: float, nbins: int) -> np.ndarray:
    """Most intervals [start, end) open at once within each time bin."""
    keep = ends > starts
    if not keep.any():
        return np.zeros(nbins)
    t = np.concatenate([starts[keep], ends[keep]])
    d = np.concatenate([np.ones(keep.sum()), -np.ones(keep.sum())])
    order = np.lexsort((d, t))  # ends before starts at the same instant
    t, level = t[order], np.cumsum(d[order])
    in_bin, first = _bin_max(t, level, width, nbins)
    entry = np.where(first > 0, level[np.maximum(first - 1, 0)], 0.0)
    return np.asarray(np.maximum(in_bin, entry))


def _cdf(ax: Any, values: np.ndarray, label: str) -> None:
    if values.size == 0:
        return
    ax.plot(np.quantile(values, CDF_LEVELS), CDF_LEVELS, label=f"{label} (n={values.size})")


def chart_cdfs(result: Analysis, out: Path, written: list[str]) -> None:
    plt = _plt()
    cols = result.cols
    for metric, title in (("ttft_ms", "Time to first token"), ("itl_ms", "Inter-token latency")):
        mv = result.values[metric]
        fig, ax = plt.subplots(figsize=(7, 4))
        tiers = cols.tier.codes[mv.rows]
        for code, name in enumerate(cols.tier.names):
            _cdf(ax, mv.values[tiers == code], name)
        if mv.values.size and mv.values.min() > 0:
            ax.set_xscale("log")
        ax.set_xlabel(f"{metric.replace('_ms', '')} (ms)")
        ax.set_ylabel("fraction of requests" if metric == "ttft_ms" else "fraction of gaps")
        ax.set_title(f"{title}: CDF per tier")
        ax.grid(alpha=0.3)
        if mv.values.size:
            ax.legend(loc="lower right")
        fig.tight_layout()
        _save(fig, out, f"{metric.replace('_ms', '')}_cdf.png", written)


def chart_latency_time(
    result: Analysis, out: Path, written: list[str], width: float, nbins: int
) -> None:
    plt = _plt()
    cols = result.cols
    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(nbins) * width
    for metric in ("ttft_ms", "e2e_ms"):
        mv = result.values[metric]
        q = binned_quantiles(cols.send[mv.rows], mv.values, width, nbins, (0.5, 0.99))
        ax.plot(x, q[0.5], label=f"{metric} p50")
        ax.plot(x, q[0.99], label=f"{metric} p99", linestyle="--")
    ax.set_xlabel("run time (s), by send time")
    ax.set_ylabel("ms (log scale)")
    ax.set_yscale("log")  # TTFT (tens of ms) and e2e (seconds) on one readable axis
    ax.set_title(f"Latency over time ({width:g} s bins)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    _save(fig, out, "latency_over_time.png", written)


def chart_throughput_time(result: Analysis, out: Path, written: list[str]) -> None:
    plt = _plt()
    tl = result.summary.throughput.timeline
    w = tl.bin_s
    x = np.array(tl.start_s)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(x, np.array(tl.completed) / w, label="completed req/s")
    ax.plot(x, np.array(tl.sent) / w, label="sent req/s", alpha=0.7)
    ax.plot(x, np.array(tl.throttled) / w, label="429/s", alpha=0.7)
    ax.set_xlabel("run time (s)")
    ax.set_ylabel("requests/s")
    ax2 = ax.twinx()
    ax2.plot(
        x, np.array(tl.output_tokens) / w, color="tab:purple", alpha=0.5, label="output tokens/s"
    )
    ax2.set_ylabel("output tokens/s")
    ax.set_title(f"Throughput over time ({w:g} s bins)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out, "throughput_over_time.png", written)


def chart_status_time(
    result: Analysis, out: Path, written: list[str], width: float, nbins: int
) -> None:
    plt = _plt()
    cols = result.cols
    st = cols.status
    classes = [
        ("2xx", (st >= 200) & (st < 300)),
        ("429", st == 429),
        ("other 4xx", (st >= 400) & (st < 500) & (st != 429)),
        ("5xx", st >= 500),
        ("no response", st == 0),
    ]
    x = np.arange(nbins) * width
    fig, ax = plt.subplots(figsize=(9, 4))
    bottom = np.zeros(nbins)
    b = np.clip((cols.end // width).astype(np.int64), 0, nbins - 1)
    for name, mask in classes:
        counts = np.bincount(b[mask], minlength=nbins) / width
        if counts.any():
            ax.fill_between(x, bottom, bottom + counts, step="post", label=name, alpha=0.8)
        bottom = bottom + counts
    cut = np.bincount(b[failed(cols) & (st == 200)], minlength=nbins) / width
    if cut.any():
        ax.plot(x, cut, color="black", drawstyle="steps-post", label="200 cut by transport error")
    ax.set_xlabel("run time (s), by end time")
    ax.set_ylabel("responses/s")
    ax.set_title("Status codes over time")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, out, "status_over_time.png", written)


def _key_axes(n: int, title: str) -> tuple[Any, list[Any]]:
    plt = _plt()
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.4 * n + 0.6), squeeze=False)
    fig.suptitle(title)
    return fig, [a[0] for a in axes]


def chart_inflight(
    result: Analysis, out: Path, written: list[str], width: float, nbins: int
) -> None:
    keys = result.keys[:MAX_KEYS_CHARTED]
    if not keys:
        return
    margin = result.summary.settings.concurrency_margin_s
    fig, axes = _key_axes(len(keys), f"In-flight requests per key (max per {width:g} s bin)")
    x = np.arange(nbins) * width
    for ax, k in zip(axes, keys, strict=True):
        kv = k.view
        adm, maybe = kv.admitted, kv.maybe
        ax.plot(
            x,
            step_max_per_bin(kv.s[maybe], kv.e[maybe], width, nbins),
            drawstyle="steps-post",
            label="possibly in flight",
            alpha=0.6,
        )
        ax.plot(
            x,
            step_max_per_bin(kv.hi[adm], kv.e[adm] - margin, width, nbins),
            drawstyle="steps-post",
            label="certainly in flight",
        )
        # The cap under the data (a line sitting exactly on it stays visible), from 0 up.
        ax.axhline(
            k.policy.concurrency, color="red", linestyle="--", label="promised cap", zorder=0
        )
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], k.policy.concurrency * 1.25))
        ax.set_ylabel(k.label)
        ax.legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel("run time (s)")
    fig.tight_layout()
    _save(fig, out, "inflight_per_key.png", written)


def chart_window(result: Analysis, out: Path, written: list[str], width: float, nbins: int) -> None:
    keys = result.keys[:MAX_KEYS_CHARTED]
    if not keys:
        return
    fig, axes = _key_axes(len(keys), "Admitted requests in the trailing window (point estimate)")
    x = np.arange(nbins) * width
    for ax, k in zip(axes, keys, strict=True):
        kv = k.view
        adm = kv.admitted
        mid = np.sort((kv.s[adm] + kv.hi[adm]) / 2.0)
        w = k.policy.window_s
        level = np.arange(mid.size) + 1 - np.searchsorted(mid, mid - w, side="right")
        in_bin, _ = _bin_max(mid, level.astype(np.float64), width, nbins)
        # the trailing count only rises at admissions: a bin's max is at its start or an event
        t0 = np.arange(nbins) * width
        entry = np.searchsorted(mid, t0, side="right") - np.searchsorted(mid, t0 - w, side="right")
        per_bin = np.maximum(in_bin, entry)
        ax.plot(x, per_bin, drawstyle="steps-post", label=f"admitted in trailing {w:g} s")
        ax.axhline(k.policy.requests, color="red", linestyle="--", label="promised limit", zorder=0)
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], k.policy.requests * 1.15))
        ax.set_ylabel(k.label)
        ax.legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel("run time (s)")
    fig.tight_layout()
    _save(fig, out, "window_per_key.png", written)


def chart_arrival(result: Analysis, out: Path, written: list[str]) -> None:
    keys = result.keys[:MAX_KEYS_CHARTED]
    if not keys:
        return
    arrival = result.summary.arrival
    fig, axes = _key_axes(len(keys), "Arrival curve: most admissions in any span of length t")
    for ax, k in zip(axes, keys, strict=True):
        curve = arrival.get(k.label)
        if not curve:
            continue
        w, n_lim = k.policy.window_s, k.policy.requests
        horizon = 3 * w
        spans = np.array([p.span_s for p in curve.points])
        ks = np.array([p.k for p in curve.points])
        sel = spans <= horizon
        xs, ys = spans[sel], ks[sel]
        if ys.size and ks.size and ys[-1] == ks[-1]:  # every admission seen: flat from here on
            xs, ys = np.append(xs, horizon), np.append(ys, ys[-1])
        ax.step(xs, ys, where="post", label="observed (midpoint estimate)")
        t = np.linspace(1e-9, horizon, 600)
        ax.plot(
            t, n_lim * np.ceil(t / w), color="red", linestyle="--", label="promised N*ceil(t/W)"
        )
        b = curve.bounds
        ax.scatter(
            [x.t_s for x in b],
            [x.certain for x in b],
            marker="^",
            color="black",
            label="certain",
            zorder=3,
        )
        ax.scatter(
            [x.t_s for x in b],
            [x.possible for x in b],
            marker="v",
            color="gray",
            label="possible",
            zorder=3,
        )
        ax.set_xlim(0, horizon)
        ax.set_ylabel(k.label)
        ax.legend(loc="lower right", fontsize="small")
    axes[-1].set_xlabel("span length t (s)")
    fig.tight_layout()
    _save(fig, out, "arrival_per_key.png", written)


def write_charts(result: Analysis, out_dir: Path) -> list[str]:
    """Write every chart into ``out_dir``; returns the file names."""
    written: list[str] = []
    t_end = float(np.max(result.cols.end)) if result.cols.n else 1.0
    width = bin_width(t_end)
    nbins = max(1, int(np.ceil(t_end / width)))
    chart_cdfs(result, out_dir, written)
    chart_latency_time(result, out_dir, written, width, nbins)
    chart_throughput_time(result, out_dir, written)
    chart_inflight(result, out_dir, written, width, nbins)
    chart_window(result, out_dir, written, width, nbins)
    chart_arrival(result, out_dir, written)
    chart_status_time(result, out_dir, written, width, nbins)
    write_token_charts(result, out_dir, written)
    return written
