"""Exact statistics of values read in blocks (``pooled``): the inter-token gaps of a long
soak are described without ever holding them whole, and read the same as numpy's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadkit.analysis import metrics, pooled
from loadkit.analysis.stats import describe
from loadkit.analysis.summary import analyse, load_run, summarize_run
from tests.analysis.synthetic import Limiter, Timing, even_sends, run_meta, simulate_key, write_run

EXACT = ("p50", "p90", "p95", "p99", "p99_9", "max", "count")


def _blocks(v: np.ndarray, g: np.ndarray, size: int, passes: list[int] | None = None) -> Any:
    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if passes is not None:
            passes.append(1)
        for s in range(0, v.size, size):
            yield v[s : s + size], g[s : s + size]

    return blocks


def _same(got: Any, want: Any) -> None:
    for f in EXACT:
        a, b = getattr(got, f), getattr(want, f)
        assert a == b or (a != a and b != b), (f, a, b)
    if want.mean is None or want.mean != want.mean:
        assert got.mean == want.mean or (got.mean != got.mean and want.mean != want.mean)
    else:
        assert got.mean == pytest.approx(want.mean, rel=1e-12)


def _values(kind: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == 0:
        return rng.lognormal(3, 1, n)
    if kind == 1:
        return np.round(rng.normal(0, 10, n), 1)  # negatives, zeros, many ties
    if kind == 2:
        return np.full(n, 7.25)  # one value: every bit has to be resolved
    if kind == 3:
        return rng.integers(0, 4, n).astype(float)
    v = rng.lognormal(3, 1, n)
    v[rng.integers(0, n, 2)] = np.nan  # a NaN makes numpy's percentiles NaN
    return v


@pytest.mark.parametrize(
    ("collect", "hist_cells"),
    [(1, 1 << 6), (16, 1 << 6), (1 << 24, 1 << 6), (1, 1 << 16), (16, 1 << 16), (1 << 24, 1 << 23)],
)
def test_every_set_reads_as_numpy_on_all_its_values(
    monkeypatch: pytest.MonkeyPatch, collect: int, hist_cells: int
) -> None:
    """Percentiles and the maximum bit for bit, the mean to rounding, over groups and
    unions of groups, whether the bins are collected at once or refined pass by pass
    (small ``collect``), with wide or narrow histograms (small ``hist_cells``)."""
    monkeypatch.setattr(pooled, "COLLECT_MAX", collect)
    monkeypatch.setattr(pooled, "_HIST_CELLS", hist_cells)
    rng = np.random.default_rng(7)
    for trial in range(40):
        n = int(rng.integers(1, 2500))
        n_groups = int(rng.integers(1, 6))
        v = _values(trial % 5, n, rng)
        g = rng.integers(-1, n_groups + 1, n)  # ids outside 0..n_groups-1 are in no set
        sets = [[i] for i in range(n_groups)] + [list(range(n_groups)), [0, n_groups - 1]]
        got = pooled.describe_groups(_blocks(v, g, int(rng.integers(1, 400))), n_groups, sets)
        for stats, members in zip(got, sets, strict=True):
            _same(stats, describe(v[np.isin(g, members)]))


def test_an_empty_set_has_no_figures() -> None:
    v, g = np.array([1.0, 2.0]), np.array([0, 0])
    empty, full = pooled.describe_groups(_blocks(v, g, 1), 2, [[1], [0, 1]])
    assert empty.count == 0 and empty.p50 is None and empty.max is None
    assert full.count == 2 and full.p50 == 1.5


def test_a_million_values_take_a_few_passes() -> None:
    """Each pass reads every value: a histogram pass, then one that collects the bins."""
    rng = np.random.default_rng(3)
    v = rng.lognormal(3, 0.5, 1_000_000)
    g = rng.integers(0, 8, v.size)
    passes: list[int] = []
    sets = [[i] for i in range(8)] + [list(range(8))]
    got = pooled.describe_groups(_blocks(v, g, 1 << 16, passes), 8, sets)
    _same(got[-1], describe(v))
    assert len(passes) <= 3


LIMIT = Limiter("sliding_log", requests=40, window_s=10.0, concurrency=4)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    timing = Timing(ttft_s=0.07, itl_s=0.02, jitter=0.5, tokens=12)
    keys = [("free-1", "free", 0.4, 1), ("free-2", "free", 0.2, 2), ("pro-1", "pro", 0.1, 3)]
    runs = [
        simulate_key(label, tier, LIMIT, even_sends(p, 30.0), timing, np.random.default_rng(s))
        for label, tier, p, s in keys
    ]
    meta = run_meta({"free": LIMIT, "pro": LIMIT}, [(label, tier) for label, tier, _, _ in keys])
    return write_run(tmp_path_factory.mktemp("pooled") / "run", meta, runs)


def test_out_of_core_itl_reads_as_the_in_memory_one(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ITL tables (overall, per tier, per group) of a run read the same whether its
    gaps are sorted in memory or read in blocks, as a soak's are."""
    want = analyse(*load_run(run)).summary.latency
    monkeypatch.setattr(metrics, "SORT_IN_MEMORY", 0)
    monkeypatch.setattr(metrics.PooledValues, "BLOCK_VALUES", 100)
    got = analyse(*load_run(run)).summary.latency
    assert want.itl_ms.overall.count > 1000
    _same(got.itl_ms.overall, want.itl_ms.overall)
    assert set(got.itl_ms.by_tier) == set(want.itl_ms.by_tier) == {"free", "pro"}
    for tier, stats in want.itl_ms.by_tier.items():
        _same(got.itl_ms.by_tier[tier], stats)
    assert [g.labels for g in got.groups] == [g.labels for g in want.groups]
    for a, b in zip(got.groups, want.groups, strict=True):
        assert (a.itl_ms is None) == (b.itl_ms is None)
        if b.itl_ms is not None:
            _same(a.itl_ms, b.itl_ms)


