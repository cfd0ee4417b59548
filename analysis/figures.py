"""Matplotlib figures laid out by fixed margins in inches and written as PNG: what every
chart of a run shares. A layout engine (constrained or tight) measures every tick label
before drawing and cost about half of each chart's time; the charts' margins are known in
advance (labels of a few lines, tick labels of a few digits), so they are set once here.
No pyplot: a Figure on its own Agg canvas is freed with its last reference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DPI = 90
# zlib level 3 writes a chart in about half the time of the default 6, ~10 % larger; the
# alpha channel of an opaque figure is dropped (a quarter less to filter and compress).
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


def save_png(fig: Any, path: Path) -> None:
    """Render ``fig`` and write it as an RGB PNG."""
    from PIL import Image

    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(
        path, format="png", compress_level=PNG_COMPRESSION, dpi=(DPI, DPI)
    )
