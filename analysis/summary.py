"""Analysis of one run directory: metrics, limit verdicts, SLO checks, the overall verdict
as one typed ``Summary``, and the files written beside the records (summary.json, charts,
report.html)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from loadkit.analysis.arrival import ArrivalCurve, arrival_curve
from loadkit.analysis.codec import FormatError, JsonRecord, omit_none
from loadkit.analysis.columns import Columns, UnusableInput, load_run
from loadkit.analysis.completeness import (
    LOST,
    Completeness,
    completeness,
    interrupted_text,
    unrecorded_requests,
)
from loadkit.analysis.explain import explain_concurrency, explain_requests
from loadkit.analysis.ingest import limit_arenas
from loadkit.analysis.limits import ConcurrencyLimit, Limit, RequestsLimit
from loadkit.analysis.metrics import Latency, MetricValues, latency_summary, metric_values
from loadkit.analysis.outcome import RunVerdict, Verdict
from loadkit.analysis.overall import overall_verdict as overall_verdict  # re-exported
from loadkit.analysis.overall import run_outcome
from loadkit.analysis.promises import remaining_header_check, retry_after_check
from loadkit.analysis.slo import (
    Observed,
    Slo,
    SloResult,
    evaluate_slos,
    merge_slos,
    parse_slo_arg,
    slos_from_run,
)
from loadkit.analysis.throughput import Errors, Throughput, errors_summary, throughput_summary
from loadkit.analysis.token_verdicts import TokenLimit, token_limits
from loadkit.analysis.usability import KeyAnswers, key_answers
from loadkit.analysis.verdicts import (
    IdLookup,
    KeyView,
    ModelPolicy,
    Policy,
    VerdictSettings,
    concurrency_verdict,
    key_view,
    model_policies,
    model_view,
    requests_verdict,
    rows_by_key,
    view_of_rows,
)
from loadkit.runmeta import RunMeta

SUMMARY_SCHEMA = "loadkit.summary/2"
SUMMARY_V1 = "loadkit.summary/1"
#: Every schema ``read_summary`` reads (version 2 only added fields and verdict values).
READABLE_SUMMARIES = (SUMMARY_V1, SUMMARY_SCHEMA)
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
LATENCY_RECORDS = "status 200, no transport error, sent at or after warmup_s"
PERCENTILE_METHOD = "numpy linear interpolation on raw values"


@dataclass(frozen=True)
class WorkerSummary(JsonRecord):
    worker: str
    records: int
    status: str
    detail: str


@dataclass(frozen=True)
class RunInfo(JsonRecord):
    """summary.json's ``run``: which run this is and how it ended."""

    run_id: str
    engine: str
    target: str
    scenario: str
    started_at: str | None
    duration_s: float | None
    interrupted: bool
    stop_reason: str
    warmup_s: float
    workers: tuple[WorkerSummary, ...]
    records: int
    last_record_end_s: float | None
    loadkit_version: str


@dataclass(frozen=True)
class SummarySettings(JsonRecord):
    """The verdicts' tolerances and how latency figures were computed."""

    concurrency_margin_s: float
    under_admission_tolerance: float
    burst_window_s: float
    latency_records: str = LATENCY_RECORDS
    percentile_method: str = PERCENTILE_METHOD
    # summary/2, added with the limits' ``tolerance``: the largest shortfall of the span,
    # as a fraction of the window, that a held requests verdict accepts
    max_shortfall_fraction: float | None = omit_none()

    @classmethod
    def of(cls, settings: VerdictSettings) -> SummarySettings:
        return cls(
            concurrency_margin_s=settings.concurrency_margin_s,
            under_admission_tolerance=settings.under_admission_tolerance,
            burst_window_s=settings.burst_window_s,
            max_shortfall_fraction=settings.max_shortfall_fraction,
        )


