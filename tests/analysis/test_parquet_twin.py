"""A record file's Parquet twin (``loadkit.parquet_twin``): the record writer leaves one
beside each large JSONL file, the analysis reads it instead of parsing the JSON and gets
exactly what the JSONL gives; whenever the twin cannot stand for its JSONL (a killed run,
records appended, a damaged file, a converter that fell behind) the JSONL is read, and
nothing is lost."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from loadkit.analysis.columns import load_run
from loadkit.analysis.jsonl_ranges import TWIN, plan
from loadkit.analysis.summary import analyse
from loadkit.parquet_twin import PARTIAL_SUFFIX, ParquetTwin, twin_path, valid_twin
from loadkit.records import (
    RECORD_FIELDS,
    RecordWriter,
    RequestRecord,
    iter_records,
    read_table,
)
from tests.analysis.test_ingest import _same, run  # noqa: F401 -- the fixture
from tests.unit.test_records_writer import record

ROOT = Path(__file__).resolve().parents[2]
BLOCK = 64 << 10  # small blocks: several row groups and a tail converted at close


def _rewrite(run: Path, to: Path, block: int | None = BLOCK) -> Path:  # noqa: F811
    """The run's records written again as the engine writes them, inside a running loop
    (so held and flushed in batches), each file with its twin (``block`` None: none)."""
    to.mkdir()
    for f in run.iterdir():
        if f.is_file() and not f.name.startswith("records-"):
            (to / f.name).write_bytes(f.read_bytes())

    async def write(path: Path, records: list) -> None:
        with RecordWriter(
            path, flush_interval_s=0.001, twin_block_bytes=block, twin_min_bytes=0
        ) as w:
            for i, r in enumerate(records):
                w.write(r)
                if i % 200 == 199:
                    await asyncio.sleep(0.002)  # the flush timer fires: a batch is written

    for f in sorted(run.glob("records-*.jsonl")):
        asyncio.run(write(to / f.name, _records(f)))
    return to


def _records(path: Path) -> list[RequestRecord]:
    """The file's records (the synthetic rows leave out fields a record has as None)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = {f: None for f in RECORD_FIELDS} | {"chunk_s": []} | json.loads(line)
        out.append(RequestRecord.from_dict(row))
    return out


def _without_twins(run: Path, to: Path) -> Path:  # noqa: F811
    to.mkdir()
    for f in run.iterdir():
        if f.is_file() and not f.name.endswith(".parquet"):
            (to / f.name).write_bytes(f.read_bytes())
    return to


def _twin_jobs(run: Path) -> int:  # noqa: F811
    return sum(
        j.kind == TWIN for f in sorted(run.glob("records-*.jsonl")) for j in plan(f, False, None)
    )


