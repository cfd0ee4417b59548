"""Capacity sweep results: one row per load step (offered vs achieved throughput, latency
percentiles, SLO misses), the knee of the latency curve, a chart and a table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from loadkit.analysis.summary import Summary

LAT_COLS = (
    ("ttft_ms", "p50"),
    ("ttft_ms", "p99"),
    ("itl_ms", "p99"),
    ("e2e_ms", "p50"),
    ("e2e_ms", "p99"),
)


def step_row(
    step: int,
    value: float,
    unit: str,
    summary: Summary | Mapping[str, Any],
    pattern: str,
    saturation: float,
) -> dict[str, Any]:
    """Reduce one step's summary (typed, or summary.json's dict as ``analyze_run`` returns
    it) to the figures a capacity planner compares: one row of sweep.json."""
    s = summary if isinstance(summary, Summary) else Summary.from_dict(summary)
    achieved = float(s.throughput.requests_per_s)
    keys = max(1, len({lim.key for lim in s.limits}))
    offered = value * keys if pattern != "closed" else None
    row: dict[str, Any] = {
        "step": step,
        "load": value,
        "unit": unit,
        "offered_rps": offered,
        "achieved_rps": achieved,
        "output_tokens_per_s": float(s.throughput.output_tokens_per_s),
        "error_rate": s.errors.error_rate,
        "slo_missed": [c.name for c in s.slo.checks if c.met is False],
    }
    for metric, stat in LAT_COLS:
        row[f"{metric}_{stat}"] = s.latency.table(metric).overall.value(stat)
    row["saturated"] = bool(offered and achieved < saturation * offered)
    return row


def mark_saturation(rows: list[dict[str, Any]]) -> None:
    """Closed loop has no offered rate: call a step saturated when the load grew by at
    least a quarter but throughput grew by less than 5 %."""
    for prev, cur in zip(rows, rows[1:], strict=False):
        if (
            cur["offered_rps"] is None
            and prev["achieved_rps"] > 0
            and cur["load"] >= 1.25 * prev["load"]
            and cur["achieved_rps"] < 1.05 * prev["achieved_rps"]
        ):
            cur["saturated"] = True


def knee_index(x: list[float], y: list[float]) -> int | None:
    """The knee of an increasing latency curve y(x): the point farthest below the chord
    from the first to the last point, after scaling both axes to [0, 1] (the Kneedle idea).
    None with fewer than 3 points or a curve that never bends upward."""
    pts = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None]
    if len(pts) < 3:
        return None
    xs = np.array([p[0] for p in pts], dtype=float)
    ys = np.array([p[1] for p in pts], dtype=float)
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return None
    xn = (xs - xs.min()) / np.ptp(xs)
    yn = (ys - ys.min()) / np.ptp(ys)
    below = xn - yn  # distance under the diagonal of the normalised chord
    i = int(np.argmax(below))
    return i if below[i] > 0.05 else None


def capacity_report(
    rows: list[dict[str, Any]], out_dir: Path, stop_reason: str, name: str
) -> dict[str, Any]:
    mark_saturation(rows)
    loads = [r["load"] for r in rows]
    p99 = [r["e2e_ms_p99"] if r["e2e_ms_p99"] is not None else r["ttft_ms_p99"] for r in rows]
    k = knee_index(loads, p99)
    knee = rows[k] if k is not None else None
    knee_text = (
        f"{knee['load']:g} {knee['unit']} ({knee['achieved_rps']:.1f} req/s, "
        f"e2e p99 {knee['e2e_ms_p99']:.0f} ms)"
        if knee and knee["e2e_ms_p99"]
        else "none found (the curve did not bend within the steps run)"
    )
    table = _table(rows, k)
    report = {
        "schema": "loadkit.sweep/1",
        "name": name,
        "steps": rows,
        "knee_step": knee["step"] if knee else None,
        "knee_text": knee_text,
        "stop_reason": stop_reason,
    }
    (out_dir / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "sweep.md").write_text(table + "\n")
    _chart(rows, k, out_dir / "capacity.png", name)
    report["table"] = table
    return report


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def _table(rows: list[dict[str, Any]], knee: int | None) -> str:
    head = (
        "| step | load | achieved req/s | tokens/s | TTFT p50 | TTFT p99 | ITL p99 | "
        "e2e p50 | e2e p99 (ms) | errors | note |"
    )
    lines = [head, "|" + "---|" * 11]
    for i, r in enumerate(rows):
        notes = []
        if i == knee:
            notes.append("knee")
        if r["saturated"]:
            notes.append("saturated")
        if r["slo_missed"]:
            notes.append("SLO missed: " + ", ".join(r["slo_missed"]))
        lines.append(
            f"| {r['step']} | {r['load']:g} {r['unit']} | {r['achieved_rps']:.1f} | "
            f"{r['output_tokens_per_s']:.0f} | {_fmt(r['ttft_ms_p50'])} | "
            f"{_fmt(r['ttft_ms_p99'])} | {_fmt(r['itl_ms_p99'])} | {_fmt(r['e2e_ms_p50'])} | "
            f"{_fmt(r['e2e_ms_p99'])} | {_fmt(r['error_rate'], '.1%')} | {'; '.join(notes)} |"
        )
    return "\n".join(lines)


def _chart(rows: list[dict[str, Any]], knee: int | None, path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thr = [r["achieved_rps"] for r in rows]
    fig, (ax0, ax) = plt.subplots(1, 2, figsize=(12, 5))
    loads = [r["load"] for r in rows]
    ax0.plot(loads, thr, "o-", label="achieved")
    if all(r["offered_rps"] is not None for r in rows):
        ax0.plot(loads, [r["offered_rps"] for r in rows], "k:", label="offered")
    if knee is not None:
        ax0.axvline(loads[knee], color="crimson", alpha=0.4, label="knee")
    ax0.set_xlabel(f"offered load ({rows[0]['unit'] if rows else ''})")
    ax0.set_ylabel("throughput (requests/s)")
    ax0.set_title("Throughput vs offered load")
    ax0.grid(alpha=0.3)
    ax0.legend()
    for metric, stat, style in (
        ("ttft_ms", "p99", "o--"),
        ("e2e_ms", "p50", "s-"),
        ("e2e_ms", "p99", "o-"),
    ):
        ys = [r[f"{metric}_{stat}"] for r in rows]
        if any(y is not None for y in ys):
            ax.plot(
                thr,
                [np.nan if y is None else y for y in ys],
                style,
                label=f"{metric.removesuffix('_ms').upper()} {stat}",
            )
    if knee is not None and rows[knee]["e2e_ms_p99"] is not None:
        r = rows[knee]
        ax.axvline(r["achieved_rps"], color="crimson", alpha=0.4)
        ax.annotate(
            f"knee: {r['load']:g} {r['unit']}",
            (r["achieved_rps"], r["e2e_ms_p99"]),
            textcoords="offset points",
            xytext=(-10, 12),
            ha="right",
            color="crimson",
        )
    ax.set_xlabel("achieved throughput (requests/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency vs achieved throughput")
    fig.suptitle(f"Capacity sweep: {name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
