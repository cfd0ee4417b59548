"""Latency, throughput, goodput and error figures on hand-computed records."""

from __future__ import annotations

import numpy as np
import pytest

from loadkit.analysis.columns import columns_from_records
from loadkit.analysis.metrics import latency_summary, metric_values
from loadkit.analysis.stats import Stats, bootstrap_changes, describe
from loadkit.analysis.throughput import bin_width, errors_summary, throughput_summary
from tests.analysis.builders import rec


def records():
    return [
        # stream: send 1.0, headers 1.1, tokens at 1.3, 1.35, 1.45, end 1.5; usage says 3 tokens
        rec(1.0, 1.1, 1.5, chunks=[1.3, 1.35, 1.45], completion_tokens=3, scheduled_s=0.99),
        # stream without usage: 2 content chunks -> 2 tokens
        rec(2.0, 2.05, 2.4, chunks=[2.2, 2.3], scheduled_s=2.0),
        # non-stream: no TTFT/ITL/TPOT, e2e 0.5 s
        rec(3.0, 3.45, 3.5, stream=False, completion_tokens=7),
        # failures: never in latency
        rec(4.0, 4.01, 4.02, status=429, code="rate_limit_exceeded"),
        rec(4.5, None, 9.5, status=0, transport_error="timeout"),
        rec(5.0, 5.1, 5.2, chunks=[5.15], transport_error="incomplete_stream"),
        # before warm-up (0.5 s): excluded from latency
        rec(0.2, 0.3, 0.9, chunks=[0.5, 0.6], completion_tokens=2),
        rec(6.0, 6.01, 6.02, endpoint="models", stream=False),
    ]


def test_itl_values_know_their_rows():
    # Record order: row 0 (2 gaps), row 1 (1 gap), row 6 before warm-up (1 gap, excluded);
    # the ITL rows are built only when asked for, and read per-row arrays the same way
    # (e2e: every endpoint, row 5 a broken stream).
    cols = columns_from_records(records())
    for warmup, rows in ((0.5, [0, 0, 1]), (0.0, [0, 0, 1, 6])):
        itl = metric_values(cols, warmup_s=warmup)["itl_ms"]
        assert itl.rows.tolist() == rows
        assert itl.values.size == len(rows)
        per_row = np.arange(cols.n) * 10
        assert itl.of_rows(per_row).tolist() == [r * 10 for r in rows]
    e2e = metric_values(cols, warmup_s=0.5)["e2e_ms"]
    assert e2e.of_rows(np.arange(cols.n)).tolist() == e2e.rows.tolist() == [0, 1, 2, 7]


def test_latency_definitions():
    cols = columns_from_records(records())
    v = metric_values(cols, warmup_s=0.5)
    assert v["ttft_ms"].values == pytest.approx([300.0, 200.0])
    assert np.sort(v["itl_ms"].values) == pytest.approx([50.0, 100.0, 100.0])
    # (e2e - ttft) / (tokens - 1): (500 - 300) / 2 and (400 - 200) / 1
    assert v["tpot_ms"].values == pytest.approx([100.0, 200.0])
    assert v["e2e_ms"].values == pytest.approx([500.0, 400.0, 500.0, 20.0])
    assert v["headers_ms"].values == pytest.approx([100.0, 50.0, 450.0, 10.0])
    assert v["send_lateness_ms"].values == pytest.approx([10.0, 0.0])


def test_latency_summary_overall_excludes_model_listing_but_groups_keep_it():
    cols = columns_from_records(records())
    lat = latency_summary(cols, metric_values(cols, 0.5))
    assert lat.e2e_ms.overall.count == 3
    assert lat.e2e_ms.overall.max == pytest.approx(500.0)
    assert lat.ttft_ms.by_tier["free"].count == 2
    endpoints = {(g.labels.endpoint, g.labels.stream) for g in lat.groups}
    assert endpoints == {("chat", True), ("chat", False), ("models", False)}
    models = next(g for g in lat.groups if g.labels.endpoint == "models")
    # a model listing has an end-to-end time but no token timings
    assert models.e2e_ms is not None and models.e2e_ms.count == 1
    assert models.ttft_ms is None and models.stats("ttft_ms") is None


def test_describe_is_exact():
    v = np.arange(1, 1001, dtype=float)
    d = describe(v)
    assert d.p50 == pytest.approx(500.5)
    assert d.p99 == pytest.approx(np.percentile(v, 99))
    assert d.p99_9 == pytest.approx(999.001) and d.value("p99_9") == d.p99_9
    assert (d.max, d.count, d.mean) == (1000.0, 1000, 500.5)
    assert describe(np.zeros(0)) == Stats(None, None, None, None, None, None, None, count=0)
    with pytest.raises(ValueError, match="p98"):
        d.value("p98")


def test_throughput_goodput_and_errors():
    cols = columns_from_records(records())
    v = metric_values(cols, 0.5)
    tp = throughput_summary(cols, v, {"ttft_ms": 250.0}, warmup_s=0.5)
    assert tp.completed == 4  # 3 chat/completions 200s + models; the cut stream is not
    assert tp.duration_s == pytest.approx(9.0)
    assert tp.requests_per_s == pytest.approx(4 / 9.0)
    # tokens: 3 + 2 + 7 + models(0)
    assert tp.output_tokens == pytest.approx(12.0)
    # goodput: the first stream's TTFT of 300 ms misses 250 ms; the others have no TTFT or meet it
    assert tp.goodput.requests == 3
    assert tp.timeline.bin_s == 1.0 and sum(tp.timeline.completed) == 5
    err = errors_summary(cols, 0.5)
    assert err.by_status == {"0": 1, "200": 5, "429": 1}
    assert err.by_code == {"429 rate_limit_exceeded": 1}
    assert err.transport == {"timeout": 1, "incomplete_stream": 1}
    assert err.errors == 2 and err.throttled == 1
    assert err.error_rate == pytest.approx(2 / 7)


def test_bin_width_grows_for_long_runs():
    assert bin_width(600) == 1.0
    assert bin_width(7200) == 10.0


def test_bootstrap_confidence_intervals():
    rng = np.random.default_rng(3)
    a = rng.lognormal(0, 0.3, 3000)
    same = rng.lognormal(0, 0.3, 3000)
    worse = a * 1.3
    r = bootstrap_changes(a, same, ("p50",), seed=1)["p50"]
    assert r.ci_low is not None and r.ci_high is not None
    assert r.ci_low < 0 < r.ci_high
    r = bootstrap_changes(a, worse, ("p99",), seed=1)["p99"]
    assert r.change == pytest.approx(0.3, rel=0.01)
    assert r.ci_low is not None and r.ci_low > 0.1
    assert bootstrap_changes(a, worse, ("p99",), seed=1)["p99"] == r  # seeded
    # no values in one run: nothing to compare, not a crash
    empty = bootstrap_changes(a, np.zeros(0), ("p50",))["p50"]
    assert (empty.base, empty.change, empty.ci_low) == (None, None, None)
