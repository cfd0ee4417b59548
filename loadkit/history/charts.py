"""Trend charts of a history (matplotlib, Agg): key metrics night by night with the level
between change points and the change points marked, and the verdict timeline of every
limit. Legends sit below the axes, never over the data."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadkit.history.trends import Change, MetricSeries, VerdictLine

DPI = 100
# zlib level 3 instead of 6: half the time of a chart, 15 % more bytes
PNG_OPTIONS = {"compress_level": 3}
WIDTH_IN = 11.0
REGRESSION, IMPROVEMENT, SMALL = "#cf222e", "#1a7f37", "#8c959f"
MARKERS_UP_TO = 150
LEGEND_COLUMNS = 5  # points per line; beyond that a plain line reads better

# verdict word -> (colour, legend label); any other word is drawn as "other"
VERDICT_COLOURS: dict[str, tuple[str, str]] = {
    "held": ("#2da44e", "held"),
    "agrees": ("#2da44e", "held"),
    "pass": ("#2da44e", "held"),
    "possible": ("#d4a72c", "possible"),
    "violated": ("#cf222e", "violated"),
    "disagrees": ("#cf222e", "violated"),
    "fail": ("#cf222e", "violated"),
    "inconclusive": ("#d0d7de", "inconclusive"),
    "unusable": ("#8250df", "unusable"),
    "error": ("#57606a", "error / incomplete"),
    "incomplete": ("#57606a", "error / incomplete"),
}
OTHER_COLOUR = ("#0969da", "other")
MISSING_COLOUR = "#ffffff"
MISSING = "missing"


def _figure(width: float, height: float, rows: int = 1) -> tuple[Any, Any]:
    """A figure and its axes without pyplot: no global state, and pyplot's import costs
    more than every chart of a report takes to draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)
    return fig, axes


def _days(unix: Sequence[float]) -> list[float]:
    """Unix times as matplotlib date numbers, converted once here rather than on every
    draw as datetime objects would be."""
    import matplotlib.dates as mdates

    epoch = float(mdates.date2num(datetime(1970, 1, 1, tzinfo=UTC)))  # type: ignore[no-untyped-call, unused-ignore]
    return [epoch + t / 86400.0 for t in unix]


def _dates(series: MetricSeries) -> list[float]:
    return _days([r.started_unix for r in series.runs])


def _change_colour(c: Change) -> str:
    if not c.big:
        return SMALL
    return REGRESSION if c.worse else IMPROVEMENT


def _change_label(c: Change) -> str:
    if c.metric.rate:
        return f"{100 * (c.after - c.before):+.1f} pp"
    rel = c.relative
    return f"{100 * rel:+.0f}%" if rel is not None else "from 0"


def _format_time_axis(ax: Any, fig: Any) -> None:
    import matplotlib.dates as mdates

    ax.xaxis_date(tz=UTC)
    locator = mdates.AutoDateLocator(maxticks=10, tz=UTC)  # type: ignore[no-untyped-call, unused-ignore]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call, unused-ignore]
    ax.set_xlabel("run start (UTC)")


def _plot_metric(ax: Any, series: MetricSeries, colour: str, scale: float) -> list[Any]:
    """One metric: its values, the level between change points, its change points."""
    x = _dates(series)
    y = [v * scale for v in series.values]
    marker = "o" if len(y) <= MARKERS_UP_TO else None
    (line,) = ax.plot(
        x, y, color=colour, marker=marker, ms=3, lw=1.2, label=series.metric.label, zorder=3
    )
    ax.step(
        x,
        [m * scale for m in series.means()],
        where="post",
        color=colour,
        lw=2.2,
        alpha=0.35,
        zorder=2,
    )
    for c in series.changes:
        xc, yc = x[c.position], y[c.position]
        col = _change_colour(c)
        ax.axvline(xc, color=col, lw=1, ls="--", alpha=0.8, zorder=1)
        ax.plot(
            [xc],
            [yc],
            marker="v" if c.after < c.before else "^",
            ms=10,
            color=col,
            markeredgecolor="black",
            markeredgewidth=0.6,
            zorder=4,
        )
        ax.annotate(
            _change_label(c),
            (xc, yc),
            xytext=(4, 8),
            textcoords="offset points",
            fontsize=8,
            color=col,
            fontweight="bold",
            zorder=5,
        )
    return [line]


def _legend_below(fig: Any, handles: list[Any], changes: Sequence[Change] = ()) -> None:
    """The legend under the axes (never over the data), with only the change kinds the
    chart shows."""
    from matplotlib.lines import Line2D

    extra = [Line2D([], [], color="#57606a", lw=2.2, alpha=0.35, label="level between changes")]
    kinds = {(c.big, c.worse) for c in changes}
    if (True, True) in kinds:
        extra.append(
            Line2D([], [], color=REGRESSION, marker="^", ls="--", lw=1, label="change point: worse")
        )
    if (True, False) in kinds:
        extra.append(
            Line2D(
                [], [], color=IMPROVEMENT, marker="v", ls="--", lw=1, label="change point: better"
            )
        )
    if any(not big for big, _ in kinds):
        extra.append(
            Line2D(
                [],
                [],
                color=SMALL,
                marker="^",
                ls="--",
                lw=1,
                label="change point below the minimum",
            )
        )
    handles = [*handles, *extra]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), LEGEND_COLUMNS),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )


