"""Throughput (requests/s, output tokens/s) overall and over time, goodput against the
run's per-request thresholds, and errors by status, API code and transport kind."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loadkit.analysis.codec import JsonRecord
from loadkit.analysis.columns import Columns
from loadkit.analysis.metrics import MetricValues, output_tokens
from loadkit.outcomes import Outcome

_NICE_BINS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)
GOODPUT_METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "headers_ms")


@dataclass(frozen=True)
class Timeline(JsonRecord):
    """Counts per time bin of ``bin_s`` seconds starting at ``start_s``."""

    bin_s: float
    start_s: tuple[float, ...]
    sent: tuple[int, ...]
    completed: tuple[int, ...]
    output_tokens: tuple[float, ...]
    errors: tuple[int, ...]
    throttled: tuple[int, ...]


@dataclass(frozen=True)
class Goodput(JsonRecord):
    thresholds: dict[str, float]
    ignored_thresholds: tuple[str, ...]
    requests: int
    requests_per_s: float
    ratio: float | None


@dataclass(frozen=True)
class Throughput(JsonRecord):
    """summary.json's ``throughput``: over the measured span (warm-up end to last end)."""

    measured_from_s: float
    measured_to_s: float
    duration_s: float
    requests: int
    completed: int
    requests_per_s: float
    sent_per_s: float
    output_tokens: float
    output_tokens_per_s: float
    goodput: Goodput
    timeline: Timeline


@dataclass(frozen=True)
class Errors(JsonRecord):
    """summary.json's ``errors``: outcomes of the requests sent after warm-up."""

    requests: int
    errors: int
    cancelled: int
    error_rate: float
    throttled: int
    throttle_rate: float
    by_status: dict[str, int]
    by_code: dict[str, int]
    transport: dict[str, int]


def bin_width(duration_s: float, max_bins: int = 1200) -> float:
    """1 s bins, or the smallest round width that keeps a long run under ``max_bins``."""
    for w in _NICE_BINS:
        if duration_s / w <= max_bins:
            return float(w)
    return float(np.ceil(duration_s / max_bins))


def succeeded(cols: Columns) -> np.ndarray:
    return np.asarray((cols.status == 200) & (cols.transport_error.codes < 0))


def failed(cols: Columns) -> np.ndarray:
    """Errors that are not limit refusals: no response, 4xx other than 429, 5xx, a cut
    stream. Requests cancelled because the run was stopping (Ctrl-C, the drain's end; open
    or never sent) are the client's doing, not the service's, and are counted apart."""
    st = cols.status
    te = cols.transport_error.codes
    bad = (st == 0) | ((st >= 400) & (st != 429)) | (te >= 0)
    return np.asarray(bad & ~cancelled(cols))


def cancelled(cols: Columns) -> np.ndarray:
    """Requests the run's stop cut short (a stream cut after its 200 included) or never
    sent."""
    cut = cols.transport_error.codes == cols.transport_error.code_of("cancelled")
    return np.asarray(cut | cols.outcome_in({Outcome.CANCELLED}))


def measured_span(cols: Columns, warmup_s: float) -> tuple[float, float]:
    end = float(np.max(cols.end)) if cols.n else 0.0
    return warmup_s, max(end, warmup_s)


