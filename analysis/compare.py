"""``loadkit compare BASE NEW``: per-metric change with a seeded bootstrap confidence
interval on the raw values, limit verdicts that got worse, JUnit XML; exit 1 on a
regression (worse beyond its threshold AND statistically significant)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from loadkit.analysis.columns import Columns, UnusableInput, load_run
from loadkit.analysis.junit import Case, write_junit
from loadkit.analysis.metrics import INFERENCE_ENDPOINTS, LATENCY_METRICS, metric_values
from loadkit.analysis.stats import bootstrap_changes
from loadkit.analysis.throughput import bin_width, measured_span, output_tokens, succeeded

COMPARED_STATS = ("p50", "p95", "p99")
THROUGHPUT_METRICS = ("requests_per_s", "output_tokens_per_s")
DEFAULT_THRESHOLD_PCT = 10.0
EXIT_OK, EXIT_REGRESSION, EXIT_INPUT = 0, 1, 2


class ThresholdSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class RunSample:
    """What compare needs of one run: its summary and raw metric values."""

    path: Path
    summary: dict[str, Any]
    latency: dict[str, np.ndarray]
    throughput: dict[str, np.ndarray]  # per-bin rates


def parse_thresholds(items: list[str]) -> dict[str, float]:
    """``ttft_ms.p99=10`` (percent worse allowed), ``requests_per_s=5``, ``default=15``."""
    out: dict[str, float] = {}
    valid = {f"{m}.{s}" for m in LATENCY_METRICS for s in COMPARED_STATS}
    valid |= set(THROUGHPUT_METRICS) | {"default"}
    for item in items:
        name, sep, val = item.partition("=")
        name = name.strip().replace("p99.9", "p99_9")
        if not sep:
            raise ThresholdSyntaxError(f"--threshold {item!r}: expected METRIC.STAT=PCT")
        if name not in valid:
            raise ThresholdSyntaxError(
                f"--threshold {item!r}: unknown metric (one of {', '.join(sorted(valid))})"
            )
        try:
            pct = float(val.strip().rstrip("%"))
        except ValueError:
            raise ThresholdSyntaxError(f"--threshold {item!r}: {val!r} is not a number") from None
        if not pct >= 0:
            raise ThresholdSyntaxError(f"--threshold {item!r}: must be >= 0")
        out[name] = pct
    return out


def _rates(cols: Columns, warmup_s: float) -> dict[str, np.ndarray]:
    """Per-bin request and output-token rates over the measured span (the samples for the
    throughput comparison)."""
    t0, t1 = measured_span(cols, warmup_s)
    width = bin_width(t1 - t0, max_bins=600)
    nbins = max(1, int((t1 - t0) // width))
    ok = succeeded(cols) & (cols.send >= warmup_s)
    idx = ((cols.end[ok] - t0) // width).astype(np.int64)
    keep = (idx >= 0) & (idx < nbins)
    tokens = np.nan_to_num(output_tokens(cols)[ok])
    return {
        "requests_per_s": np.bincount(idx[keep], minlength=nbins) / width,
        "output_tokens_per_s": np.bincount(idx[keep], weights=tokens[keep], minlength=nbins)
        / width,
    }


def load_sample(run_dir: str) -> RunSample:
    path = Path(run_dir)
    meta, cols = load_run(path)
    summary_path = path / "summary.json"
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UnusableInput(f"{summary_path}: not JSON ({exc.msg})") from None
    else:
        from loadkit.analysis.summary import analyse

        summary = analyse(meta, cols).summary
    warmup = float(meta.warmup_s or 0.0)
    values = metric_values(cols, warmup)
    inference = cols.endpoint.isin(INFERENCE_ENDPOINTS)
    latency = {m: values[m].values[inference[values[m].rows]] for m in LATENCY_METRICS}
    return RunSample(path, summary, latency, _rates(cols, warmup))


def compare_metrics(
    base: RunSample, new: RunSample, thresholds: dict[str, float], seed: int = 0
) -> list[dict[str, Any]]:
    default = thresholds.get("default", DEFAULT_THRESHOLD_PCT)
    rows = []
    for i, m in enumerate(LATENCY_METRICS):
        res = bootstrap_changes(base.latency[m], new.latency[m], COMPARED_STATS, seed=seed + i)
        for stat, r in res.items():
            rows.append(
                _judge(
                    f"{m}.{stat}", r, thresholds.get(f"{m}.{stat}", default), higher_is_worse=True
                )
            )
    for j, m in enumerate(THROUGHPUT_METRICS):
        r = bootstrap_changes(
            base.throughput[m], new.throughput[m], ("mean",), seed=seed + 100 + j
        )["mean"]
        if r["base"] is not None:  # the summary's exact figures, CI from the per-bin rates
            r["base"] = base.summary["throughput"][m]
            r["new"] = new.summary["throughput"][m]
            if r["base"]:
                r["change"] = r["new"] / r["base"] - 1.0
        rows.append(_judge(m, r, thresholds.get(m, default), higher_is_worse=False))
    return rows


def _judge(name: str, r: dict[str, Any], pct: float, higher_is_worse: bool) -> dict[str, Any]:
    row = {
        "metric": name,
        "threshold_pct": pct,
        **r,
        "significant": False,
        "regression": False,
        "status": "no data",
    }
    if r["change"] is None or r["ci_low"] is None:
        return row
    worse = r["change"] if higher_is_worse else -r["change"]
    significant = r["ci_low"] > 0 if higher_is_worse else r["ci_high"] < 0
    better_sig = r["ci_high"] < 0 if higher_is_worse else r["ci_low"] > 0
    row["significant"] = bool(significant or better_sig)
    row["regression"] = bool(significant and worse * 100 > pct)
    row["status"] = (
        "regression"
        if row["regression"]
        else "improved"
        if better_sig
        else "worse (within threshold)"
        if significant
        else "no significant change"
    )
    return row


def compare_verdicts(base: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Every limit verdict of NEW, with BASE's for the same key and kind; held -> violated is a
    regression."""
    old = {(e["key"], e["kind"]): e for e in base.get("limits", [])}
    out = []
    for e in new.get("limits", []):
        b = old.get((e["key"], e["kind"]), {})
        aspects = [
            ("enforced", e["enforced"], b.get("enforced")),
            ("honoured", e["honoured"], b.get("honoured")),
        ]
        if e["kind"] == "requests" and "retry_after" in e:
            aspects.append(
                (
                    "retry_after",
                    e["retry_after"]["verdict"],
                    (b.get("retry_after") or {}).get("verdict"),
                )
            )
        for aspect, now, before in aspects:
            out.append(
                {
                    "key": e["key"],
                    "tier": e["tier"],
                    "kind": e["kind"],
                    "aspect": aspect,
                    "base": before,
                    "new": now,
                    "regression": before == "held" and now == "violated",
                    "violated": now == "violated",
                }
            )
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f}%"


