"""``loadkit compare BASE NEW``: per-metric change with a seeded bootstrap confidence
interval on the raw values, limit verdicts that got worse, JUnit XML; exit 1 on a
regression (worse beyond its threshold AND statistically significant). A run that is
incomplete or an error stands for nothing: it is refused (exit 2) unless
``--allow-incomplete``, which compares it with a loud warning and a failing JUnit case.
Two runs of different scenarios, targets or engines, or of different completeness, are
compared with a warning saying so."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from loadkit.analysis.codec import JsonRecord
from loadkit.analysis.columns import INFERENCE_ENDPOINTS, Columns, UnusableInput, load_run
from loadkit.analysis.junit import Case, write_junit
from loadkit.analysis.limits import Limit, RequestsLimit
from loadkit.analysis.metrics import LATENCY_METRICS, PooledValues, metric_values, output_tokens
from loadkit.analysis.outcome import RunVerdict, Verdict
from loadkit.analysis.stats import Change, Sample, bootstrap_changes
from loadkit.analysis.summary import SUMMARY_FILE, Summary, analyse, read_summary
from loadkit.analysis.throughput import Throughput, bin_width, measured_span, succeeded

COMPARED_STATS = ("p50", "p95", "p99")
# throughput metric -> its exact figure in the summary (the per-bin rates give its CI)
THROUGHPUT_FIGURES: dict[str, Callable[[Throughput], float]] = {
    "requests_per_s": lambda t: t.requests_per_s,
    "output_tokens_per_s": lambda t: t.output_tokens_per_s,
}
THROUGHPUT_METRICS = tuple(THROUGHPUT_FIGURES)
DEFAULT_THRESHOLD_PCT = 10.0
EXIT_OK, EXIT_REGRESSION, EXIT_INPUT = 0, 1, 2


class ThresholdSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class RunSample:
    """What compare needs of one run: its summary and raw metric values."""

    path: Path
    summary: Summary
    latency: dict[str, np.ndarray | Sample]
    throughput: dict[str, np.ndarray]  # per-bin rates


@dataclass(frozen=True)
class MetricChange(JsonRecord):
    """One metric compared: the change, its confidence interval and the judgement."""

    metric: str
    threshold_pct: float
    base: float | None
    new: float | None
    change: float | None
    ci_low: float | None
    ci_high: float | None
    significant: bool
    regression: bool
    status: str


@dataclass(frozen=True)
class VerdictChange(JsonRecord):
    """One aspect of one limit of NEW, next to BASE's verdict for it (None: not in BASE)."""

    key: str
    tier: str
    kind: str
    aspect: str
    base: Verdict | None
    new: Verdict
    regression: bool
    violated: bool


@dataclass(frozen=True)
class Comparison(JsonRecord):
    base: str
    new: str
    metrics: tuple[MetricChange, ...]
    verdicts: tuple[VerdictChange, ...]
    regressions: tuple[str, ...]
    flagged: tuple[str, ...] = ()  # sides compared although incomplete or an error
    differs: tuple[str, ...] = ()  # what the runs do not share (``differences``)


class IncompleteRun(UnusableInput):
    """A side is incomplete or an error and ``allow_incomplete`` was not given."""


def side_problem(side: str, sample: RunSample) -> str | None:
    """``NEW runs/b is incomplete (worker w-2 died with 3 requests in flight …)`` for a run
    that cannot stand for its target, else None."""
    gaps = sample.summary.gaps()
    if not gaps:
        return None
    what = "an error" if sample.summary.verdict == RunVerdict.ERROR else "incomplete"
    more = f" (and {len(gaps) - 1} more)" if len(gaps) > 1 else ""
    return f"{side} {sample.path} is {what} ({gaps[0]}{more})"


def _completeness(summary: Summary) -> str:
    if not summary.gaps():
        return "complete"
    return "an error" if summary.verdict == RunVerdict.ERROR else "incomplete"


#: What two runs must share for their figures to compare like with like.
SAMENESS: tuple[tuple[str, Callable[[Summary], str]], ...] = (
    ("scenario", lambda s: s.run.scenario),
    ("target", lambda s: s.run.target),
    ("engine", lambda s: s.run.engine),
    ("completeness", _completeness),
)


def differences(base: Summary, new: Summary) -> tuple[str, ...]:
    """``engine (BASE async, NEW locust)`` for each of SAMENESS the two runs differ in."""
    out = []
    for what, of in SAMENESS:
        b, n = of(base), of(new)
        if b != n:
            out.append(f"{what} (BASE {b or '-'}, NEW {n or '-'})")
    return tuple(out)


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