def test_the_analysis_reads_the_twins_and_gets_what_the_jsonl_gives(
    run: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    twinned = _rewrite(run, tmp_path / "twinned")
    files = sorted(twinned.glob("records-*.jsonl"))
    assert len(files) == 3
    for f in files:
        found = valid_twin(f)
        assert found is not None, f.name
        assert found[1] >= 2 or f.stat().st_size < BLOCK  # row groups as blocks went by
        assert not f.with_suffix(PARTIAL_SUFFIX).exists()
    assert _twin_jobs(twinned) == len(files)
    plain = _without_twins(twinned, tmp_path / "plain")
    assert _twin_jobs(plain) == 0

    meta, from_twins = load_run(twinned, cache_min_records=10**9)
    _, from_jsonl = load_run(plain, cache_min_records=10**9)
    _, original = load_run(run, cache_min_records=10**9)
    _same(from_twins, from_jsonl)
    _same(from_twins, original)
    # the twins were read, not set aside for their JSONL
    from loadkit.analysis.jsonl_ranges import job_parts
    from loadkit.records import arrow_schema

    for f in files:
        jobs = plan(f, False, None)
        assert [j.kind for j in jobs] == [TWIN]
        assert sum(part.n for j in jobs for part in job_parts(j, arrow_schema())) > 0
    # threads over jobs of a few row groups each, joined in order: the same columns
    from loadkit.analysis.columns import columns_from_reduced
    from loadkit.analysis.jsonl_ranges import read_files

    for threads in (1, 3):
        parts = read_files(files, arrow_schema(), threads, range_bytes=1 << 16)
        _same(columns_from_reduced(parts), from_jsonl)
    assert (
        analyse(meta, from_twins).summary.to_json() == analyse(meta, from_jsonl).summary.to_json()
    )
    assert read_table(twinned).equals(read_table(plain))


def test_a_file_under_the_minimum_gets_no_twin(tmp_path: Path) -> None:
    path = tmp_path / "records-w.jsonl"
    with RecordWriter(path) as w:  # the defaults: a block of 16 MB, a twin from 4 MB
        for i in range(50):
            w.write(record(i))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records-w.jsonl"]


def test_records_appended_after_the_twin_are_read_from_the_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "records-w.jsonl"
    with RecordWriter(path, twin_block_bytes=4096, twin_min_bytes=0) as w:
        for i in range(40):
            w.write(record(i))
    assert valid_twin(path) is not None
    with RecordWriter(path, twin_block_bytes=4096, twin_min_bytes=0) as w:
        w.write(record(40))  # a writer that appends to a file leaves it without a twin
    assert valid_twin(path) is None
    assert [r.request_id for r in iter_records(tmp_path)][-1] == "async-0-40"
    assert read_table(tmp_path).num_rows == 41
    assert _twin_jobs(tmp_path) == 0


def test_a_damaged_twin_is_set_aside_for_its_jsonl(run: Path, tmp_path: Path) -> None:  # noqa: F811
    twinned = _rewrite(run, tmp_path / "twinned")
    twin = twin_path(twinned / "records-sim.jsonl")
    data = bytearray(twin.read_bytes())
    middle = len(data) // 3
    data[middle : middle + 4096] = bytes(4096)  # a row group's pages, not the footer
    stat = twin.stat()
    twin.write_bytes(bytes(data))
    os.utime(twin, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert valid_twin(twinned / "records-sim.jsonl") is not None  # its footer still reads
    _, cols = load_run(twinned, cache_min_records=10**9)
    _, original = load_run(run, cache_min_records=10**9)
    _same(cols, original)
    plain = _without_twins(twinned, tmp_path / "plain")
    assert read_table(twinned).equals(read_table(plain))
    # a twin that is not Parquet at all is not even tried
    twin.write_bytes(b"not parquet")
    assert valid_twin(twinned / "records-sim.jsonl") is None
    _same(load_run(twinned, cache_min_records=10**9)[1], original)


def test_a_converter_that_falls_behind_catches_up_at_close(tmp_path: Path) -> None:
    """Starved by the run (a saturated core), the converter holds nothing in memory and
    converts what it missed once it runs again, at the latest when the file closes."""
    import threading

    release = threading.Event()
    started: list[int] = []

    class Stuck(ParquetTwin):
        def _convert_to(self, end: int) -> None:
            started.append(end)
            release.wait(30)
            super()._convert_to(end)

    path = tmp_path / "records-w.jsonl"
    w = RecordWriter(path, flush_interval_s=0, twin_block_bytes=None)
    w._twin = twin = Stuck(path, block_bytes=2048, min_bytes=0)
    for i in range(300):
        w.write(record(i))
    deadline = time.monotonic() + 30  # the thread starts when the machine lets it
    while not started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(started) == 1  # one job at a time: the stuck one
    assert twin.covered == 0 and twin.written == path.stat().st_size > 100 * 2048
    assert not [name for name in vars(twin) if "pending" in name]  # no bytes held
    release.set()
    w.close()
    found = valid_twin(path)
    assert found is not None and found[1] > 100  # row groups of about one block each
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / path.name).write_bytes(path.read_bytes())
    assert read_table(tmp_path).equals(read_table(plain))
    assert len(started) == 2  # the close converted the rest in one go


def test_a_twin_that_fails_is_removed_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "records-w.jsonl"
    writer = RecordWriter(path, flush_interval_s=0, twin_block_bytes=2048, twin_min_bytes=0)
    with caplog.at_level(logging.WARNING, logger="loadkit.parquet_twin"), writer as w:
        for i in range(20):
            w.write(record(i))
        with open(path, "ab") as other:  # another process writes into the same file
            other.write(b'{"not": "a record of this writer"}\n')
        for i in range(20, 40):
            w.write(record(i))
    assert "records-w.jsonl: no Parquet twin" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records-w.jsonl"]


_KILLED = """
import asyncio, sys
from loadkit.records import RecordWriter
from tests.unit.test_records_writer import record

async def main():
    w = RecordWriter(sys.argv[1], twin_block_bytes=8192, twin_min_bytes=0)
    for i in range(400):
        w.write(record(i))
        if i % 50 == 49:
            await asyncio.sleep(0.12)  # a flush: blocks go to the twin's thread
    for _ in range(200):  # until the twin's thread has written row groups (a busy machine)
        if w._twin.rows:
            break
        await asyncio.sleep(0.1)
    print("written", flush=True)
    await asyncio.sleep(60)  # killed here

asyncio.run(main())
"""


def test_a_killed_writer_leaves_no_twin_and_its_jsonl_is_read(tmp_path: Path) -> None:
    path = tmp_path / "records-w.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "written\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert path.with_suffix(PARTIAL_SUFFIX).stat().st_size > 0  # row groups, no footer
    assert valid_twin(path) is None
    assert len(iter_records(tmp_path)) == 400
    assert read_table(tmp_path).num_rows == 400
    assert _twin_jobs(tmp_path) == 0


def _child(script: str, path: Path) -> subprocess.CompletedProcess[str]:
    """``script`` run in a fresh interpreter with ``path`` as its argument; it must exit 0."""
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out


_GEVENT = """
from gevent import monkey
monkey.patch_all()
import os, sys
import gevent
from loadkit.records import RecordWriter
from tests.unit.test_records_writer import record

w = RecordWriter(sys.argv[1], twin_block_bytes=8192, twin_min_bytes=0)
for i in range(300):
    w.write(record(i))
# Locust's master closes the files in one greenlet and quits from another: the close must
# not yield to the hub half-way (a cooperative wait would let the process end first)
closer = gevent.spawn(w.close)
gevent.sleep(0)
print("closed" if closer.dead else "still closing", flush=True)
os._exit(0)
"""


def test_a_gevent_process_writes_its_twin_on_a_real_thread(tmp_path: Path) -> None:
    # the Locust master writes every worker's records in a gevent-patched process
    path = tmp_path / "records-w.jsonl"
    t0 = time.monotonic()
    out = _child(_GEVENT, path)
    assert out.stdout == "closed\n" and time.monotonic() - t0 < 120
    found = valid_twin(path)
    assert found is not None and found[1] >= 5
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / path.name).write_bytes(path.read_bytes())
    assert read_table(tmp_path).equals(read_table(plain))


