"""A run's JSONL record files read as byte ranges split at newlines, each parsed by arrow's
JSON reader and reduced (``ingest.reduce_batch``) batch by batch, by one thread per core
(arrow parses without holding the GIL; parsing is nearly all of a first analysis' reading,
~180 MB/s a core). A file with a valid Parquet twin (``loadkit.parquet_twin``) is read as
the twin's row groups instead, a few to a job. The batches' reductions are joined in file
and range order, so the columns, string codes' order included, are the same however the
files were split.

A file a killed writer left without a final newline has its last line read on its own, by
the line reader, which drops it when it is torn; a file arrow cannot read is read whole by
the line reader, which names the bad line."""

from __future__ import annotations

import io
import json
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import pyarrow as pa

from loadkit.analysis.ingest import (
    FIELDS,
    Joiner,
    PartJoiner,
    Reduced,
    reduce_batch,
    select_fields,
)

#: About how many bytes of JSONL one thread parses and reduces at a time.
RANGE_BYTES = 16 << 20
#: Bytes of JSON per arrow batch.
BLOCK_BYTES = 8 << 20
#: A twin's row groups (~16 MB of JSONL each) read by one thread at a time.
TWIN_GROUPS = 4
_MAX_THREADS = 8  # beyond this the joining, not the parsing, is the bottleneck


class TwinUnusable(Exception):
    """A record file's Parquet twin could not be read after all: parse its JSONL."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


class ReadCarefully(Exception):
    """Arrow's JSON reader could not read this file: read it with the line reader."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


@dataclass(frozen=True)
class Job:
    """A piece of one record file: whole lines in bytes [start, end) for arrow
    (``LINES``), the last line of a file without a final newline (``TAIL``), the whole
    file for the line reader (``CAREFUL``), or row groups [start, end) of the file's
    Parquet twin (``TWIN``: ``path`` is still the JSONL file's)."""

    path: Path
    start: int
    end: int
    kind: str


LINES, TAIL, CAREFUL, TWIN = "lines", "tail", "careful", "twin"


def cpus() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """Threads that parse ranges at once: one per core."""
    return min(cpus(), _MAX_THREADS)


def _next_line_start(fh: io.BufferedReader, pos: int, end: int) -> int:
    """The offset just after the first newline at or after ``pos`` (``end`` if none)."""
    fh.seek(pos)
    while pos < end:
        chunk = fh.read(min(1 << 16, end - pos))
        if not chunk:
            return end
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + i + 1
        pos += len(chunk)
    return end


