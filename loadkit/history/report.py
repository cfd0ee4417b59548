"""The trend report: ``history report`` (a self-contained HTML page and its PNGs) and
``history show`` (the same as text tables), built from one view of the store."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loadkit.history.store import Store
from loadkit.history.stored import StoredRun
from loadkit.history.trends import (
    KEY_METRICS,
    Change,
    Detection,
    MetricSeries,
    SeriesKey,
    VerdictLine,
    group_series,
    metric_series,
    verdict_lines,
)

REPORT_FILE = "history.html"
MAX_CHANGES_LISTED = 40


@dataclass(frozen=True)
class SeriesView:
    key: SeriesKey
    runs: tuple[StoredRun, ...]
    metrics: dict[str, MetricSeries]
    verdicts: tuple[VerdictLine, ...]

    @property
    def changes(self) -> list[Change]:
        """Every change point of the key metrics, newest first."""
        out = [c for s in self.metrics.values() for c in s.changes]
        return sorted(out, key=lambda c: (-c.run.started_unix, c.metric.name))


def collect(
    store: Store,
    det: Detection,
    scenario: str | None = None,
    since_unix: float | None = None,
    tier: str = "",
) -> list[SeriesView]:
    """Every series (or one scenario's) with its key metrics and verdict lines."""
    runs = store.runs(scenario=scenario, since_unix=since_unix)
    ids = [r.id for r in runs]
    values = store.metric_values(ids, [m.name for m in KEY_METRICS], tier=tier)
    points = store.verdict_points(ids)
    views = []
    for key, series_runs in group_series(runs).items():
        members = {r.id for r in series_runs}
        views.append(
            SeriesView(
                key=key,
                runs=tuple(series_runs),
                metrics={
                    m.name: metric_series(m, series_runs, values[m.name], det) for m in KEY_METRICS
                },
                verdicts=tuple(verdict_lines(series_runs, [p for p in points if p.run in members])),
            )
        )
    return views


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "series"


# chart file suffix -> (title, metrics, y label, scale)
LATENCY_CHARTS = (
    ("ttft", "Time to first token", ("ttft_ms.p50", "ttft_ms.p90", "ttft_ms.p99"), "ms"),
    ("itl", "Inter-token latency", ("itl_ms.p50", "itl_ms.p90", "itl_ms.p99"), "ms"),
    ("e2e", "End-to-end latency", ("e2e_ms.p50", "e2e_ms.p90", "e2e_ms.p99"), "ms"),
)


def write_charts(view: SeriesView, out: Path, prefix: str) -> list[tuple[str, Path]]:
    """PNG charts of one series: (caption, path) for each chart drawn."""
    from loadkit.history import charts

    name = view.key.label
    written: list[tuple[str, Path]] = []
    for suffix, title, names, unit in LATENCY_CHARTS:
        p = charts.metric_chart(
            out / f"{prefix}-{suffix}.png",
            f"{title} — {name}",
            [view.metrics[n] for n in names],
            f"latency ({unit})",
        )
        if p:
            written.append((title, p))
    p = charts.stacked_chart(
        out / f"{prefix}-throughput.png",
        f"Throughput — {name}",
        [
            (view.metrics["requests_per_s"], "requests/s"),
            (view.metrics["output_tokens_per_s"], "output tokens/s"),
        ],
    )
    if p:
        written.append(("Throughput", p))
    p = charts.metric_chart(
        out / f"{prefix}-errors.png",
        f"Error and 429 rates — {name}",
        [view.metrics["error_rate"], view.metrics["throttle_rate"]],
        "% of requests sent",
        scale=100.0,
    )
    if p:
        written.append(("Error and 429 rates", p))
    p = charts.verdict_chart(
        out / f"{prefix}-verdicts.png",
        f"Verdicts night by night — {name}",
        [r.started_unix for r in view.runs],
        [r.verdict for r in view.runs],
        view.verdicts,
    )
    if p:
        written.append(("Verdict timeline", p))
    return written


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1200px;color:#1b1f24;line-height:1.45;padding:0 16px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em}
th,td{border-bottom:1px solid #d0d7de;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.worse{color:#cf222e;font-weight:600}.better{color:#1a7f37;font-weight:600}
.muted{color:#57606a}img{max-width:100%;border:1px solid #d0d7de;margin:6px 0}
code{font-size:.85em}
"""


def _e(x: object) -> str:
    return html.escape(str(x))


def _when(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M")


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _changes_table(view: SeriesView) -> str:
    changes = view.changes
    if not changes:
        return '<p class="muted">No change point in any key metric.</p>'
    rows = []
    for c in changes[:MAX_CHANGES_LISTED]:
        cls = ("worse" if c.worse else "better") if c.big else "muted"
        word = ("worse" if c.worse else "better") + ("" if c.big else " (below minimum)")
        rows.append(
            f"<tr><td>{_e(_when(c.run.started_unix))}</td><td>{_e(c.run.run_id)}</td>"
            f"<td>{_e((c.run.git_commit or '')[:10])}</td><td>{_e(c.metric.name)}</td>"
            f'<td class="num">{_e(_level(c, c.before))}</td>'
            f'<td class="num">{_e(_level(c, c.after))}</td>'
            f'<td class="num {cls}">{_e(_delta(c))}</td><td class="{cls}">{_e(word)}</td>'
            f'<td class="num">{c.pvalue:.2g}</td></tr>'
        )
    more = len(changes) - MAX_CHANGES_LISTED
    tail = f'<p class="muted">… and {more} older change points.</p>' if more > 0 else ""
    return (
        "<table><tr><th>from run started</th><th>run</th><th>commit</th><th>metric</th>"
        "<th>before</th><th>after</th><th>change</th><th></th><th>p-value</th></tr>"
        + "".join(rows)
        + "</table>"
        + tail
    )


def _level(c: Change, v: float) -> str:
    if c.metric.rate:
        return f"{100 * v:.2f}%"
    return f"{v:,.1f} {c.metric.unit}"


def _delta(c: Change) -> str:
    if c.metric.rate:
        return f"{100 * (c.after - c.before):+.2f} pp"
    rel = c.relative
    return f"{100 * rel:+.1f}%" if rel is not None else "from 0"


def _latest_table(view: SeriesView) -> str:
    latest = view.runs[-1]
    cells = []
    for m in KEY_METRICS:
        s = view.metrics[m.name]
        v = s.values[-1] if s.runs and s.runs[-1].id == latest.id else None
        shown = "–" if v is None else f"{100 * v:.2f}%" if m.rate else f"{v:,.1f} {m.unit}"
        cells.append(f"<tr><td>{_e(m.label)}</td><td class='num'>{_e(shown)}</td></tr>")
    return "<table><tr><th>metric</th><th>latest run</th></tr>" + "".join(cells) + "</table>"


def render_html(
    views: Sequence[SeriesView],
    charts: dict[SeriesKey, list[tuple[str, Path]]],
    det: Detection,
    title: str = "loadkit history",
) -> str:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>",
        f"<p class='muted'>Change points: e-divisive means with a t-test (the Hunter / Apache "
        f"Otava method), "
        f"p ≤ {det.max_pvalue:g}, window {det.window} runs; a change counts as big from "
        f"{100 * det.min_magnitude:g}% (rates: {100 * det.min_rate_change:g} percentage "
        f"points). Written {_e(_when(datetime.now(UTC).timestamp()))} UTC.</p>",
    ]
    if not views:
        parts.append("<p>No runs in the history for this selection.</p>")
    for view in views:
        first, last = view.runs[0], view.runs[-1]
        parts.append(
            f"<h2>{_e(view.key.label)}</h2><p>{len(view.runs)} runs from "
            f"{_e(_when(first.started_unix))} to {_e(_when(last.started_unix))} UTC; latest "
            f"run <code>{_e(last.run_id)}</code>"
            + (f" at <code>{_e(last.git_commit[:10])}</code>" if last.git_commit else "")
            + f", verdict <b>{_e(last.verdict)}</b>.</p>"
        )
        parts.append("<h3>Change points</h3>" + _changes_table(view))
        parts.append("<h3>Latest run</h3>" + _latest_table(view))
        for caption, path in charts.get(view.key, []):
            parts.append(f"<h3>{_e(caption)}</h3>{_img(path, caption)}")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(
    store: Store,
    out: Path,
    det: Detection,
    scenario: str | None = None,
    since_unix: float | None = None,
    tier: str = "",
) -> tuple[Path, list[SeriesView]]:
    """Write ``history.html`` and the PNG charts into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    views = collect(store, det, scenario, since_unix, tier)
    charts: dict[SeriesKey, list[tuple[str, Path]]] = {}
    used: set[str] = set()
    for view in views:
        prefix = _slug(view.key.scenario or "series")
        while prefix in used:
            prefix += "-x"
        used.add(prefix)
        charts[view.key] = write_charts(view, out, prefix)
    title = "loadkit history" + (f" — tier {tier}" if tier else "")
    page = out / REPORT_FILE
    page.write_text(render_html(views, charts, det, title), encoding="utf-8")
    return page, views


# -- text (history show) -------------------------------------------------------------------

SHOW_COLUMNS = (
    ("ttft_ms.p99", "TTFT p99"),
    ("itl_ms.p99", "ITL p99"),
    ("e2e_ms.p99", "e2e p99"),
    ("requests_per_s", "req/s"),
    ("error_rate", "err %"),
    ("throttle_rate", "429 %"),
)
VERDICT_LETTERS = {
    "held": "H",
    "possible": "p",
    "violated": "V",
    "inconclusive": ".",
    "unusable": "U",
    "agrees": "H",
    "disagrees": "V",
}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def render_text(views: Sequence[SeriesView], last: int) -> str:
    """Per series: the last runs with key metrics and the change points they start, then
    each limit's verdicts as one letter per night."""
    if not views:
        return "no runs in the history for this selection"
    out = []
    for view in views:
        runs = view.runs[-last:]
        out.append(f"== {view.key.label}: {len(view.runs)} runs, last {len(runs)} shown")
        starts: dict[int, list[str]] = {}
        for c in view.changes:
            mark = ("▲" if c.worse else "▼") if c.big else "·"
            starts.setdefault(c.run.id, []).append(f"{mark}{c.metric.name} {_delta(c)}")
        rows = []
        for r in runs:
            cells = [_when(r.started_unix), r.run_id[:24], (r.git_commit or "")[:8], r.verdict]
            for name, _ in SHOW_COLUMNS:
                s = view.metrics[name]
                v = dict(zip((x.id for x in s.runs), s.values, strict=True)).get(r.id)
                rate = s.metric.rate
                cells.append("–" if v is None else f"{100 * v:.2f}" if rate else f"{v:,.1f}")
            cells.append(", ".join(starts.get(r.id, [])))
            rows.append(cells)
        header = [
            "started (UTC)",
            "run",
            "commit",
            "verdict",
            *[h for _, h in SHOW_COLUMNS],
            "change points starting here (▲ worse ▼ better · small)",
        ]
        out.append(_table(header, rows, right=set(range(4, 4 + len(SHOW_COLUMNS)))))
        if view.verdicts:
            out.append("")
            out.append(
                "limit verdicts, oldest to newest (H held, p possible, V violated, "
                ". inconclusive, U unusable, ? other, blank: none):"
            )
            width = max(len(v.label) for v in view.verdicts)
            n = len(view.runs)
            for line in view.verdicts:
                letters = "".join(
                    " " if w is None else VERDICT_LETTERS.get(w, "?")
                    for w in line.words[n - len(runs) :]
                )
                out.append(f"  {line.label.ljust(width)}  {letters}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