@dataclass(frozen=True)
class Summary(JsonRecord):
    """summary.json (``loadkit.summary/2``; a version-1 file reads with ``headline``,
    ``completeness`` and ``keys`` None). ``charts`` and ``report`` are None until the files
    beside it are written (``summarize_run``); then ``report`` may stay None."""

    schema: str
    run: RunInfo
    verdict: RunVerdict
    # Keyword-only from here: the fields version 2 added sit where they belong in the
    # document, between fields without defaults.
    _: KW_ONLY
    headline: str | None = omit_none()  # summary/2
    verdict_reasons: tuple[str, ...]
    completeness: Completeness | None = omit_none()  # summary/2
    keys: tuple[KeyAnswers, ...] | None = omit_none()  # summary/2
    settings: SummarySettings
    limits: tuple[Limit, ...]
    limit_notes: tuple[str, ...]
    arrival: dict[str, ArrivalCurve]
    latency: Latency
    throughput: Throughput
    errors: Errors
    slo: SloResult
    # Token and per-day promises (``token_verdicts``); absent from summaries before them.
    tokens: tuple[TokenLimit, ...] | None = omit_none()
    charts: tuple[str, ...] | None = omit_none()
    report: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.charts is None:
            d.pop("report")
        return d

    def to_json(self) -> str:
        """The bytes of summary.json."""
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> Summary:
        schema = data.get("schema") if isinstance(data, Mapping) else None
        if schema not in READABLE_SUMMARIES:
            raise FormatError(
                f"unsupported summary schema {schema!r} "
                f"(this loadkit reads {', '.join(READABLE_SUMMARIES)})"
            )
        return super().from_dict(data, path)

    def gaps(self) -> tuple[str, ...]:
        """Why this run cannot stand for its target: the unusable keys and what is missing
        from its records (empty for a complete, usable run). A version-1 summary has only
        run.interrupted and the workers' status to go by."""
        if self.verdict in (RunVerdict.ERROR, RunVerdict.INCOMPLETE):
            problems = [k.problem for k in self.keys or () if k.problem]
            if self.completeness is not None:
                problems += self.completeness.reasons
            return tuple(problems) or (self.headline or str(self.verdict),)
        if self.completeness is None:
            old = []
            if self.run.interrupted:
                old.append(interrupted_text(self.run.stop_reason))
            old += [f"worker {w.worker} {w.status}" for w in self.run.workers if w.status in LOST]
            return tuple(old)
        return ()


