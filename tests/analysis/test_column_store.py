"""The column cache as the analysis writes it while reading (``column_cache.SpillJoiner``)
and reads it back memory-mapped: the same reduction, bit for bit, as joining in memory; the
same summary.json from read-only mapped columns as from the records; no half cache after a
failed or interrupted reading; a read-only run folder analysed without leaving anything
behind; a cache of records that changed (even while they were read) never used."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadkit.analysis import column_cache, jsonl_ranges
from loadkit.analysis.columns import UnusableInput, load_run
from loadkit.analysis.ingest import Reduced, reduce_batch
from loadkit.analysis.jsonl_ranges import read_files
from loadkit.analysis.summary import SUMMARY_FILE, summarize_run
from loadkit.records import arrow_schema, record_files
from tests.analysis.synthetic import (
    Limiter,
    Timing,
    answered_rows,
    key_run_lines,
    poisson_sends,
    run_meta,
    simulate_key,
    write_run,
)
from tests.analysis.test_golden import golden_run

ROOT = Path(__file__).resolve().parents[2]


def _mixed_run(folder: Path) -> Path:
    """Streams of several lengths, a non-streamed key, 429s, 404 pages and connection
    failures over three files; strings first seen late in the run."""
    rng = np.random.default_rng(11)
    paid = Limiter("sliding_log", requests=200, window_s=10.0, concurrency=50)
    free = Limiter("fixed_window", requests=20, window_s=10.0, concurrency=3)
    runs = [
        simulate_key("paid-0", "paid", paid, poisson_sends(60, 20, rng), Timing(jitter=0.5), rng),
        simulate_key("paid-1", "paid", paid, poisson_sends(30, 20, rng), Timing(tokens=33), rng),
        simulate_key("batch", "paid", paid, poisson_sends(10, 20, rng), Timing(stream=False), rng),
        simulate_key("free-0", "free", free, poisson_sends(15, 20, rng), Timing(), rng),
    ]
    extra = answered_rows(
        "paid-0", "paid", np.linspace(1, 19, 30), status=404, content_type="text/html"
    ) + answered_rows("free-0", "free", np.linspace(2, 18, 20), status=0, transport_error="reset")
    meta = run_meta(
        {"paid": paid, "free": free},
        [("paid-0", "paid"), ("paid-1", "paid"), ("batch", "paid"), ("free-0", "free")],
        slo={"ttft_ms": {"p99": 800}},
        goodput={"ttft_ms": 500, "tpot_ms": 50},
    )
    path = write_run(folder, meta, runs[:2], extra_rows=extra)
    with open(path / "records-w2.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(key_run_lines(runs[2], meta.run_id))
    with open(path / "records-w3.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(key_run_lines(runs[3], meta.run_id))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mixed_run(tmp_path_factory.mktemp("store") / "run")


def _copy(run: Path, to: Path) -> Path:
    to.mkdir()
    for f in run.iterdir():
        if f.is_file():
            shutil.copy2(f, to / f.name)
    return to


def _cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".loadkit-columns"))


def _identical(a: Reduced, b: Reduced) -> None:
    """Every array (dtype and bytes: NaNs and signed zeros too), every dictionary in the
    same order, every request id."""
    assert a.n == b.n
    pairs: list[tuple[str, np.ndarray, np.ndarray]] = [
        (f"arrays.{k}", a.arrays[k], b.arrays[k]) for k in a.arrays
    ]
    assert sorted(a.arrays) == sorted(b.arrays)
    assert list(a.codes) == list(b.codes)
    for name in a.codes:
        assert a.codes[name][1] == b.codes[name][1], name
        pairs.append((f"codes.{name}", a.codes[name][0], b.codes[name][0]))
    pairs += [("gap_ms", a.gap_ms, b.gap_ms), ("gap_counts", a.gap_counts, b.gap_counts)]
    for what, x, y in pairs:
        assert x.dtype == y.dtype and x.shape == y.shape, what
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), what
    assert a.request_id.to_pylist() == b.request_id.to_pylist()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("min_records", [0, 1, 700, 10**9])
def test_a_spilled_reduction_is_bit_identical_to_the_one_joined_in_memory(
    run: Path, tmp_path: Path, threads: int, min_records: int
) -> None:
    files = record_files(run)
    # small ranges: many parts, strings first seen in a later part, spilling from the first
    # part, from the middle of the run (700), or never
    memory = read_files(files, arrow_schema(), threads, range_bytes=1 << 15)
    assert memory.n > 2000 and memory.gap_ms.size > memory.n
    folder = _copy(run, tmp_path / "run")
    sources = column_cache.source_signature(folder)
    with column_cache.Spill(folder, sources, min_records) as spill:
        spilled = read_files(files, arrow_schema(), threads, 1 << 15, joiner=spill.joiner)
        kept = spill.keep()
    _identical(spilled, memory)
    assert kept == (min_records <= memory.n)
    if kept:
        assert not spilled.gap_ms.flags.writeable  # mapped from the cache's files
        assert _cache_files(folder) == [column_cache.CACHE_DIR]
        cached = column_cache.load(folder)
        assert cached is not None
        _identical(cached, memory)
    else:
        assert _cache_files(folder) == []


@pytest.mark.parametrize("make", [golden_run, _mixed_run], ids=["golden", "mixed"])
def test_the_analysis_of_mapped_read_only_columns_writes_the_same_summary(
    make: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make(tmp_path / "source")
    plain = _copy(source, tmp_path / "plain")
    cached = _copy(source, tmp_path / "cached")
    summarize_run(plain)
    assert _cache_files(plain) == []
    monkeypatch.setattr(column_cache, "CACHE_MIN_RECORDS", 0)
    summarize_run(cached)  # spills while reading
    first = (cached / SUMMARY_FILE).read_text(encoding="utf-8")
    assert _cache_files(cached) == [column_cache.CACHE_DIR]
    assert column_cache.load(cached) is not None
    summarize_run(cached)  # from the cache
    want = (plain / SUMMARY_FILE).read_text(encoding="utf-8")
    assert first == want
    assert (cached / SUMMARY_FILE).read_text(encoding="utf-8") == want


def test_a_failed_reading_leaves_no_half_cache(run: Path, tmp_path: Path) -> None:
    bad = _copy(run, tmp_path / "bad")
    lines = (bad / "records-w3.jsonl").read_bytes().splitlines(keepends=True)
    lines[5] = b'{"run_id": "x", oops\n'
    (bad / "records-w3.jsonl").write_bytes(b"".join(lines))
    # the files before it were spilled already; the bad line fails the reading
    with pytest.raises(UnusableInput, match=r"records-w3\.jsonl:6"):
        load_run(bad, cache_min_records=0)
    assert _cache_files(bad) == []


def test_an_interrupted_reading_leaves_no_half_cache(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _copy(run, tmp_path / "run")
    write = column_cache.SpillJoiner._write
    seen: list[str] = []

    def interrupted(self: column_cache.SpillJoiner, part: Reduced) -> None:
        if len(seen) == 2:  # Ctrl-C with two parts in the files
            seen.append(str(self.folder))
            raise KeyboardInterrupt
        seen.append("written")
        write(self, part)

    monkeypatch.setattr(column_cache.SpillJoiner, "_write", interrupted)
    monkeypatch.setattr(jsonl_ranges, "BLOCK_BYTES", 1 << 15)  # several parts a file
    with pytest.raises(KeyboardInterrupt):
        load_run(folder, cache_min_records=0)
    assert seen[2].startswith(str(folder / ".loadkit-columns.tmp-"))
    assert _cache_files(folder) == []


_SPILL_THEN_WAIT = """
import sys, time
from loadkit.analysis import column_cache, jsonl_ranges
column_cache.CACHE_MIN_RECORDS = 0
jsonl_ranges.BLOCK_BYTES = 1 << 15
write = column_cache.SpillJoiner._write
def slow(self, part):
    write(self, part)
    print("spilling", flush=True)
    time.sleep(30)
