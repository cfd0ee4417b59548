"""Matplotlib figures laid out by fixed margins in inches and written as PNG: what every
chart of a run shares. A layout engine (constrained or tight) measures every tick label
before drawing and took about a third of the charts' time; their margins are known in
advance (labels of a few lines, tick labels of a few digits), so they are set once here.
No pyplot: a Figure on its own Agg canvas is freed with its last reference."""

from __future__ import annotations

import gc
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DPI = 90
# zlib level 3 packs a chart in about half the time of level 6, ~15 % larger.
PNG_COMPRESSION = 3
# Room for the text around the axes (matplotlib's default 10 pt font):
LEFT_IN = 1.05  # a y label of two lines and tick labels of up to six characters
RIGHT_IN = 0.3  # half of the last x tick label
TOP_IN = 0.42  # a title of one line
XAXIS_IN = 0.52  # x tick labels and the x label under the lowest axes
LEGEND_ROW_IN = 0.2  # a legend row in the "small" font (8.3 pt) with its spacing


@dataclass(frozen=True)
class Margins:
    """Space around the axes, in inches; ``gap`` between stacked axes."""

    left: float = LEFT_IN
    right: float = RIGHT_IN
    top: float = TOP_IN
    bottom: float = XAXIS_IN
    gap: float = 0.2


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while figures are built and drawn: matplotlib
    allocates some 10^5 objects per chart, and the collections that triggers walked the
    whole heap for ~10 % of the charts' time. The figures' cycles are freed at the next
    collection once it is back on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def figure(
    width: float,
    panel_height: float,
    nrows: int = 1,
    margins: Margins | None = None,
    legend_rows: int = 0,
    sharex: bool = False,
) -> tuple[Any, list[Any]]:
    """A figure of ``nrows`` stacked axes, each ``panel_height`` inches tall, with room for
    ``legend_rows`` rows of legend under the lowest x label (see ``legend_below``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = margins or Margins()
    bottom = m.bottom + (legend_rows * LEGEND_ROW_IN + 0.08 if legend_rows else 0.0)
    height = m.top + bottom + nrows * panel_height + (nrows - 1) * m.gap
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    grid = fig.subplots(
        nrows,
        1,
        sharex=sharex,
        squeeze=False,
        gridspec_kw={
            "left": m.left / width,
            "right": 1 - m.right / width,
            "top": 1 - m.top / height,
            "bottom": bottom / height,
            "hspace": m.gap / panel_height,
        },
    )
    return fig, [row[0] for row in grid]


def legend_rows(entries: int, ncols: int) -> int:
    return -(-entries // max(1, ncols)) if entries else 0


def legend_below(fig: Any, ax: Any, ncols: int) -> None:
    """``ax``'s legend for the whole figure, centred under the lowest x label (in the rows
    ``figure`` reserved), so it covers neither data, limit lines nor the title."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    fig.legend(
        handles,
        labels,
        loc="lower center",
        bbox_to_anchor=(0.5, 0.04 / fig.get_figheight()),
        ncols=ncols,
        fontsize="small",
        frameon=False,
        borderaxespad=0.0,
        borderpad=0.2,
        columnspacing=1.5,
    )


def png_bytes(rgb: np.ndarray, dpi: float = DPI) -> bytes:
    """An 8-bit RGB image (height x width x 3) as a PNG file. Every row unfiltered: a chart
    is mostly runs of one colour, which zlib packs about as small as with Pillow's per-row
    filter choice, in a third of the time."""
    h, w, _ = rgb.shape
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # each row: filter type 0, then pixels
    raw[:, 1:] = rgb.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    per_metre = round(dpi / 0.0254)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)),
            chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1)),
            chunk(b"IDAT", zlib.compress(raw.tobytes(), PNG_COMPRESSION)),
            chunk(b"IEND", b""),
        )
    )