def _body_end(fh: io.BufferedReader, size: int) -> int:
    """The offset just after the file's last newline (0 if it has none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - (1 << 16))
        fh.seek(start)
        chunk = fh.read(pos - start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def plan(path: Path, careful: bool, range_bytes: int | None, twin: bool = True) -> list[Job]:
    """One file as jobs in order: its Parquet twin's row groups when it has a valid one
    (``loadkit.parquet_twin.valid_twin``; ``twin`` False: never), else ranges of whole
    lines of about ``range_bytes`` each (None: one range), then the unterminated last line
    if the file has one."""
    from loadkit.parquet_twin import valid_twin

    size = path.stat().st_size
    if size == 0:
        return []
    if careful:
        return [Job(path, 0, size, CAREFUL)]
    found = valid_twin(path) if twin else None
    if found is not None:
        groups = found[1]
        step = TWIN_GROUPS if range_bytes else max(1, groups)
        return [Job(path, g, min(g + step, groups), TWIN) for g in range(0, groups, step)]
    jobs = []
    with open(path, "rb") as fh:
        body = _body_end(fh, size)
        # equal ranges, not range_bytes and a remainder: the threads' shares stay even
        step = body if not (range_bytes and body) else -(-body // -(-body // range_bytes))
        start = 0
        while start < body:
            end = _next_line_start(fh, start + step, body)
            jobs.append(Job(path, start, end, LINES))
            start = end
    if body < size:
        jobs.append(Job(path, body, size, TAIL))
    return jobs


class _Slice(io.RawIOBase):
    """Bytes [start, end) of a file as a stream (what arrow's reader is given)."""

    def __init__(self, path: Path, start: int, end: int) -> None:
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115 -- closed with the slice
        self._fh.seek(start)
        self._left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        got = self._fh.readinto(memoryview(buffer)[:n])
        self._left -= got
        return got

    def close(self) -> None:
        self._fh.close()
        super().close()


def _record_batch(rows: list[dict[str, object]], schema: pa.Schema) -> pa.RecordBatch | None:
    if not rows:
        return None
    from loadkit.records import records_table

    table = records_table(rows, schema).select(list(FIELDS))
    return table.combine_chunks().to_batches()[0]


def _tail(job: Job, schema: pa.Schema) -> pa.RecordBatch | None:
    """The unterminated last line: a record, or nothing when it is torn (as the line
    reader, ``loadkit.records.iter_records_file``, has it)."""
    from loadkit.records import RequestRecord

    with open(job.path, "rb") as fh:
        fh.seek(job.start)
        raw = fh.read(job.end - job.start)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # torn by a killed writer
    if not isinstance(data, dict):
        raise ValueError(f"{job.path}: the last line is not a JSON record")
    return _record_batch([asdict(RequestRecord.from_dict(data))], schema)


def _careful(path: Path, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    from loadkit.records import iter_records_file

    rows = [asdict(r) for r in iter_records_file(path)]
    batch = _record_batch(rows, schema)
    if batch is not None:
        yield batch


def _lines(job: Job, schema: pa.Schema, use_threads: bool) -> Iterator[pa.RecordBatch]:
    import pyarrow.json as pj

    opts = pj.ParseOptions(
        explicit_schema=select_fields(schema), unexpected_field_behavior="ignore"
    )
    read = pj.ReadOptions(block_size=BLOCK_BYTES, use_threads=use_threads)
    try:
        with _Slice(job.path, job.start, job.end) as stream:
            reader = pj.open_json(stream, read_options=read, parse_options=opts)
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                yield batch
    except pa.ArrowInvalid:
        raise ReadCarefully(job.path) from None
    except OSError as exc:
        raise ValueError(f"{job.path}: cannot read ({exc})") from None


def _twin(job: Job, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The job's row groups of the file's twin; TwinUnusable when they cannot be read or
    their columns are not exactly this loadkit's (a twin of another version)."""
    import pyarrow.parquet as pq

    from loadkit.parquet_twin import twin_path

    target = select_fields(schema)
    try:
        twin = pq.ParquetFile(twin_path(job.path), page_checksum_verification=True)
        have = twin.schema_arrow
        for f in target:
            i = have.get_field_index(f.name)
            if i < 0 or have.field(i).type != f.type:
                raise TwinUnusable(job.path)
        table = twin.read_row_groups(range(job.start, job.end), columns=list(FIELDS))
        table = table.select(list(FIELDS)).cast(target)
    except (OSError, pa.ArrowException, KeyError, ValueError):
        raise TwinUnusable(job.path) from None
    yield from table.combine_chunks().to_batches()


def job_parts(job: Job, schema: pa.Schema, use_threads: bool = True) -> Iterator[Reduced]:
    """The job's records, reduced batch by batch. Raises ReadCarefully when arrow cannot
    parse the range, TwinUnusable when the file's twin cannot be read, ValueError (naming
    the file, and the line if it can) otherwise."""
    if job.kind == TWIN:
        batches: Iterator[pa.RecordBatch] = _twin(job, schema)
    elif job.kind == CAREFUL:
        batches = _careful(job.path, schema)
    elif job.kind == TAIL:
        one = _tail(job, schema)
        batches = iter([one] if one is not None else [])
    else:
        batches = _lines(job, schema, use_threads)
    for batch in batches:
        if batch.num_rows:
            yield reduce_batch(batch)


def read_files(
    files: list[Path],
    schema: pa.Schema,
    threads: int,
    range_bytes: int = RANGE_BYTES,
    joiner: Callable[[], PartJoiner] = Joiner,
) -> Reduced:
    """Every record of ``files``, in order, reduced and joined by a joiner from ``joiner``;
    with ``threads`` > 1 the ranges (and twins' row groups) are read by that many threads.
    A file arrow cannot parse is read again with the line reader, a twin that cannot be
    read is set aside for its JSONL (all of the files from the start, by a fresh joiner:
    rare). Raises ValueError naming the file, and the line when it can."""
    careful: set[Path] = set()
    no_twin: set[Path] = set()
    # one thread: one range per file, whose blocks arrow's reader parses on its own threads
    step = range_bytes if threads > 1 else None
    while True:
        jobs = [j for path in files for j in plan(path, path in careful, step, path not in no_twin)]
        try:
            return _read_jobs(jobs, schema, min(threads, len(jobs)), joiner())
        except ReadCarefully as exc:
            careful.add(exc.path)
        except TwinUnusable as exc:
            no_twin.add(exc.path)


def _threaded(jobs: list[Job], schema: pa.Schema, threads: int, joiner: PartJoiner) -> None:
    """The jobs run by ``threads`` threads (arrow parses without holding the GIL),
    their batches' reductions joined in job order, at most two jobs per thread ahead."""

    def run(job: Job) -> list[Reduced]:
        return list(job_parts(job, schema, use_threads=False))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        todo = iter(jobs)
        ahead: deque[Future[list[Reduced]]] = deque(
            pool.submit(run, job) for job in islice(todo, 2 * threads)
        )
        try:
            while ahead:
                parts = ahead.popleft().result()
                for nxt in islice(todo, 1):
                    ahead.append(pool.submit(run, nxt))
                for part in parts:
                    joiner.add(part)
                del parts
        except BaseException:
            for f in ahead:
                f.cancel()
            raise


def _read_jobs(jobs: list[Job], schema: pa.Schema, threads: int, joiner: PartJoiner) -> Reduced:
    if threads > 1:
        _threaded(jobs, schema, threads, joiner)
    else:
        for job in jobs:
            for part in job_parts(job, schema):
                joiner.add(part)
    return joiner.finish()