column_cache.SpillJoiner._write = slow
from loadkit.cli import main
sys.exit(main(["analyze", sys.argv[1]]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_loadkit_analyze_stopped_by_a_signal_leaves_no_half_cache(
    run: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM (a CI runner's timeout) or SIGHUP in the middle of writing the column cache
    ends ``loadkit analyze`` as Ctrl-C does: "interrupted", exit 130, no cache folder."""
    folder = _copy(run, tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-c", _SPILL_THEN_WAIT, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "spilling"
        assert _cache_files(folder)  # the unfinished cache is there
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert _cache_files(folder) == []


def test_a_read_only_run_folder_is_analysed_and_left_as_it_was(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _copy(run, tmp_path / "run")
    spare = tmp_path / "tmp"
    spare.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(spare))
    _, want = load_run(run, cache_min_records=10**9)
    before = sorted(p.name for p in folder.iterdir())
    folder.chmod(0o555)
    try:
        if os.geteuid() == 0:  # root writes anywhere: refuse as a read-only folder would

            def refused(run_dir: Path) -> Path:
                raise PermissionError(errno.EROFS, "Read-only file system", str(run_dir))

            monkeypatch.setattr(column_cache, "_new_folder", refused)
        _, cols = load_run(folder, cache_min_records=0)
    finally:
        folder.chmod(0o755)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert list(spare.iterdir()) == []  # the spill's folder went as soon as it was mapped
    # ... and the mapped columns stay readable
    assert not cols.gap_ms.flags.writeable
    assert cols.n == want.n and np.array_equal(cols.gap_ms, want.gap_ms)
    assert cols.ids(np.arange(cols.n)) == want.ids(np.arange(want.n))


def test_a_full_disk_reads_the_run_in_memory_without_a_cache(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _copy(run, tmp_path / "run")
    _, want = load_run(run, cache_min_records=10**9)

    def full(self: Any, part: np.ndarray) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(column_cache._ColumnFile, "append", full)
    _, cols = load_run(folder, cache_min_records=0)
    assert _cache_files(folder) == []
    assert cols.n == want.n and np.array_equal(cols.gap_ms, want.gap_ms)


def test_records_appended_while_they_are_read_make_the_cache_stale(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _copy(run, tmp_path / "run")
    line = (folder / "records-w3.jsonl").read_text(encoding="utf-8").splitlines()[0]
    row = json.loads(line)
    row["request_id"] = "appended-1"
    calls = []

    def appending(batch: Any) -> Reduced:
        if not calls:  # a worker still writing while the analysis reads
            with open(folder / "records-w3.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        calls.append(1)
        return reduce_batch(batch)

    with monkeypatch.context() as m:
        m.setattr(jsonl_ranges, "reduce_batch", appending)
        _, during = load_run(folder, cache_min_records=0)
    assert _cache_files(folder) == [column_cache.CACHE_DIR]
    assert column_cache.load(folder) is None  # the signature was taken before the reading
    _, after = load_run(folder, cache_min_records=0)  # rebuilt
    assert after.ids([after.n - 1]) == ["appended-1"]
    cached = column_cache.load(folder)
    assert cached is not None and cached.n == after.n
    assert during.n == after.n - 1  # planned before the line was appended


def test_a_cache_of_another_format_is_ignored_and_rebuilt(run: Path, tmp_path: Path) -> None:
    folder = _copy(run, tmp_path / "run")
    load_run(folder, cache_min_records=0)
    manifest_file = folder / column_cache.CACHE_DIR / "manifest.json"
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    manifest["format"] = column_cache.CACHE_FORMAT - 1
    manifest_file.write_text(json.dumps(manifest), encoding="utf-8")
    assert column_cache.load(folder) is None
    load_run(folder, cache_min_records=0)
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    assert manifest["format"] == column_cache.CACHE_FORMAT
    assert column_cache.load(folder) is not None


def test_a_killed_analysis_unfinished_cache_is_removed(run: Path, tmp_path: Path) -> None:
    folder = _copy(run, tmp_path / "run")
    dead = folder / f"{column_cache.CACHE_DIR}.tmp-{2**31 - 1}-0"  # no such process
    alive = folder / f"{column_cache.CACHE_DIR}.tmp-{os.getppid()}-0"  # still writing
    for d in (dead, alive):
        d.mkdir()
        (d / "gap_ms.npy").write_bytes(b"\x93NUMPY")
    load_run(folder, cache_min_records=0)
    assert _cache_files(folder) == [column_cache.CACHE_DIR, alive.name]


def test_records_parquet_spills_the_same_columns(run: Path, tmp_path: Path) -> None:
    from loadkit.records import parquet_file, write_parquet
    from tests.analysis.test_ingest import _same

    folder = _copy(run, tmp_path / "run")
    write_parquet(folder)  # newer than every JSONL file: read instead of them
    assert parquet_file(folder) is not None
    _, want = load_run(run, cache_min_records=10**9)
    _, spilled = load_run(folder, cache_min_records=0)
    assert _cache_files(folder) == [column_cache.CACHE_DIR]
    _, cached = load_run(folder, cache_min_records=0)
    _same(spilled, want)
    _same(cached, want)