def render(metrics: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> str:
    lines = [f"{'metric':<26} {'base':>10} {'new':>10} {'change':>8} {'95% CI':>20}  status"]
    for r in metrics:
        base = "-" if r["base"] is None else f"{r['base']:.4g}"
        new = "-" if r["new"] is None else f"{r['new']:.4g}"
        ci = f"[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}]"
        lines.append(
            f"{r['metric']:<26} {base:>10} {new:>10} {_pct(r['change']):>8} {ci:>20}  "
            f"{r['status'].upper() if r['regression'] else r['status']}"
        )
    if verdicts:
        lines.append("")
        for v in verdicts:
            mark = "REGRESSION" if v["regression"] else ("violated" if v["violated"] else "")
            lines.append(
                f"{v['key']:<16} {v['kind']:<12} {v['aspect']:<12} {v['base'] or '-':>12}"
                f" -> {v['new']:<12} {mark}"
            )
    return "\n".join(lines)


def junit_cases(metrics: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> list[Case]:
    cases = []
    for v in verdicts:
        fail = None
        if v["violated"]:
            fail = f"{v['kind']} limit {v['aspect']}: violated" + (
                " (held in BASE)" if v["regression"] else ""
            )
        cases.append(
            Case(
                "limits",
                f"limits.{v['key']}",
                f"{v['kind']} {v['aspect']}",
                fail,
                kind="violation",
                detail=f"base={v['base']} new={v['new']}",
            )
        )
    for r in metrics:
        detail = (
            f"base={r['base']} new={r['new']} change={_pct(r['change'])} "
            f"ci=[{_pct(r['ci_low'])}, {_pct(r['ci_high'])}] threshold={r['threshold_pct']}%"
        )
        fail = f"{r['metric']} regressed {_pct(r['change'])}" if r["regression"] else None
        cases.append(Case("metrics", "metrics", r["metric"], fail, detail=detail))
    return cases


def compare_runs(
    base_dir: str, new_dir: str, thresholds: list[str] | None = None, seed: int = 0
) -> dict[str, Any]:
    """The comparison as a dict (library entry point); raises UnusableInput /
    ThresholdSyntaxError on bad input."""
    parsed = parse_thresholds(thresholds or [])
    base, new = load_sample(base_dir), load_sample(new_dir)
    metrics = compare_metrics(base, new, parsed, seed)
    verdicts = compare_verdicts(base.summary, new.summary)
    regressions = [r["metric"] for r in metrics if r["regression"]]
    regressions += [f"{v['key']} {v['kind']} {v['aspect']}" for v in verdicts if v["regression"]]
    return {
        "base": str(base_dir),
        "new": str(new_dir),
        "metrics": metrics,
        "verdicts": verdicts,
        "regressions": regressions,
    }


def compare_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Entry point of ``loadkit compare BASE NEW``."""
    out = out or sys.stdout
    try:
        result = compare_runs(args.base, args.new, list(getattr(args, "threshold", []) or []))
    except (UnusableInput, ThresholdSyntaxError) as exc:
        print(f"loadkit compare: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(render(result["metrics"], result["verdicts"]), file=out)
    junit = getattr(args, "junit", None)
    if junit:
        try:
            write_junit(junit, junit_cases(result["metrics"], result["verdicts"]))
        except OSError as exc:
            print(f"loadkit compare: cannot write {junit}: {exc}", file=sys.stderr)
            return EXIT_INPUT
    if result["regressions"]:
        print("REGRESSION: " + ", ".join(result["regressions"]), file=out)
        return EXIT_REGRESSION
    print("no regression", file=out)
    return EXIT_OK