def load_sample(run_dir: str | Path) -> RunSample:
    """A run's summary.json (analysed afresh when there is none) and its raw values."""
    path = Path(run_dir)
    meta, cols = load_run(path)
    summary_path = path / SUMMARY_FILE
    summary = read_summary(summary_path) if summary_path.exists() else analyse(meta, cols).summary
    warmup = float(meta.warmup_s or 0.0)
    values = metric_values(cols, warmup)
    inference = cols.endpoint.isin(INFERENCE_ENDPOINTS)
    latency: dict[str, np.ndarray | Sample] = {}
    for m in LATENCY_METRICS:
        mv = values[m].load()
        if isinstance(mv, PooledValues) and not mv.in_memory():
            latency[m] = mv.restrict(inference)  # a soak's gaps: read in blocks
        else:
            latency[m] = mv.values[mv.of_rows(inference)]
    return RunSample(path, summary, latency, _rates(cols, warmup))


def throughput_change(exact_base: float, exact_new: float, per_bin: Change) -> Change:
    """The summaries' exact figures and their relative change, with the confidence interval
    of the per-bin rates (no interval when the base run had no rate to compare with)."""
    if per_bin.base is None:
        return per_bin
    change = exact_new / exact_base - 1.0 if exact_base else None
    return Change(
        base=exact_base,
        new=exact_new,
        change=change,
        ci_low=per_bin.ci_low,
        ci_high=per_bin.ci_high,
    )


def compare_metrics(
    base: RunSample, new: RunSample, thresholds: dict[str, float], seed: int = 0
) -> list[MetricChange]:
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
        per_bin = bootstrap_changes(
            base.throughput[m], new.throughput[m], ("mean",), seed=seed + 100 + j
        )["mean"]
        figure = THROUGHPUT_FIGURES[m]
        r = throughput_change(
            figure(base.summary.throughput), figure(new.summary.throughput), per_bin
        )
        rows.append(_judge(m, r, thresholds.get(m, default), higher_is_worse=False))
    return rows


def _judge(name: str, r: Change, pct: float, higher_is_worse: bool) -> MetricChange:
    def row(significant: bool, regression: bool, status: str) -> MetricChange:
        return MetricChange(
            metric=name,
            threshold_pct=pct,
            base=r.base,
            new=r.new,
            change=r.change,
            ci_low=r.ci_low,
            ci_high=r.ci_high,
            significant=significant,
            regression=regression,
            status=status,
        )

    if r.change is None or r.ci_low is None or r.ci_high is None:
        return row(False, False, "no data")
    worse = r.change if higher_is_worse else -r.change
    significant = r.ci_low > 0 if higher_is_worse else r.ci_high < 0
    better_sig = r.ci_high < 0 if higher_is_worse else r.ci_low > 0
    regression = bool(significant and worse * 100 > pct)
    status = (
        "regression"
        if regression
        else "improved"
        if better_sig
        else "worse (within threshold)"
        if significant
        else "no significant change"
    )
    return row(bool(significant or better_sig), regression, status)


def _aspects(e: Limit, b: Limit | None) -> list[tuple[str, Verdict, Verdict | None]]:
    out: list[tuple[str, Verdict, Verdict | None]] = [
        ("enforced", e.verdict.enforced, b.verdict.enforced if b else None),
        ("honoured", e.verdict.honoured, b.verdict.honoured if b else None),
    ]
    if isinstance(e, RequestsLimit):
        before = b.retry_after.verdict if isinstance(b, RequestsLimit) else None
        out.append(("retry_after", e.retry_after.verdict, before))
    return out


def compare_verdicts(base: Summary, new: Summary) -> list[VerdictChange]:
    """Every limit verdict of NEW, with BASE's for the same key and kind; held -> violated is a
    regression."""
    old = {(e.key, e.kind): e for e in base.limits}
    out = []
    for e in new.limits:
        for aspect, now, before in _aspects(e, old.get((e.key, e.kind))):
            out.append(
                VerdictChange(
                    key=e.key,
                    tier=e.tier,
                    kind=e.kind,
                    aspect=aspect,
                    base=before,
                    new=now,
                    regression=before == Verdict.HELD and now == Verdict.VIOLATED,
                    violated=now == Verdict.VIOLATED,
                )
            )
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f}%"


