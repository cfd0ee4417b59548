"""A run's JSONL record files read as byte ranges split at newlines, each parsed by arrow's
JSON reader and reduced (``ingest.reduce_batch``) on its own: in this process for a small
run, in worker processes for a large one (parsing JSON is nearly all of a first analysis'
reading, and one core parses ~130 MB/s). The ranges' reductions are joined in file and
range order, so the columns are the same however the files were split.

A file a killed writer left without a final newline has its last line read on its own, by
the line reader, which drops it when it is torn; a file arrow cannot read is read whole by
the line reader, which names the bad line."""

from __future__ import annotations

import io
import json
import os
import pickle
import queue
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import pyarrow as pa

from loadkit.analysis.ingest import FIELDS, Joiner, Reduced, reduce_batch, select_fields

#: A run with at least this many bytes of JSONL (~280 k records) is parsed by worker
#: processes: below it, starting them (~0.4 s each) costs about what they save.
PARALLEL_MIN_BYTES = 256 << 20
#: About how many bytes of JSONL one worker parses and reduces at a time.
RANGE_BYTES = 16 << 20
#: Bytes of JSON per arrow batch.
BLOCK_BYTES = 8 << 20
_MAX_WORKERS = 8  # beyond this the parent's joining, not the parsing, is the bottleneck


class ReadCarefully(Exception):
    """Arrow's JSON reader could not read this file: read it with the line reader."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


@dataclass(frozen=True)
class Job:
    """A piece of one record file: whole lines in bytes [start, end) for arrow
    (``LINES``), the last line of a file without a final newline (``TAIL``), or the whole
    file for the line reader (``CAREFUL``)."""

    path: Path
    start: int
    end: int
    kind: str


LINES, TAIL, CAREFUL = "lines", "tail", "careful"


def cpus() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(files: list[Path]) -> int:
    """Worker processes for reading these files: none (1) below PARALLEL_MIN_BYTES."""
    size = sum(f.stat().st_size for f in files)
    return min(cpus(), _MAX_WORKERS) if size >= PARALLEL_MIN_BYTES else 1


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


def plan(path: Path, careful: bool, range_bytes: int | None) -> list[Job]:
    """One file as jobs in order: ranges of whole lines of about ``range_bytes`` each (None:
    one range), then the unterminated last line if the file has one."""
    size = path.stat().st_size
    if size == 0:
        return []
    if careful:
        return [Job(path, 0, size, CAREFUL)]
    jobs = []
    with open(path, "rb") as fh:
        body = _body_end(fh, size)
        # equal ranges, not range_bytes and a remainder: the workers' shares stay even
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
    table = pa.Table.from_pylist(rows, schema=schema).select(list(FIELDS))
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


def job_parts(job: Job, schema: pa.Schema, use_threads: bool = True) -> Iterator[Reduced]:
    """The job's records, reduced batch by batch. Raises ReadCarefully when arrow cannot
    parse the range, ValueError (naming the file, and the line if it can) otherwise."""
    if job.kind == CAREFUL:
        batches: Iterator[pa.RecordBatch] = _careful(job.path, schema)
    elif job.kind == TAIL:
        one = _tail(job, schema)
        batches = iter([one] if one is not None else [])
    else:
        batches = _lines(job, schema, use_threads)
    for batch in batches:
        if batch.num_rows:
            yield reduce_batch(batch)


def _reduce_job(job: Job, schema: pa.Schema) -> Reduced | None:
    """The job's reduction, its string codes its own; None when arrow cannot parse it (the
    parent then reads that file with the line reader)."""
    joiner = Joiner()
    try:
        # one thread: the parallelism is the processes'
        for part in job_parts(job, schema, use_threads=False):
            joiner.add(part)
    except ReadCarefully:
        return None
    return joiner.finish()


def worker_main() -> None:
    """A worker process: reads jobs (pickled) from stdin until it closes, and answers each
    on stdout as it is done: ("ok", Reduced | None) or ("error", message)."""
    from loadkit.records import arrow_schema

    # as in ingest.read_reduced: freed batches go back to the C heap, which is trimmed
    pa.set_memory_pool(pa.system_memory_pool())
    schema = arrow_schema()
    source, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            job: Job = pickle.load(source)
        except EOFError:
            return
        try:
            result: tuple[str, object] = ("ok", _reduce_job(job, schema))
        except (ValueError, TypeError, OSError) as exc:
            result = ("error", str(exc))
        pickle.dump(result, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
        del result


class _WorkerFailed(Exception):
    """A worker process ended without answering (killed, out of memory)."""


class _Worker:
    """One worker process, given one job at a time."""

    def __init__(self, env: dict[str, str]) -> None:
        code = "from loadkit.analysis.jsonl_ranges import worker_main; worker_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )

    def run(self, job: Job) -> tuple[str, object]:
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        try:
            pickle.dump(job, stdin, protocol=pickle.HIGHEST_PROTOCOL)
            stdin.flush()
            answer: tuple[str, object] = pickle.load(stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            raise _WorkerFailed(str(exc)) from None
        return answer

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def stop(self) -> None:
        """Close its input (an idle worker then exits) and wait for it."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:  # it died with a job unread
                    pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()