def read_summary(path: str | os.PathLike[str]) -> Summary:
    """A summary.json written by this or an earlier loadkit of the same schema; UnusableInput
    naming the file and the first field that does not fit otherwise."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UnusableInput(f"{p}: not JSON ({exc.msg})") from None
    except OSError as exc:
        raise UnusableInput(f"{p}: cannot read ({exc.strerror})") from None
    try:
        return Summary.from_dict(data)
    except FormatError as exc:
        raise UnusableInput(f"{p}: {exc}") from None


@dataclass(frozen=True)
class KeyAnalysis:
    """A judged key, for the charts: its rows to the limited endpoints, not its view (at
    10 M records the views are ~80 bytes a request); ``view`` gathers it again."""

    label: str
    tier: str
    policy: Policy
    rows: np.ndarray

    def view(self, cols: Columns) -> KeyView:
        return view_of_rows(cols, self.rows)


@dataclass(frozen=True)
class Analysis:
    """Everything the charts and the report draw from: the summary and the raw values."""

    meta: RunMeta
    cols: Columns
    values: dict[str, MetricValues]
    keys: tuple[KeyAnalysis, ...]
    summary: Summary


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


def key_order(
    meta: RunMeta, tiers: Mapping[str, str]
) -> Callable[[str], tuple[int, str, int, str]]:
    """Sort key of labels: tiers as the scenario lists them, then labels in natural order
    (free-2 < free-10)."""
    tier_rank = {t: i for i, t in enumerate(meta.tiers)}

    def order(label: str) -> tuple[int, str, int, str]:
        stem, _, num = label.rpartition("-")
        n = int(num) if num.isdigit() else -1
        return (tier_rank.get(tiers.get(label, ""), len(tier_rank)), stem or label, n, label)

    return order


@dataclass(frozen=True)
class LimitFindings:
    """What ``limit_verdicts`` found: the ``limits`` entries (two per key: requests,
    concurrency; then one per model's own request window or concurrency), arrival curves
    by key, the per-key views, and notes about keys that could not be judged."""

    limits: tuple[Limit, ...]
    arrival: dict[str, ArrivalCurve]
    keys: tuple[KeyAnalysis, ...]
    notes: tuple[str, ...]


_Entry = TypeVar("_Entry", bound=RequestsLimit | ConcurrencyLimit | TokenLimit)


def _refusals_unjudged(e: _Entry, why: str) -> _Entry:
    """An entry whose refusals looked unjustified on records that may lack requests
    (``why``): those verdicts (honoured, Retry-After, a token limit's reset) become
    inconclusive, never a violation; what the recorded admissions prove stays."""
    bad, unknown = Verdict.VIOLATED, Verdict.INCONCLUSIVE
    changes: dict[str, Any] = {}
    if e.verdict.honoured is bad:
        changes["verdict"] = replace(e.verdict, honoured=unknown)
    if isinstance(e, RequestsLimit) and e.retry_after.verdict is bad:
        changes["retry_after"] = replace(e.retry_after, verdict=unknown)
    if isinstance(e, TokenLimit) and e.reset.verdict is bad:
        changes["reset"] = replace(e.reset, verdict=unknown)
    if not changes:
        return e
    note = (
        f"Refusals NOT JUDGED: {why}, and such requests may have filled the window or the "
        "cap when the refusals that look unjustified here were made: inconclusive, not "
        "violated."
    )
    return replace(e, explanation=(*e.explanation, note), **changes)


def _unusable(e: Limit, problem: str) -> Limit:
    """The entry of a key whose answers are not evidence: every verdict ``unusable``, the
    counts kept, the reason as its explanation."""
    explanation = (
        f"UNUSABLE: {problem}",
        "No verdict: these answers are not the API's, so they say nothing about its limits.",
    )
    u = Verdict.UNUSABLE
    if isinstance(e, RequestsLimit):
        return replace(
            e,
            verdict=replace(e.verdict, enforced=u, honoured=u),
            retry_after=replace(e.retry_after, verdict=u),
            explanation=explanation,
        )
    return replace(e, verdict=replace(e.verdict, enforced=u, honoured=u), explanation=explanation)


def model_limits(
    cols: Columns,
    code: int,
    label: str,
    tier: str,
    models: Sequence[ModelPolicy],
    settings: VerdictSettings,
    ids: IdLookup | None = None,
) -> list[Limit]:
    """The entries of each model's own request window and concurrency for one key: the
    key's verdicts, computed on its requests to the model (``model_view``), whose own
    refusals are the model-scoped 429s. No remaining-header check: the
    ``x-ratelimit-*-requests`` headers describe the key's limit."""
    ids = ids or cols.ids
    out: list[Limit] = []
    for mp in models:
        mv = model_view(cols, code, mp.model)
        scope = (
            f"Model {mp.model}'s own promise (tiers.{tier}.models.{mp.model}), judged on "
            f"this key's {mv.n} requests to it."
        )
        if mp.requests:
            req = requests_verdict(mv, mp.policy, settings, ids)
            ra = retry_after_check(mv, settings.max_examples, ids)
            why = explain_requests(req, ra, None, refusals="model_rate_limit_exceeded")
            out.append(
                RequestsLimit(
                    tier,
                    label,
                    model=mp.model,
                    verdict=req,
                    retry_after=ra,
                    explanation=(scope, *why),
                )
            )
        if mp.concurrency:
            conc = concurrency_verdict(mv, mp.policy, settings, ids)
            out.append(
                ConcurrencyLimit(
                    tier,
                    label,
                    model=mp.model,
                    verdict=conc,
                    explanation=(scope, *explain_concurrency(conc)),
                )
            )
    return out


def id_lookup(cols: Columns) -> IdLookup:
    """``cols.ids``, a few rows (a list of examples) read one value at a time from their
    chunks of the request ids: a ``take`` on the chunked column costs milliseconds per
    call, whatever the number of rows."""
    chunks = cols.request_id.chunks
    offsets = np.cumsum([0] + [len(c) for c in chunks])

    def ids(rows: np.ndarray) -> list[str]:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return []
        if rows.size > 64:  # evidence of a whole window: one take pays for itself
            return cols.ids(rows)
        chunk = np.searchsorted(offsets, rows, side="right") - 1
        return [
            str(chunks[c][r - int(offsets[c])].as_py())
            for c, r in zip(chunk.tolist(), rows.tolist(), strict=True)
        ]

    return ids


def limit_verdicts(
    meta: RunMeta,
    cols: Columns,
    settings: VerdictSettings,
    unusable: Mapping[str, str] | None = None,
    tiers: Mapping[str, str] | None = None,
) -> LimitFindings:
    """Every judged key's limit entries, in the scenario's tier order and natural key order.
    ``unusable``: key label -> why its answers are not evidence (its verdicts are
    ``unusable``); ``tiers``: each key's tier, when the caller has them already."""
    unusable = unusable or {}
    tiers = _tier_of_keys(meta, cols) if tiers is None else tiers
    policies: dict[str, Policy] = {}
    by_model: dict[str, tuple[ModelPolicy, ...]] = {}
    for t, d in meta.tiers.items():
        try:
            policies[t] = Policy.from_dict(t, d)
            by_model[t] = model_policies(t, d, policies[t])
        except ValueError as exc:
            raise UnusableInput(str(exc)) from None
    ids = id_lookup(cols)
    entries: list[Limit] = []
    arrival: dict[str, ArrivalCurve] = {}
    keys: list[KeyAnalysis] = []
    notes: list[str] = []
    by_order = key_order(meta, tiers)
    key_rows = rows_by_key(cols)
    for code, label in sorted(enumerate(cols.key.names), key=lambda item: by_order(item[1])):
        tier = tiers.get(label)
        kv = key_view(cols, code, key_rows[code])
        if kv.n == 0:
            continue
        if tier is None or tier not in policies:
            notes.append(
                f"key {label}: tier {tier!r} has no promised limits in run.json; not judged"
            )
            continue
        policy = policies[tier]
        keys.append(KeyAnalysis(label, tier, policy, kv.rows))
        req = requests_verdict(kv, policy, settings, ids)
        ra = retry_after_check(kv, settings.max_examples, ids)
        rh = remaining_header_check(kv, policy, settings.max_examples, ids)
        conc = concurrency_verdict(kv, policy, settings, ids)
        mine: list[Limit] = [
            RequestsLimit(
                tier,
                label,
                verdict=req,
                retry_after=ra,
                remaining_header=rh,
                explanation=tuple(explain_requests(req, ra, rh)),
            ),
            ConcurrencyLimit(
                tier, label, verdict=conc, explanation=tuple(explain_concurrency(conc))
            ),
        ]
        mine += model_limits(cols, code, label, tier, by_model[tier], settings, ids)
        problem = unusable.get(label)
        if problem is not None:
            mine = [_unusable(e, problem) for e in mine]
        entries.extend(mine)
        arrival[label] = arrival_curve(kv, policy)
        kv.forget()
    for k in meta.keys:
        if k.get("label") not in cols.key.names:
            notes.append(f"key {k.get('label')}: in run.json but sent no requests")
    return LimitFindings(tuple(entries), arrival, tuple(keys), tuple(notes))


def run_info(meta: RunMeta, cols: Columns) -> RunInfo:
    return RunInfo(
        run_id=meta.run_id,
        engine=meta.engine,
        target=meta.target,
        scenario=meta.scenario_name,
        started_at=meta.to_dict().get("started_at"),
        duration_s=meta.duration_s,
        interrupted=meta.interrupted,
        stop_reason=meta.stop_reason,
        warmup_s=meta.warmup_s,
        workers=tuple(
            WorkerSummary(worker=w.worker, records=w.records, status=w.status, detail=w.detail)
            for w in meta.workers
        ),
        records=cols.n,
        last_record_end_s=float(np.max(cols.end)) if cols.n else None,
        loadkit_version=meta.loadkit_version,
    )


def parse_overrides(slo_overrides: Iterable[str] | None) -> list[Slo]:
    return [parse_slo_arg(s) for s in (slo_overrides or [])]


def analyse(
    meta: RunMeta,
    cols: Columns,
    overrides: list[Slo] | None = None,
    settings: VerdictSettings | None = None,
) -> Analysis:
    """The pure part: the summary and chart inputs from run metadata and records."""
    settings = settings or VerdictSettings()
    try:
        run_slos = slos_from_run(meta.slo)
    except ValueError as exc:
        raise UnusableInput(f"run.json slo: {exc}") from None
    warmup = float(meta.warmup_s or 0.0)
    values = metric_values(cols, warmup)
    # before the verdicts: its sorted copies of the pooled values are gone before the
    # per-key views are held
    latency = latency_summary(cols, values)
    tiers = _tier_of_keys(meta, cols)
    by_order = key_order(meta, tiers)
    answers = sorted(key_answers(meta, cols, tiers), key=lambda k: by_order(k.key))
    unusable = {k.key: k.problem or "unusable" for k in answers if not k.usable}
    found = limit_verdicts(meta, cols, settings, unusable, tiers)
    order = [k.key for k in answers]
    tokens = token_limits(meta, cols, tiers, order, unusable, settings.max_examples)
    throughput = throughput_summary(cols, values, dict(meta.goodput or {}), warmup)
    errors = errors_summary(cols, warmup)
    slo = evaluate_slos(
        merge_slos(run_slos, overrides or []), Observed(latency, throughput, errors)
    )
    complete = completeness(meta, cols)
    limits = found.limits
    unrecorded = unrecorded_requests(complete)
    if unrecorded is not None:
        limits = tuple(_refusals_unjudged(e, unrecorded) for e in limits)
        tokens = tuple(_refusals_unjudged(t, unrecorded) for t in tokens)
    outcome = run_outcome(limits, slo, answers, complete, tokens)
    summary = Summary(
        schema=SUMMARY_SCHEMA,
        run=run_info(meta, cols),
        verdict=outcome.verdict,
        headline=outcome.headline,
        verdict_reasons=outcome.reasons,
        completeness=complete,
        keys=tuple(answers),
        settings=SummarySettings.of(settings),
        limits=limits,
        limit_notes=found.notes,
        arrival=found.arrival,
        latency=latency,
        throughput=throughput,
        errors=errors,
        slo=slo,
        tokens=tokens,
    )
    return Analysis(meta=meta, cols=cols, values=values, keys=found.keys, summary=summary)


def write_summary(summary: Summary, run_dir: str | os.PathLike[str]) -> Path:
    """summary.json, replaced atomically."""
    path = Path(run_dir) / SUMMARY_FILE
    tmp = path.with_name(SUMMARY_FILE + ".tmp")
    tmp.write_text(summary.to_json(), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _import_charts() -> None:
    try:
        import loadkit.analysis.charts
        import loadkit.analysis.report  # noqa: F401
    except ImportError:
        pass  # the drawing's own import says why


def summarize_run(
    run_dir: str | os.PathLike[str],
    slo_overrides: Iterable[str] | None = None,
    charts: bool = True,
    settings: VerdictSettings | None = None,
    timings: dict[str, float] | None = None,
) -> Summary:
    """Analyse a run directory and write summary.json (and, with ``charts``, the PNG charts
    and report.html) into it. Raises UnusableInput or SloSyntaxError on bad input.
    ``timings``, when given, receives the seconds spent in each stage."""
    clock = time.perf_counter
    t0 = clock()
    limit_arenas()  # before any thread of ours allocates (``ingest.limit_arenas``)
    overrides = parse_overrides(slo_overrides)
    background: list[threading.Thread] = []
    if charts:
        # matplotlib's import (~0.4 s) in the gaps the reading leaves (arrow and numpy
        # work without the GIL)
        importer = threading.Thread(target=_import_charts, name="loadkit-import", daemon=True)
        importer.start()
        background.append(importer)
    meta, cols = load_run(run_dir)
    t1 = clock()
    result = analyse(meta, cols, overrides, settings)
    t2 = clock()
    out = Path(run_dir)
    if charts:
        from loadkit.analysis.charts import write_charts
        from loadkit.analysis.report import write_report

        summary = replace(result.summary, charts=tuple(write_charts(result, out)))
        summary = replace(summary, report=REPORT_FILE)
        write_report(summary, out)
    else:
        summary = replace(result.summary, charts=(), report=None)
    t3 = clock()
    write_summary(summary, out)
    for thread in background:
        thread.join()
    if timings is not None:
        timings.update(
            read_s=t1 - t0,
            analyse_s=t2 - t1,
            charts_report_s=t3 - t2,
            write_summary_s=clock() - t3,
            total_s=clock() - t0,
        )
    return summary


def analyze_run(
    run_dir: str | os.PathLike[str],
    slo_overrides: Iterable[str] | None = None,
    charts: bool = True,
    settings: VerdictSettings | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """``summarize_run`` with the summary as summary.json's plain dict (for callers that
    read it as JSON)."""
    return summarize_run(run_dir, slo_overrides, charts, settings, timings).to_dict()
