"""Analysis of one run directory: metrics, limit verdicts, SLO checks, the overall verdict,
and the files written beside the records (summary.json, charts, report.html)."""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loadkit.analysis.arrival import arrival_curve
from loadkit.analysis.columns import Columns, UnusableInput, load_run
from loadkit.analysis.explain import explain
from loadkit.analysis.metrics import MetricValues, latency_summary, metric_values
from loadkit.analysis.promises import remaining_header_check, retry_after_check
from loadkit.analysis.slo import Slo, evaluate_slos, merge_slos, parse_slo_arg, slos_from_run
from loadkit.analysis.throughput import errors_summary, throughput_summary
from loadkit.analysis.verdicts import (
    HELD,
    INCONCLUSIVE,
    POSSIBLE,
    VIOLATED,
    KeyView,
    Policy,
    VerdictSettings,
    concurrency_verdict,
    key_view,
    requests_verdict,
)

from loadkit.runmeta import RunMeta

SUMMARY_SCHEMA = "loadkit.summary/1"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"


@dataclass
class KeyAnalysis:
    label: str
    tier: str
    policy: Policy
    view: KeyView


@dataclass
class Analysis:
    """Everything the charts and the report draw from, besides the summary dict."""

    meta: RunMeta
    cols: Columns
    values: dict[str, MetricValues]
    keys: list[KeyAnalysis] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _tier_of_keys(meta: RunMeta, cols: Columns) -> dict[str, str]:
    """Each key label's tier: run.json's keys first, else the records' most common tier."""
    tiers: dict[str, str] = {
        k["label"]: k["tier"] for k in meta.keys if "label" in k and "tier" in k
    }
    for code, label in enumerate(cols.key.names):
        if label in tiers:
            continue
        t = cols.tier.codes[cols.key.codes == code]
        t = t[t >= 0]
        if t.size:
            tiers[label] = cols.tier.names[Counter(t.tolist()).most_common(1)[0][0]]
    return tiers


def limit_verdicts(
    meta: RunMeta, cols: Columns, settings: VerdictSettings
) -> tuple[list[dict[str, Any]], dict[str, Any], list[KeyAnalysis], list[str]]:
    """The ``limits`` entries (two per key: requests, concurrency), arrival curves by key,
    the per-key views, and notes about keys that could not be judged."""
    tiers = _tier_of_keys(meta, cols)
    policies: dict[str, Policy] = {}
    for t, d in meta.tiers.items():
        try:
            policies[t] = Policy.from_dict(t, d)
        except ValueError as exc:
            raise UnusableInput(str(exc)) from None
    entries: list[dict[str, Any]] = []
    arrival: dict[str, Any] = {}
    keys: list[KeyAnalysis] = []
    notes: list[str] = []
    tier_rank = {t: i for i, t in enumerate(meta.tiers)}

    def order(item: tuple[int, str]) -> tuple[int, str, int, str]:
        # Tiers as the scenario lists them, then labels in natural order (free-2 < free-10).
        label = item[1]
        stem, _, num = label.rpartition("-")
        n = int(num) if num.isdigit() else -1
        return (tier_rank.get(tiers.get(label, ""), len(tier_rank)), stem or label, n, label)

    for code, label in sorted(enumerate(cols.key.names), key=order):
        tier = tiers.get(label)
        kv = key_view(cols, code)
        if kv.n == 0:
            continue
        if tier is None or tier not in policies:
            notes.append(
                f"key {label}: tier {tier!r} has no promised limits in run.json; not judged"
            )
            continue
        policy = policies[tier]
        keys.append(KeyAnalysis(label, tier, policy, kv))
        head = {"tier": tier, "key": label}
        req = head | requests_verdict(kv, policy, settings, cols.ids)
        req["retry_after"] = retry_after_check(kv, settings.max_examples, cols.ids)
        req["remaining_header"] = remaining_header_check(
            kv, policy, settings.max_examples, cols.ids
        )
        conc = head | concurrency_verdict(kv, policy, settings, cols.ids)
        for e in (req, conc):
            e["explanation"] = explain(e)
            entries.append(e)
        arrival[label] = arrival_curve(kv, policy)
    for k in meta.keys:
        if k.get("label") not in cols.key.names:
            notes.append(f"key {k.get('label')}: in run.json but sent no requests")
    return entries, arrival, keys, notes