def test_a_twin_stands_only_for_the_bytes_it_was_made_from(tmp_path: Path) -> None:
    """The same size is not enough: a JSONL edited in place (and copied so that the twin
    looks newer) no longer has its twin; nor does a file a new run starts."""
    path = tmp_path / "records-w.jsonl"
    with RecordWriter(path, twin_block_bytes=4096, twin_min_bytes=0) as w:
        for i in range(60):
            w.write(record(i, tier="paid"))
    assert valid_twin(path) is not None
    twin = twin_path(path)
    path.write_bytes(path.read_bytes().replace(b'"paid"', b'"gold"'))  # same size
    later = twin.stat().st_mtime_ns + 10**9
    os.utime(twin, ns=(later, later))
    assert valid_twin(path) is None
    assert {r.tier for r in iter_records(tmp_path)} == {"gold"}
    assert set(read_table(tmp_path).column("tier").to_pylist()) == {"gold"}
    _, cols = load_run_records(tmp_path)
    assert cols.tier.names == ("gold",)
    # a new file where an old run left its twin: the old twin is gone at once
    path.unlink()
    with RecordWriter(path, twin_block_bytes=None) as w:
        w.write(record(0))
    assert not twin.exists()


def load_run_records(folder: Path) -> tuple[None, Any]:
    """(None, Columns) of a folder of record files without run.json."""
    from loadkit.analysis.columns import columns_from_reduced
    from loadkit.analysis.ingest import read_reduced

    return None, columns_from_reduced(read_reduced(folder))