def _layout(fig: Any, legend_items: int, left_in: float = 0.8) -> None:
    """Margins fixed in inches (constrained layout doubles the drawing time): room for
    the title above, the time axis and the legend rows below."""
    w, h = fig.get_size_inches()
    rows = max(1, -(-legend_items // LEGEND_COLUMNS))
    bottom_in = 0.62 + 0.2 * rows
    fig.subplots_adjust(
        left=left_in / w, right=1 - 0.25 / w, top=1 - 0.35 / h, bottom=bottom_in / h, hspace=0.12
    )


def _y_from_zero(ax: Any, values: Sequence[float]) -> None:
    """0 at the bottom, room above the highest point for the change labels."""
    top = max(values, default=0.0)
    ax.set_ylim(0, top * 1.18 if top > 0 else 1.0)


def _epoch_lines(ax: Any, series: MetricSeries) -> None:
    x = _dates(series)
    for pos in series.epoch_starts:
        ax.axvline(x[pos], color="#0969da", lw=1.5, ls=":", zorder=1)
        ax.annotate(
            "scenario changed",
            (x[pos], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=8,
            color="#0969da",
        )


PALETTE = ("#0550ae", "#bc4c00", "#8250df", "#116329")


def metric_chart(
    path: Path, title: str, series: Sequence[MetricSeries], ylabel: str, scale: float = 1.0
) -> Path | None:
    """Several metrics with one unit on one axes (e.g. TTFT p50, p90, p99 in ms)."""
    series = [s for s in series if s.values]
    if not series:
        return None
    fig, axes = _figure(WIDTH_IN, 4.0)
    ax = axes[0, 0]
    handles = []
    for i, s in enumerate(series):
        handles += _plot_metric(ax, s, PALETTE[i % len(PALETTE)], scale)
    _epoch_lines(ax, series[0])
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_ylabel(ylabel)
    _y_from_zero(ax, [v * scale for s in series for v in s.values])
    ax.grid(True, alpha=0.3)
    _format_time_axis(ax, fig)
    _legend_below(fig, handles, [c for s in series for c in s.changes])
    _layout(fig, len(fig.legends[0].legend_handles))
    fig.savefig(path, dpi=DPI, pil_kwargs=PNG_OPTIONS)
    return path


def stacked_chart(
    path: Path, title: str, panels: Sequence[tuple[MetricSeries, str]]
) -> Path | None:
    """Metrics with different units, one axes each, sharing the time axis."""
    panels = [(s, u) for s, u in panels if s.values]
    if not panels:
        return None
    fig, axes = _figure(WIDTH_IN, 1.2 + 2.6 * len(panels), rows=len(panels))
    handles = []
    for i, ((s, unit), ax) in enumerate(zip(panels, axes[:, 0], strict=True)):
        handles += _plot_metric(ax, s, PALETTE[i % len(PALETTE)], 1.0)
        _epoch_lines(ax, s)
        ax.set_ylabel(unit)
        _y_from_zero(ax, s.values)
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_title(title, fontsize=11, loc="left")
    _format_time_axis(axes[-1, 0], fig)
    _legend_below(fig, handles, [c for s, _ in panels for c in s.changes])
    _layout(fig, len(fig.legends[0].legend_handles))
    fig.savefig(path, dpi=DPI, pil_kwargs=PNG_OPTIONS)
    return path


def verdict_chart(
    path: Path,
    title: str,
    starts_unix: Sequence[float],
    run_verdicts: Sequence[str],
    lines: Sequence[VerdictLine],
) -> Path | None:
    """One row per limit verdict (and the run's overall verdict on top), one column per
    night, coloured by verdict word."""
    if not starts_unix:
        return None
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    rows: list[tuple[str, list[str | None]]] = [("run verdict", list(run_verdicts))]
    rows += [(ln.label, list(ln.words)) for ln in lines]
    seen: dict[str, str] = {}
    seen_missing: set[str] = set()
    grid = []
    for _, words in rows:
        cells = []
        for w in words:
            if w is None:
                seen_missing.add(MISSING)
                cells.append(to_rgb(MISSING_COLOUR))
                continue
            colour, label = VERDICT_COLOURS.get(w, OTHER_COLOUR)
            seen.setdefault(label, colour)
            cells.append(to_rgb(colour))
        grid.append(cells)
    x = _days(starts_unix)
    # cell edges halfway between nights, so uneven spacing (a missed night) shows
    edges = [x[0] - 0.5] if len(x) == 1 else [x[0] - (x[1] - x[0]) / 2]
    edges += [(a + b) / 2 for a, b in zip(x, x[1:], strict=False)]
    edges.append(x[-1] + (0.5 if len(x) == 1 else (x[-1] - x[-2]) / 2))
    height = 1.5 + 0.22 * len(rows)
    fig, axes = _figure(WIDTH_IN, height)
    ax = axes[0, 0]
    import numpy as np

    ax.pcolormesh(
        edges,
        np.arange(len(rows) + 1),
        np.array(grid),
        edgecolors="white",
        linewidth=0.3 if len(x) <= 120 else 0,
    )
    ax.set_yticks(np.arange(len(rows)) + 0.5, [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=11, loc="left")
    _format_time_axis(ax, fig)
    order = ["held", "possible", "violated", "inconclusive", "unusable", "error / incomplete"]
    labels = sorted(seen, key=lambda s: order.index(s) if s in order else len(order))
    handles = [Patch(color=seen[s], label=s) for s in labels]
    if MISSING in seen_missing:
        handles.append(Patch(facecolor=MISSING_COLOUR, edgecolor="#8c959f", label="no verdict"))
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=max(len(handles), 1),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    longest = max(len(r[0]) for r in rows)
    _layout(fig, 1, left_in=0.3 + 0.065 * longest)
    fig.savefig(path, dpi=DPI, pil_kwargs=PNG_OPTIONS)
    return path
