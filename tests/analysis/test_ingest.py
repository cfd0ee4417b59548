"""Every way records reach ``Columns`` gives the same columns and the same summary: the
whole-table reduction, the batch-by-batch reduction of the JSONL files (however the batches
fall), and the column cache a large run keeps in its folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from loadkit.analysis import column_cache
from loadkit.analysis.columns import Codes, Columns, columns_from_reduced, load_run, read_table
from loadkit.analysis.ingest import reduce_batches, table_batches
from loadkit.analysis.summary import analyse
from loadkit.analysis.token_columns import TokenColumns
from tests.analysis.synthetic import (
    Limiter,
    Timing,
    answered_rows,
    key_run_lines,
    key_run_rows,
    poisson_sends,
    run_meta,
    simulate_key,
    write_run,
)


def _same(a: object, b: object, path: str = "cols") -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, path
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), path
    elif isinstance(a, pa.ChunkedArray):
        assert isinstance(b, pa.ChunkedArray) and a.to_pylist() == b.to_pylist(), path
    elif isinstance(a, Codes | TokenColumns | Columns):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            _same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few thousand records: streams of several lengths, a non-streamed key, 429s of a
    refusing free tier, a wrong URL's 404s and connection failures, over three files."""
    rng = np.random.default_rng(7)
    paid = Limiter("sliding_log", requests=200, window_s=10.0, concurrency=50)
    free = Limiter("fixed_window", requests=20, window_s=10.0, concurrency=3)
    runs = [
        simulate_key("paid-0", "paid", paid, poisson_sends(60, 30, rng), Timing(jitter=0.5), rng),
        simulate_key(
            "paid-1", "paid", paid, poisson_sends(40, 30, rng), Timing(tokens=33, jitter=0.5), rng
        ),
        simulate_key("batch", "paid", paid, poisson_sends(10, 30, rng), Timing(stream=False), rng),
        simulate_key("free-0", "free", free, poisson_sends(15, 30, rng), Timing(), rng),
    ]
    extra = answered_rows(
        "paid-0", "paid", np.linspace(1, 29, 40), status=404, content_type="text/html"
    ) + answered_rows("free-0", "free", np.linspace(2, 28, 25), status=0, transport_error="refused")
    meta = run_meta(
        {"paid": paid, "free": free},
        [("paid-0", "paid"), ("paid-1", "paid"), ("batch", "paid"), ("free-0", "free")],
        warmup_s=2.0,
        slo={"ttft_ms": {"p99": 800}},
        goodput={"ttft_ms": 500, "tpot_ms": 50},
    )
    path = write_run(tmp_path_factory.mktemp("ingest"), meta, runs[:2], extra_rows=extra)
    # two more files: the analysis reads them in name order, after records-sim.jsonl
    with open(path / "records-w2.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(key_run_lines(runs[2], meta.run_id))
    with open(path / "records-w3.jsonl", "w", encoding="utf-8") as fh:
        for row in key_run_rows(runs[3], meta.run_id):
            fh.write(json.dumps(row) + "\n")
    return path


def test_any_batching_of_the_records_gives_the_whole_table_columns(run: Path) -> None:
    table = read_table(run)
    assert table.num_rows > 3000
    whole = columns_from_reduced(reduce_batches([table]))
    for rows in (1, 97, 1000):
        _same(columns_from_reduced(reduce_batches(table_batches(table, rows))), whole)
    _, streamed = load_run(run, cache_min_records=10**9)
    _same(streamed, whole)
    # ITL: the gaps between consecutive chunks of each row, none across rows
    chunks = table.column("chunk_s").to_pylist()
    gaps = [
        (b - a) * 1000.0 for row in chunks if row for a, b in zip(row[:-1], row[1:], strict=True)
    ]
    assert whole.gap_ms.tolist() == gaps
    owners = [i for i, row in enumerate(chunks) if row for _ in row[1:]]
    assert np.repeat(np.arange(whole.n), whole.gap_counts).tolist() == owners


def test_the_column_cache_gives_the_same_columns_and_summary(run: Path, tmp_path: Path) -> None:
    meta, fresh = load_run(run, cache_min_records=10**9)
    assert not (run / column_cache.CACHE_DIR).exists()  # a small run's folder stays as it was
    _, first = load_run(run, cache_min_records=0)  # parses, then writes the cache
    assert (run / column_cache.CACHE_DIR / "manifest.json").is_file()
    cached_reduction = column_cache.load(run)
    assert cached_reduction is not None
    _, cached = load_run(run, cache_min_records=0)
    _same(first, fresh)
    _same(cached, fresh)
    assert analyse(meta, cached).summary.to_json() == analyse(meta, fresh).summary.to_json()


def test_the_cache_is_not_used_once_the_records_change(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    copy.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    _, before = load_run(copy, cache_min_records=0)
    assert column_cache.load(copy) is not None
    line = (copy / "records-w3.jsonl").read_text(encoding="utf-8").splitlines()[0]
    row = json.loads(line)
    row["request_id"] = "appended-1"
    with open(copy / "records-w3.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    assert column_cache.load(copy) is None
    _, after = load_run(copy, cache_min_records=10**9)
    assert after.n == before.n + 1
    assert after.ids([after.n - 1]) == ["appended-1"]


def test_a_torn_last_line_is_skipped_and_the_rest_read(run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    copy.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    whole = (copy / "records-w2.jsonl").read_text(encoding="utf-8")
    lines = whole.splitlines(keepends=True)
    (copy / "records-w2.jsonl").write_text(
        "".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2], encoding="utf-8"
    )
    _, cols = load_run(copy, cache_min_records=10**9)
    _, full = load_run(run, cache_min_records=10**9)
    assert cols.n == full.n - 1


def test_records_parquet_and_an_empty_file_give_the_same_columns(run: Path, tmp_path: Path) -> None:
    from loadkit.records import parquet_file, write_parquet

    copy = tmp_path / "run"
    copy.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    (copy / "records-empty.jsonl").write_bytes(b"")  # a worker that sent nothing
    _, from_jsonl = load_run(copy, cache_min_records=10**9)
    write_parquet(copy)  # newer than every JSONL file: read instead of them
    assert parquet_file(copy) is not None
    _, from_parquet = load_run(copy, cache_min_records=10**9)
    _, full = load_run(run, cache_min_records=10**9)
    _same(from_jsonl, full)
    _same(from_parquet, full)


def _copy(run: Path, to: Path) -> Path:
    to.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (to / f.name).write_bytes(f.read_bytes())
    return to


def _read(run: Path, threads: int, range_bytes: int = 1 << 16) -> Columns:
    """The run's JSONL files in ranges of about ``range_bytes``, by ``threads`` threads."""
    from loadkit.analysis.jsonl_ranges import plan, read_files
    from loadkit.records import arrow_schema, record_files

    files = record_files(run)
    assert len([j for f in files for j in plan(f, False, range_bytes)]) > 3 * len(files)
    return columns_from_reduced(read_files(files, arrow_schema(), threads, range_bytes))


def test_threads_over_byte_ranges_give_the_same_columns(run: Path) -> None:
    _, serial = load_run(run, cache_min_records=10**9)
    # small ranges: strings (keys, error codes, content types) first seen in a later range
    # must keep their first-appearance codes
    _same(_read(run, threads=1), serial)
    parallel = _read(run, threads=3)
    _same(parallel, serial)
    # codes in order of first appearance in the whole run, as one whole-table encoding has
    table = read_table(run)
    for name in ("key", "error_code", "content_type", "transport_error"):
        column = table.column(name).combine_chunks().dictionary_encode()
        assert getattr(parallel, name).names == tuple(column.dictionary.to_pylist()), name


def test_a_last_line_without_newline_is_kept_when_whole_dropped_when_torn(
    run: Path, tmp_path: Path
) -> None:
    _, full = load_run(run, cache_min_records=10**9)
    lines = (run / "records-w2.jsonl").read_bytes().splitlines(keepends=True)
    whole = _copy(run, tmp_path / "whole")  # the writer died just before the newline
    (whole / "records-w2.jsonl").write_bytes(b"".join(lines)[:-1])
    torn = _copy(run, tmp_path / "torn")
    (torn / "records-w2.jsonl").write_bytes(b"".join(lines[:-1]) + lines[-1][:40])
    lone = _copy(run, tmp_path / "lone")  # a file of one torn line
    (lone / "records-w9.jsonl").write_bytes(lines[0][:-9])
    for threads in (1, 2):
        _same(_read(whole, threads), full)
        cols = _read(torn, threads)
        assert cols.n == full.n - 1
        last = json.loads(lines[-1])["request_id"]
        assert last in full.ids(np.arange(full.n)) and last not in cols.ids(np.arange(cols.n))
        _same(_read(lone, threads), full)
    # the line reader (what a torn file was read with before) gives the same columns
    from loadkit.analysis.ingest import reduce_batches
    from loadkit.analysis.jsonl_ranges import _careful
    from loadkit.records import arrow_schema

    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "records-w2.jsonl").write_bytes((torn / "records-w2.jsonl").read_bytes())
    careful = list(_careful(alone / "records-w2.jsonl", arrow_schema()))
    _same(columns_from_reduced(reduce_batches(careful)), _read(alone, 2))


def test_a_bad_line_inside_a_file_is_an_error_naming_it(run: Path, tmp_path: Path) -> None:
    bad = _copy(run, tmp_path / "bad")
    lines = (bad / "records-w2.jsonl").read_bytes().splitlines(keepends=True)
    lines[5] = b'{"run_id": "x", oops\n'
    (bad / "records-w2.jsonl").write_bytes(b"".join(lines))
    for threads in (1, 2):
        with pytest.raises(ValueError, match=r"records-w2\.jsonl:6: not a JSON record"):
            _read(bad, threads)
    from loadkit.analysis.columns import UnusableInput

    with pytest.raises(UnusableInput, match=r"records-w2\.jsonl:6"):
        load_run(bad, cache_min_records=10**9)


def test_outcomes_and_refusals_worked_out_a_few_rows_at_a_time_are_the_same(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loadkit.analysis import columns
    from loadkit.outcomes import classify

    table = read_table(run)
    whole = columns_from_reduced(reduce_batches([table]))
    # every row's outcome as classify has it, whatever rows are taken together
    want = [
        columns.OUTCOMES.index(
            classify(
                int(whole.status[i]),
                whole.error_code.label(int(whole.error_code.codes[i])),
                whole.content_type.label(int(whole.content_type.codes[i])),
                whole.transport_error.label(int(whole.transport_error.codes[i])),
            )
        )
        for i in range(whole.n)
    ]
    assert whole.outcome.tolist() == want and len(set(want)) > 3
    monkeypatch.setattr(columns, "OUTCOME_ROWS", 97)
    chunked = columns_from_reduced(reduce_batches([table]))
    assert chunked.outcome.dtype == np.int8 and chunked.outcome.tolist() == want
    assert np.count_nonzero(whole.refused) > 10
    assert chunked.refused.dtype == np.int8 and np.array_equal(chunked.refused, whole.refused)