def timeline(cols: Columns, warmup_s: float) -> Timeline:
    """Per-bin counts: sent, completed (200), output tokens, errors, 429s (by end time)."""
    _, t_end = measured_span(cols, warmup_s)
    width = bin_width(t_end)
    nbins = max(1, int(np.ceil(t_end / width)))
    ok = succeeded(cols)
    tokens = output_tokens(cols)

    def bins(times: np.ndarray) -> np.ndarray:
        return np.clip((times // width).astype(np.int64), 0, nbins - 1)

    def count(times: np.ndarray) -> tuple[int, ...]:
        return tuple(int(c) for c in np.bincount(bins(times), minlength=nbins))

    weights = np.nan_to_num(tokens[ok])
    return Timeline(
        bin_s=width,
        start_s=tuple(i * width for i in range(nbins)),
        sent=count(cols.send),
        completed=count(cols.end[ok]),
        output_tokens=tuple(
            float(x) for x in np.bincount(bins(cols.end[ok]), weights=weights, minlength=nbins)
        ),
        errors=count(cols.end[failed(cols)]),
        throttled=count(cols.end[cols.status == 429]),
    )


def goodput(
    cols: Columns, values: dict[str, MetricValues], thresholds: dict[str, float], warmup_s: float
) -> Goodput:
    """Requests/s whose every defined per-request metric meets its threshold. A metric
    undefined for a request (TTFT of a non-stream, TPOT of one token) is not held against it."""
    t0, t1 = measured_span(cols, warmup_s)
    base = succeeded(cols) & (cols.send >= warmup_s)
    good = base.copy()
    used: dict[str, float] = {}
    ignored: list[str] = []
    for name, limit in thresholds.items():
        if name not in GOODPUT_METRICS or name not in values:
            ignored.append(name)
            continue
        used[name] = float(limit)
        mv = values[name].load()
        bad_rows = mv.rows[mv.values > float(limit)]
        good[bad_rows] = False
    n_good, n_base = int(good.sum()), int(base.sum())
    span = max(t1 - t0, 1e-9)
    return Goodput(
        thresholds=used,
        ignored_thresholds=tuple(ignored),
        requests=n_good,
        requests_per_s=n_good / span,
        ratio=(n_good / n_base) if n_base else None,
    )


def throughput_summary(
    cols: Columns,
    values: dict[str, MetricValues],
    goodput_thresholds: dict[str, float],
    warmup_s: float,
) -> Throughput:
    t0, t1 = measured_span(cols, warmup_s)
    span = max(t1 - t0, 1e-9)
    ok = succeeded(cols) & (cols.send >= warmup_s)
    tokens = float(np.nansum(output_tokens(cols)[ok]))
    sent = int((cols.send >= warmup_s).sum())
    return Throughput(
        measured_from_s=t0,
        measured_to_s=t1,
        duration_s=span,
        requests=sent,
        completed=int(ok.sum()),
        requests_per_s=int(ok.sum()) / span,
        sent_per_s=sent / span,
        output_tokens=tokens,
        output_tokens_per_s=tokens / span,
        goodput=goodput(cols, values, goodput_thresholds, warmup_s),
        timeline=timeline(cols, warmup_s),
    )


def errors_summary(cols: Columns, warmup_s: float) -> Errors:
    """Outcomes of requests sent after warm-up. ``error_rate`` leaves out 429s (limit
    refusals are judged by the verdicts); ``throttle_rate`` is the share of 429s."""
    sel = cols.send >= warmup_s
    total = int(sel.sum())
    status = cols.status[sel]
    st_vals, st_counts = np.unique(status, return_counts=True)
    by_status = {str(int(s)): int(c) for s, c in zip(st_vals, st_counts, strict=True)}
    codes = cols.error_code.codes[sel]
    pair = status * 1024 + codes + 1
    p_vals, p_counts = np.unique(pair[codes >= 0], return_counts=True)
    by_code: dict[str, int] = {}
    for p, c in zip(p_vals.tolist(), p_counts.tolist(), strict=True):
        st, code = divmod(p, 1024)
        by_code[f"{st} {cols.error_code.names[code - 1]}"] = c
    te = cols.transport_error.codes[sel]
    te_vals, te_counts = np.unique(te[te >= 0], return_counts=True)
    transport = {
        cols.transport_error.names[v]: int(c)
        for v, c in zip(te_vals.tolist(), te_counts.tolist(), strict=True)
    }
    n_err = int(failed(cols)[sel].sum())
    n_429 = int((status == 429).sum())
    return Errors(
        requests=total,
        errors=n_err,
        cancelled=int(cancelled(cols)[sel].sum()),
        error_rate=n_err / total if total else 0.0,
        throttled=n_429,
        throttle_rate=n_429 / total if total else 0.0,
        by_status=by_status,
        by_code=by_code,
        transport=transport,
    )