def save_png(fig: Any, path: Path) -> None:
    """Render ``fig`` and write it as an RGB PNG (the figure is opaque: no alpha)."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    path.write_bytes(png_bytes(rgba[..., :3], fig.dpi))


PANEL_GAP = 0.16  # between stacked panels, as a fraction of a panel's height
GRID: dict[str, Any] = {"colors": "#b0b0b0", "linewidths": 0.8, "alpha": 0.3, "zorder": 0.5}
FRAME: dict[str, Any] = {"colors": "black", "linewidths": 0.8, "zorder": 2.5, "clip_on": False}


class Panels:
    """Stacked panels sharing one x axis, drawn in a single Axes: panel i (0 at the top)
    spans [base_i, base_i + 1] in its y coordinates and shows values 0..tops[i]. Each
    panel gets its own frame, y ticks, grid and y label, as separate axes would, at a
    fraction of the cost (an Axes and its tick objects cost ~15 ms each to build and
    draw; a dozen keys made a chart of 12 axes)."""

    def __init__(self, ax: Any, tops: list[float]) -> None:
        self.ax = ax
        self.tops = [t if t > 0 else 1.0 for t in tops]
        n = len(tops)
        self.base = [(n - 1 - i) * (1 + PANEL_GAP) for i in range(n)]
        ax.set_ylim(0, n + (n - 1) * PANEL_GAP)
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
        from matplotlib.ticker import NullLocator

        ax.yaxis.set_major_locator(NullLocator())  # each panel draws its own y ticks

    def y(self, i: int, values: Any) -> np.ndarray:
        """Panel i's values in the Axes' y coordinates."""
        return self.base[i] + np.asarray(values, dtype=np.float64) / self.tops[i]

    def plot(self, series: dict[int, tuple[Any, Any]], **kw: Any) -> None:
        """One series in several panels ({panel: (x, values)}) as a single artist, the
        panels' parts split by NaN: one line per chart rather than per key."""
        parts = [
            (np.append(np.asarray(x, dtype=np.float64), np.nan), np.append(self.y(i, v), np.nan))
            for i, (x, v) in series.items()
        ]
        if parts:
            xs, ys = (np.concatenate(c) for c in zip(*parts, strict=True))
            self.ax.plot(xs, ys, **kw)

    def hlines(self, values: dict[int, float], **kw: Any) -> None:
        """A horizontal line across each panel at its value ({panel: value})."""
        self.plot(
            {i: ([0.0, 1.0], [v, v]) for i, v in values.items()},
            transform=self.ax.get_yaxis_transform(),
            **kw,
        )

    def finish(self, labels: list[str], integer: bool = True) -> None:
        """Frames, y ticks with their labels, grid lines and each panel's y label; call
        after the x limits are set."""
        from matplotlib.collections import LineCollection
        from matplotlib.ticker import MaxNLocator
        from matplotlib.transforms import ScaledTranslation

        ax = self.ax
        fig = ax.figure
        yx = ax.get_yaxis_transform()  # x in axes fractions, y in data
        x0, x1 = ax.get_xlim()
        xticks = [t for t in ax.get_xticks() if x0 <= t <= x1]
        tick_in = 3.5 / 72  # matplotlib's major tick length, 3.5 pt
        frames: list[Any] = []
        grid_h: list[Any] = []
        grid_v: list[Any] = []
        marks: list[float] = []
        tick_text = yx + ScaledTranslation(-(tick_in + 3.5 / 72), 0, fig.dpi_scale_trans)
        label_text = yx + ScaledTranslation(-(LEFT_IN - 0.22), 0, fig.dpi_scale_trans)
        locator = MaxNLocator(nbins=4, integer=integer)
        for i, (top, label) in enumerate(zip(self.tops, labels, strict=True)):
            b = self.base[i]
            frames += [[(0, b), (1, b)], [(0, b + 1), (1, b + 1)]]
            frames += [[(0, b), (0, b + 1)], [(1, b), (1, b + 1)]]
            for v in locator.tick_values(0, top):
                if not -1e-9 <= v <= top * (1 + 1e-9):
                    continue
                y = b + v / top
                grid_h.append([(0, y), (1, y)])
                marks.append(y)
                text = f"{v:,.0f}" if float(v).is_integer() else f"{v:,.6g}"
                ax.text(0, y, text, transform=tick_text, ha="right", va="center")
            grid_v += [[(t, b), (t, b + 1)] for t in xticks]
            ax.text(0, b + 0.5, label, transform=label_text, rotation=90, ha="center", va="center")
        ax.add_collection(LineCollection(frames, transform=yx, **FRAME))
        ax.add_collection(LineCollection(grid_h, transform=yx, **GRID))
        ax.add_collection(LineCollection(grid_v, **GRID))
        # tick marks as matplotlib draws them: a marker reaching left from each tick
        ax.plot(
            np.zeros(len(marks)),
            marks,
            transform=yx,
            linestyle="none",
            marker=0,  # TICKLEFT
            markersize=3.5,
            markeredgewidth=0.8,
            color="black",
            clip_on=False,
        )