def test_a_twin_of_another_version_is_set_aside(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "records-w.jsonl"
    with RecordWriter(path, twin_block_bytes=4096, twin_min_bytes=0) as w:
        for i in range(60):
            w.write(record(i))
    twin = twin_path(path)
    plain = _without_twins(tmp_path, tmp_path / "plain")
    _, want = load_run_records(plain)
    table = pq.read_table(twin)
    meta = pq.read_metadata(twin).metadata
    for changed in (
        table.drop_columns(["conn_s"]),  # a field this loadkit reads, missing
        table.set_column(  # a column of another type
            table.schema.get_field_index("status"),
            "status",
            table.column("status").cast(pa.string()),
        ),
    ):
        pq.write_table(changed.replace_schema_metadata(meta), twin)
        assert valid_twin(path) is not None  # its footer still matches the JSONL
        _, cols = load_run_records(tmp_path)
        _same(cols, want)


def test_no_thread_for_the_converter_costs_only_the_twin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from loadkit import parquet_twin

    def no_thread(self: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(parquet_twin._Converter, "__init__", no_thread)
    path = tmp_path / "records-w.jsonl"
    writer = RecordWriter(path, flush_interval_s=0, twin_block_bytes=2048, twin_min_bytes=0)
    with caplog.at_level(logging.WARNING, logger="loadkit.parquet_twin"), writer as w:
        for i in range(50):
            w.write(record(i))
    assert "no thread for the converter" in caplog.text
    assert len(iter_records(tmp_path)) == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records-w.jsonl"]


def test_an_empty_file_gets_no_twin_and_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="loadkit.parquet_twin"):
        RecordWriter(tmp_path / "records-w.jsonl", twin_min_bytes=0).close()
    assert caplog.text == ""
    assert [p.name for p in tmp_path.iterdir()] == ["records-w.jsonl"]


_SIGNAL_IN_CLOSE = """
import signal, sys, threading, time
from loadkit import parquet_twin
from loadkit.records import RecordWriter
from tests.unit.test_records_writer import record

slow = parquet_twin.ParquetTwin._append
def crawl(self, data, size):
    time.sleep(0.3)
    slow(self, data, size)
parquet_twin.ParquetTwin._append = crawl

w = RecordWriter(sys.argv[1], flush_interval_s=0, twin_block_bytes=2048, twin_min_bytes=0)
for i in range(100):
    w.write(record(i))
threading.Timer(0.5, signal.raise_signal, (signal.SIGINT,)).start()
try:
    w.close()  # the converter has ~30 slow blocks to go: the signal comes meanwhile
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_a_signal_while_the_twin_is_completed_stops_it_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "records-w.jsonl"
    out = _child(_SIGNAL_IN_CLOSE, path)  # exits 0: no abort of the interpreter
    assert out.stdout == "interrupted\n"
    assert "no Parquet twin (the run was stopped" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records-w.jsonl"]
    assert len(iter_records(tmp_path)) == 100


def test_records_parquet_from_twins_holds_every_record(run: Path, tmp_path: Path) -> None:  # noqa: F811
    """``loadkit run --parquet`` writes records.parquet file by file, from the twins where
    they stand for their JSONL: the same rows as the JSONL, and no table of the whole run."""
    from loadkit.records import PARQUET_FILE, write_parquet

    twinned = _rewrite(run, tmp_path / "twinned")
    assert _twin_jobs(twinned) > 0
    want = read_table(twinned)
    write_parquet(twinned)
    for f in twinned.glob("records-*"):  # records.parquet alone now
        f.unlink()
    got = read_table(twinned)
    assert got.num_rows == want.num_rows > 1000
    assert got.column("request_id").to_pylist() == want.column("request_id").to_pylist()
    assert got.column("chunk_s").to_pylist() == want.column("chunk_s").to_pylist()
    assert not list(twinned.glob(f".{PARQUET_FILE}*"))  # no partial file left behind