def render(metrics: tuple[MetricChange, ...], verdicts: tuple[VerdictChange, ...]) -> str:
    lines = [f"{'metric':<26} {'base':>10} {'new':>10} {'change':>8} {'95% CI':>20}  status"]
    for r in metrics:
        base = "-" if r.base is None else f"{r.base:.4g}"
        new = "-" if r.new is None else f"{r.new:.4g}"
        ci = f"[{_pct(r.ci_low)}, {_pct(r.ci_high)}]"
        lines.append(
            f"{r.metric:<26} {base:>10} {new:>10} {_pct(r.change):>8} {ci:>20}  "
            f"{r.status.upper() if r.regression else r.status}"
        )
    if verdicts:
        lines.append("")
        for v in verdicts:
            mark = "REGRESSION" if v.regression else ("violated" if v.violated else "")
            lines.append(
                f"{v.key:<16} {v.kind:<12} {v.aspect:<12} {v.base or '-':>12} -> {v.new:<12} {mark}"
            )
    return "\n".join(lines)


def junit_cases(
    metrics: tuple[MetricChange, ...], verdicts: tuple[VerdictChange, ...]
) -> list[Case]:
    cases = []
    for v in verdicts:
        fail = None
        if v.violated:
            fail = f"{v.kind} limit {v.aspect}: violated" + (
                " (held in BASE)" if v.regression else ""
            )
        cases.append(
            Case(
                "limits",
                f"limits.{v.key}",
                f"{v.kind} {v.aspect}",
                fail,
                kind="violation",
                detail=f"base={v.base} new={v.new}",
            )
        )
    for r in metrics:
        detail = (
            f"base={r.base} new={r.new} change={_pct(r.change)} "
            f"ci=[{_pct(r.ci_low)}, {_pct(r.ci_high)}] threshold={r.threshold_pct}%"
        )
        fail = f"{r.metric} regressed {_pct(r.change)}" if r.regression else None
        cases.append(Case("metrics", "metrics", r.metric, fail, detail=detail))
    return cases


def compare_runs(
    base_dir: str | Path,
    new_dir: str | Path,
    thresholds: list[str] | None = None,
    seed: int = 0,
    allow_incomplete: bool = False,
) -> Comparison:
    """The comparison (library entry point); raises UnusableInput / ThresholdSyntaxError on
    bad input, IncompleteRun when a side is incomplete or an error (unless
    ``allow_incomplete``: then the comparison names it in ``flagged``)."""
    parsed = parse_thresholds(thresholds or [])
    base, new = load_sample(base_dir), load_sample(new_dir)
    flagged = tuple(
        p for p in (side_problem("BASE", base), side_problem("NEW", new)) if p is not None
    )
    if flagged and not allow_incomplete:
        raise IncompleteRun(
            "; ".join(flagged) + "; refused: compare anyway with --allow-incomplete"
        )
    metrics = tuple(compare_metrics(base, new, parsed, seed))
    verdicts = tuple(compare_verdicts(base.summary, new.summary))
    regressions = [r.metric for r in metrics if r.regression]
    regressions += [f"{v.key} {v.kind} {v.aspect}" for v in verdicts if v.regression]
    return Comparison(
        base=str(base_dir),
        new=str(new_dir),
        metrics=metrics,
        verdicts=verdicts,
        regressions=tuple(regressions),
        flagged=flagged,
        differs=differences(base.summary, new.summary),
    )


def compare_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Entry point of ``loadkit compare BASE NEW``."""
    out = out or sys.stdout
    try:
        result = compare_runs(
            args.base,
            args.new,
            list(getattr(args, "threshold", []) or []),
            allow_incomplete=bool(getattr(args, "allow_incomplete", False)),
        )
    except (UnusableInput, ThresholdSyntaxError) as exc:
        print(f"loadkit compare: {exc}", file=sys.stderr)
        return EXIT_INPUT
    warnings = [
        f"WARNING: {f}; compared anyway (--allow-incomplete): its figures cover only what "
        "was recorded"
        for f in result.flagged
    ]
    differs: list[str] = []
    if result.differs:
        differs.append(
            "WARNING: the runs differ in "
            + "; ".join(result.differs)
            + ": a change may come from that, not from the target"
        )
    for w in warnings + differs:
        print(w, file=out)
        print(f"loadkit compare: {w}", file=sys.stderr)
    print(render(result.metrics, result.verdicts), file=out)
    junit = getattr(args, "junit", None)
    if junit:
        cases = [
            # "NEW runs/b is incomplete (…)": the side is the first word
            Case("runs", "runs", f"{f.split(' ', 1)[0]} run complete", f, "incomplete", f)
            for f in result.flagged
        ]
        try:
            write_junit(junit, cases + junit_cases(result.metrics, result.verdicts))
        except OSError as exc:
            print(f"loadkit compare: cannot write {junit}: {exc}", file=sys.stderr)
            return EXIT_INPUT
    for w in differs + warnings:
        print(w, file=out)  # again below the tables, where the eye lands last
    if result.regressions:
        print("REGRESSION: " + ", ".join(result.regressions), file=out)
        return EXIT_REGRESSION
    print("no regression", file=out)
    return EXIT_OK