def test_a_soak_never_holds_its_gaps_whole(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the in-memory size, neither the tables nor the charts build the whole array
    of gaps (nor their rows): the analysis of a 10 M-record soak stays in bounded memory."""
    monkeypatch.setattr(metrics, "SORT_IN_MEMORY", 0)
    monkeypatch.setattr(metrics.PooledValues, "BLOCK_VALUES", 1000)

    def whole(self: Any) -> np.ndarray:
        raise AssertionError("the whole ITL array was built")

    monkeypatch.setattr(metrics.PooledValues, "values", property(whole))
    monkeypatch.setattr(metrics.PooledValues, "rows", property(whole))
    summary = summarize_run(run)
    assert "itl_cdf.png" in summary.charts
    written = json.loads((run / "summary.json").read_text())
    assert written["latency"]["itl_ms"]["overall"]["count"] > 1000


def test_the_metric_values_are_not_held_between_readers(run: Path) -> None:
    """The per-record metrics are computed when a reader asks, so the analysis holds
    none of them from the tables to the charts; each read gives the same values."""
    meta, cols = load_run(run)
    values = metrics.metric_values(cols, 0.0)
    ttft = values["ttft_ms"]
    assert isinstance(ttft, metrics.LazyValues)
    first, again = ttft.load(), ttft.load()
    assert first is not again
    assert np.array_equal(first.values, again.values) and first.values.size > 100
    assert np.array_equal(first.rows, again.rows)
    assert isinstance(values["itl_ms"], metrics.PooledValues)


def test_compare_of_two_soaks_reads_their_gaps_in_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``loadkit compare`` of runs whose gaps are read in blocks (a soak's) gives the same
    ITL rows as with the gaps in memory: the same figures, the same bootstrap draws, the
    same verdict -- and a slower ITL is still caught."""
    from loadkit.analysis.compare import compare_metrics, load_sample
    from tests.analysis.test_compare import make

    a = make(tmp_path, "a", seed=1)
    b = make(tmp_path, "b", seed=2, slow=1.3)
    want = [r for r in compare_metrics(load_sample(a), load_sample(b), {}) if "itl" in r.metric]
    monkeypatch.setattr(metrics, "SORT_IN_MEMORY", 0)
    monkeypatch.setattr(metrics.PooledValues, "BLOCK_VALUES", 50)
    base, new = load_sample(a), load_sample(b)
    assert isinstance(base.latency["itl_ms"], metrics.PooledValues)
    got = [r for r in compare_metrics(base, new, {}) if "itl" in r.metric]
    assert [r.metric for r in got] == ["itl_ms.p50", "itl_ms.p95", "itl_ms.p99"]
    assert got == want
    assert any(r.regression for r in got)


def test_blocks_stay_small_where_rows_are_dense_with_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run whose long streams come together (a file of them after many 429s) is read in
    blocks of at most BLOCK_VALUES (or one row's), not of the run's average row count;
    the blocks hold exactly the counted rows' values, in order."""
    monkeypatch.setattr(metrics.PooledValues, "BLOCK_VALUES", 1000)
    monkeypatch.setattr(metrics, "_ROWS_READ", 700)
    rng = np.random.default_rng(5)
    counts = np.concatenate([np.zeros(19_000), np.full(1_000, 299), [5_000], np.zeros(50)])
    counts = counts.astype(np.int32)
    keep = rng.random(counts.size) < 0.9
    pooled_values = rng.random(int(counts.sum()))
    mv = metrics.PooledValues(pooled_values, counts, keep)
    blocks = list(mv.blocks())
    assert max(v.size for v, r in blocks if np.unique(r).size > 1) <= 1000
    want = pooled_values[np.repeat(keep, counts)]
    assert np.array_equal(np.concatenate([v for v, _ in blocks]), want)
    assert np.array_equal(np.concatenate([r for _, r in blocks]), mv.rows)
    assert mv.rows.size == mv.size == want.size


def test_a_bin_of_one_repeated_value_is_settled_without_more_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Gaps of exactly 0.0 (chunks that arrived together) fill a bin too large to collect:
    its one value is known after one more pass, not after resolving all 64 bits."""
    monkeypatch.setattr(pooled, "COLLECT_MAX", 1 << 12)
    rng = np.random.default_rng(1)
    v = rng.lognormal(2.5, 0.3, 200_000)
    v[rng.random(v.size) < 0.6] = 0.0
    g = rng.integers(0, 4, v.size)
    passes: list[int] = []
    sets = [[i] for i in range(4)] + [list(range(4))]
    got = pooled.describe_groups(_blocks(v, g, 1 << 14, passes), 4, sets)
    for stats, members in zip(got, sets, strict=True):
        _same(stats, describe(v[np.isin(g, members)]))
    assert got[-1].p50 == 0.0
    assert len(passes) <= 3


def test_a_set_naming_a_group_that_does_not_exist_is_refused() -> None:
    v, g = np.array([1.0, 2.0]), np.array([0, 1])
    with pytest.raises(ValueError, match="set 1 names groups outside 0..1"):
        pooled.describe_groups(_blocks(v, g, 1), 2, [[0], [-1]])