def overall_verdict(limits: list[dict[str, Any]], slo: dict[str, Any]) -> tuple[str, list[str]]:
    """fail on any violated verdict or missed SLO; pass when nothing failed and at least one
    limit verdict held (what could not be shown either way is listed with it); inconclusive
    when no limit verdict held, i.e. the load never provoked any promise. Returns the
    verdict and the reasons."""
    fails, doubts = [], []
    held = 0
    for e in limits:
        who = f"{e['key']} {e['kind']}"
        for aspect in ("enforced", "honoured"):
            if e[aspect] == VIOLATED:
                fails.append(f"{who}: not {aspect}")
            elif e[aspect] == HELD:
                held += 1
            elif e[aspect] in (POSSIBLE, INCONCLUSIVE):
                doubts.append(f"{who} {aspect}: {e[aspect]}")
        ra = e.get("retry_after")
        if ra and ra["verdict"] == VIOLATED:
            fails.append(f"{who}: Retry-After promise broken {ra['broken']} times")
    for c in slo["checks"]:
        if c["met"] is False:
            fails.append(
                f"SLO {c['name']} missed: {c['observed']:.4g} vs {c['direction']} "
                f"{c['threshold']:g}"
            )
        elif c["met"] is None:
            doubts.append(f"SLO {c['name']}: no data")
    if not limits:
        doubts.append("no limit could be judged (no requests to limited endpoints with a promise)")
    if fails:
        return "fail", fails + doubts
    if not held:
        return "inconclusive", [
            "no limit verdict held: the offered load never provoked a promise",
            *doubts,
        ]
    if doubts:
        return "pass", [
            f"no violation and every SLO met; {held} verdicts held, "
            f"{len(doubts)} could not be shown either way:",
            *doubts,
        ]
    return "pass", ["every limit verdict held and every SLO was met"]


def run_info(meta: RunMeta, cols: Columns) -> dict[str, Any]:
    return {
        "run_id": meta.run_id,
        "engine": meta.engine,
        "target": meta.target,
        "scenario": meta.scenario_name,
        "started_at": meta.to_dict().get("started_at"),
        "duration_s": meta.duration_s,
        "interrupted": meta.interrupted,
        "stop_reason": meta.stop_reason,
        "warmup_s": meta.warmup_s,
        "workers": [
            {"worker": w.worker, "records": w.records, "status": w.status, "detail": w.detail}
            for w in meta.workers
        ],
        "records": cols.n,
        "last_record_end_s": float(np.max(cols.end)) if cols.n else None,
        "loadkit_version": meta.loadkit_version,
    }


def clean_json(x: Any) -> Any:
    """Plain JSON values: numpy scalars to Python, NaN/inf to null."""
    if isinstance(x, dict):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def parse_overrides(slo_overrides: list[str] | None) -> list[Slo]:
    return [parse_slo_arg(s) for s in (slo_overrides or [])]


def analyse(
    meta: RunMeta,
    cols: Columns,
    overrides: list[Slo] | None = None,
    settings: VerdictSettings | None = None,
) -> Analysis:
    """The pure part: summary dict and chart inputs from run metadata and records."""
    settings = settings or VerdictSettings()
    try:
        run_slos = slos_from_run(meta.slo)
    except ValueError as exc:
        raise UnusableInput(f"run.json slo: {exc}") from None
    warmup = float(meta.warmup_s or 0.0)
    values = metric_values(cols, warmup)
    limits, arrival, keys, notes = limit_verdicts(meta, cols, settings)
    summary: dict[str, Any] = {
        "schema": SUMMARY_SCHEMA,
        "run": run_info(meta, cols),
        "verdict": None,
        "verdict_reasons": [],
        "settings": settings.to_dict()
        | {
            "latency_records": "status 200, no transport error, sent at or after warmup_s",
            "percentile_method": "numpy linear interpolation on raw values",
        },
        "limits": limits,
        "limit_notes": notes,
        "arrival": arrival,
        "latency": latency_summary(cols, values),
        "throughput": throughput_summary(cols, values, dict(meta.goodput or {}), warmup),
        "errors": errors_summary(cols, warmup),
    }
    summary["slo"] = evaluate_slos(merge_slos(run_slos, overrides or []), summary)
    verdict, reasons = overall_verdict(limits, summary["slo"])
    if meta.interrupted:
        reasons.append(
            "the run was interrupted: figures cover the records written before it stopped"
        )
    summary["verdict"], summary["verdict_reasons"] = verdict, reasons
    return Analysis(meta=meta, cols=cols, values=values, keys=keys, summary=clean_json(summary))


def analyze_run(
    run_dir: str | os.PathLike[str],
    slo_overrides: list[str] | None = None,
    charts: bool = True,
    settings: VerdictSettings | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Analyse a run directory and write summary.json (and, with ``charts``, the PNG charts
    and report.html) into it. Raises UnusableInput or SloSyntaxError on bad input.
    ``timings``, when given, receives the seconds spent in each stage."""
    clock = time.perf_counter
    t0 = clock()
    overrides = parse_overrides(slo_overrides)
    meta, cols = load_run(run_dir)
    t1 = clock()
    result = analyse(meta, cols, overrides, settings)
    t2 = clock()
    out = Path(run_dir)
    summary = result.summary
    if charts:
        from loadkit.analysis.charts import write_charts
        from loadkit.analysis.report import write_report

        summary["charts"] = write_charts(result, out)
        summary["report"] = REPORT_FILE
        write_report(result, out)
    else:
        summary["charts"], summary["report"] = [], None
    t3 = clock()
    tmp = out / (SUMMARY_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / SUMMARY_FILE)
    if timings is not None:
        timings.update(
            read_s=t1 - t0,
            analyse_s=t2 - t1,
            charts_report_s=t3 - t2,
            write_summary_s=clock() - t3,
            total_s=clock() - t0,
        )
    return summary