def _parallel(jobs: list[Job], workers: int, joiner: Joiner) -> None:
    """The jobs run by ``workers`` processes, each taking the next job when it is free, and
    their results joined in job order; at most two jobs per worker are done ahead of the
    join, so the results waiting in memory stay a few ranges' worth. Plain subprocesses,
    not multiprocessing: nothing of the caller's ``__main__`` is imported again, and no
    process is forked with arrow's threads running."""
    import loadkit

    root = str(Path(loadkit.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
    started: list[_Worker] = []

    def run(job: Job) -> tuple[str, object]:
        worker = idle.get()
        try:
            return worker.run(job)
        finally:
            idle.put(worker)

    try:
        for _ in range(workers):
            started.append(_Worker(env))
            idle.put(started[-1])
        with ThreadPoolExecutor(max_workers=workers) as threads:
            todo = iter(jobs)
            ahead: deque[tuple[Job, Future[tuple[str, object]]]] = deque(
                (job, threads.submit(run, job)) for job in islice(todo, 2 * workers)
            )
            try:
                while ahead:
                    job, future = ahead.popleft()
                    kind, value = future.result()
                    for nxt in islice(todo, 1):
                        ahead.append((nxt, threads.submit(run, nxt)))
                    if kind == "error":
                        raise ValueError(str(value))
                    if value is None:
                        raise ReadCarefully(job.path)
                    assert isinstance(value, Reduced)
                    joiner.add(value)
                    del value
            except BaseException:
                # not waiting for the jobs under way: their results are not wanted
                for _, f in ahead:
                    f.cancel()
                for worker in started:
                    worker.kill()
                raise
    finally:
        for worker in started:
            worker.stop()


def read_files(
    files: list[Path], schema: pa.Schema, workers: int, range_bytes: int = RANGE_BYTES
) -> Reduced:
    """Every record of ``files``, in order, reduced; with ``workers`` > 1 the ranges are
    parsed by that many worker processes. A file arrow cannot parse is read again with the
    line reader (all of them from the start: rare). Raises ValueError naming the file,
    and the line when it can."""
    careful: set[Path] = set()
    # in this process, one range per file: arrow's reader parses its blocks on its threads
    step = range_bytes if workers > 1 else None
    while True:
        jobs = [j for path in files for j in plan(path, path in careful, step)]
        try:
            return _read_jobs(jobs, schema, min(workers, len(jobs)))
        except ReadCarefully as exc:
            careful.add(exc.path)


def _read_jobs(jobs: list[Job], schema: pa.Schema, workers: int) -> Reduced:
    if workers > 1:
        joiner = Joiner()
        try:
            _parallel(jobs, workers, joiner)
            return joiner.finish()
        except _WorkerFailed:
            del joiner  # read them here instead
    joiner = Joiner()
    for job in jobs:
        for part in job_parts(job, schema):
            joiner.add(part)
    return joiner.finish()
