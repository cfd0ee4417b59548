"""A record file's Parquet twin, written while the run goes: a thread of its own reads
back, about every 16 MB, the lines the record writer has written and flushed (from the
page cache: nothing is held in memory), parses them with arrow and appends them to
``records-<w>.parquet.partial`` as one row group; at a clean close it converts the rest,
writes in the footer the JSONL's size and checksums of samples of its bytes, and renames
the file ``records-<w>.parquet``. Analysis reads a twin instead of parsing its JSONL only
when the twin is complete and its footer matches the JSONL as it is now (``valid_twin``);
otherwise (a killed run leaves only the ``.partial``; records appended, or the JSONL edited
or replaced) it parses the JSONL, which stays the record of truth: a crash loses no more
than before.

Parsing JSON is nearly all of a large run's first analysis (~5.5 s of CPU per million
records). Here it is paid during the run, off the event loop (arrow parses and Parquet
writes without holding the GIL), ~7-8 us of CPU a record (~2.5 % of a core at 3,000 records
a second); a converter starved of CPU only falls behind, and converts what is left at
close. A file under one block is converted at close when it has ``MIN_TWIN_BYTES``; a
smaller one gets no twin and no thread: it parses in a few milliseconds."""

from __future__ import annotations

import _queue
import atexit
import importlib
import json
import logging
import os
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: JSONL bytes parsed and written as one row group (~17 k streamed records).
BLOCK_BYTES = 16 << 20
#: A file closed below this size gets no twin: parsing it costs the analysis < 25 ms.
MIN_TWIN_BYTES = 4 << 20
TWIN_SUFFIX = ".parquet"
PARTIAL_SUFFIX = ".parquet.partial"
_META = b"loadkit.twin"
TWIN_FORMAT = 2
#: Byte ranges of the JSONL whose checksums the footer keeps, and their size.
SAMPLES, SAMPLE_BYTES = 16, 1 << 16
#: At exit, how long a converter in the middle of a block is waited for.
EXIT_WAIT_S = 10.0


def twin_path(jsonl: Path) -> Path:
    """``records-<w>.parquet`` beside ``records-<w>.jsonl``."""
    return jsonl.with_suffix(TWIN_SUFFIX)


def prepare() -> Any:
    """Import what the converter needs, on the caller's thread, before a run starts: the
    first import of pyarrow holds the GIL for ~0.1 s (a stall of the run if it happened on
    the converter's thread mid-run) and, under gevent, must not race the main greenlet's
    imports. Returns the record schema the twins are written with."""
    import pyarrow.json  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from loadkit.records import arrow_schema

    return arrow_schema()


def _fingerprint(fh: Any, size: int) -> list[int]:
    """CRC-32 of SAMPLES ranges of SAMPLE_BYTES spread over the file's ``size`` bytes
    (the first and the last included): what ties a twin to the bytes it was made from,
    beyond their count, for ~1 MB of reading."""
    if size <= SAMPLES * SAMPLE_BYTES:
        starts = [0]
        length = size
    else:
        step = (size - SAMPLE_BYTES) / (SAMPLES - 1)
        starts = [round(i * step) for i in range(SAMPLES)]
        length = SAMPLE_BYTES
    out = []
    for start in starts:
        fh.seek(start)
        out.append(zlib.crc32(fh.read(length)))
    return out


def valid_twin(jsonl: Path) -> tuple[Path, int] | None:
    """The JSONL file's twin and its number of row groups, when the twin is complete (a
    footer) and its footer matches the JSONL as it is now: the same size, the same
    checksums of sampled ranges; else None (then the JSONL is parsed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    twin = twin_path(jsonl)
    try:
        meta = pq.read_metadata(twin)
        tied = json.loads((meta.metadata or {}).get(_META, b"null"))
        if not isinstance(tied, dict) or tied.get("format") != TWIN_FORMAT:
            return None
        with open(jsonl, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if tied.get("bytes") != size or tied.get("samples") != _fingerprint(fh, size):
                return None
    except (OSError, ValueError, pa.ArrowException):
        return None
    return twin, meta.num_row_groups


def _native(module: str, name: str) -> Any:
    """The standard library's own ``module.name``, even where gevent has patched it."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


class _Job:
    """A job handed to the converter's thread; ``wait`` blocks until it has run."""

    def __init__(self) -> None:
        self._lock = _native("_thread", "allocate_lock")()
        self._lock.acquire()

    def finished(self) -> None:
        self._lock.release()

    def done(self) -> bool:
        return not self._lock.locked()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the job has run (False: ``timeout`` seconds passed first). Waits in
        short slices: a signal delivered to another thread still reaches this one's
        handler within one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left < 0:
                return False
            if self._lock.acquire(True, left):
                self._lock.release()
                return True


class _Converter:
    """One native thread running jobs in order, with native locks and queue: in a process
    gevent has patched (the Locust master's) a patched thread would be a greenlet, so the
    parsing would stall the run's other greenlets, and a cooperative wait at the end could
    be cut short by Locust's shutdown. Waiting blocks the whole process (only at close,
    when the run is over). Raises RuntimeError when no thread can be started."""

    def __init__(self) -> None:
        self._queue: Any = _queue.SimpleQueue()  # the C queue: never patched
        _native("_thread", "start_new_thread")(self._run, ())

    def submit(self, fn: Callable[[int], None], arg: int) -> _Job:
        job = _Job()
        self._queue.put((fn, arg, job))
        return job

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, arg, job = item
            try:
                fn(arg)  # records its own failures
            finally:
                job.finished()


class ParquetTwin:
    """Told how many bytes of whole lines its record writer has written and flushed
    (``feed``); see the module docstring. The converter reads those bytes back from the
    JSONL file itself (from the page cache), so nothing is held in memory, and a converter
    that falls behind (starved by the run on a saturated core) only has more to read: it
    catches up when it gets the CPU, at the latest at ``close``."""

    def __init__(
        self, jsonl: Path, block_bytes: int = BLOCK_BYTES, min_bytes: int = MIN_TWIN_BYTES
    ) -> None:
        if block_bytes <= 0:
            raise ValueError(f"block_bytes: expected > 0, got {block_bytes!r}")
        self.jsonl = jsonl
        self.path = twin_path(jsonl)
        self.partial = jsonl.with_suffix(PARTIAL_SUFFIX)
        self.block_bytes = block_bytes
        self.min_bytes = min_bytes
        self.written = 0  # bytes of whole lines the writer has written and flushed
        self.covered = 0  # JSONL bytes in the twin (set by the converter's thread)
        self.rows = 0  # records in the twin
        self.cpu_s = 0.0  # the converter thread's CPU time (what the twin cost the run)
        self.failed: str | None = None
        self.cancelled = False  # stop between blocks (a second signal, the process exiting)
        self._pool: _Converter | None = None
        self._job: _Job | None = None
        self._writer: Any = None  # pyarrow.parquet.ParquetWriter, used on the pool's thread
        # the file is new: any twin beside it is another file's
        self.path.unlink(missing_ok=True)
        self.partial.unlink(missing_ok=True)
        self._schema = prepare()

    def feed(self, nbytes: int) -> None:
        """The writer has written and flushed ``nbytes`` more bytes of whole lines."""
        self.written += nbytes
        if self.failed is not None or (self._job is not None and not self._job.done()):
            return  # a converter at work reads on to what was written when it next starts
        if self.written - self.covered >= self.block_bytes:
            self._job = self._submit(self.written)

    def _submit(self, end: int) -> _Job | None:
        if self._pool is None:
            try:
                self._pool = _Converter()
            except RuntimeError as exc:  # no thread to be had (a process or thread limit)
                self.failed = f"no thread for the converter ({exc})"
                return None
            atexit.register(self._at_exit)
        return self._pool.submit(self._convert_to, end)

    def _at_exit(self) -> None:
        """The interpreter must not finish while the converter is inside arrow."""
        self.cancelled = True
        if self._job is not None:
            self._job.wait(EXIT_WAIT_S)

    def _convert_to(self, end: int) -> None:
        """JSONL bytes [covered, end) to row groups of about one block each (on the
        converter's thread); a failure is recorded in ``failed``."""
        c0 = time.thread_time()
        try:
            with open(self.jsonl, "rb") as fh:
                fh.seek(self.covered)
                while self.failed is None and not self.cancelled and self.covered < end:
                    data = fh.read(min(self.block_bytes, end - self.covered))
                    size = len(data)
                    if self.covered + size < end:
                        cut = data.rfind(b"\n") + 1
                        if cut == 0:  # a line longer than a block: read on to its end
                            data += fh.readline()
                            size = len(data)
                        else:
                            fh.seek(self.covered + cut)
                            size = cut
                    if size == 0:
                        raise OSError(f"the file ends at {self.covered} of {end} bytes")
                    self._append(data, size)
                    self.covered += size
        except BaseException as exc:  # noqa: BLE001 -- any failure: no twin, the JSONL stands
            self.failed = f"{type(exc).__name__}: {exc}"
        finally:
            self.cpu_s += time.thread_time() - c0
        if self.cancelled and self.failed is None:
            self.failed = "stopped before it was complete"

    def _append(self, data: bytes, size: int) -> None:
        """Whole JSON lines (``data[:size]``) parsed and appended as one row group; a block
        whose record count is not its line count fails the twin."""
        import pyarrow as pa
        import pyarrow.json as pj
        import pyarrow.parquet as pq

        schema = self._schema
        table = pj.read_json(
            pa.BufferReader(pa.py_buffer(data).slice(0, size)),
            read_options=pj.ReadOptions(use_threads=False, block_size=4 << 20),
            parse_options=pj.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        ).select(schema.names)
        lines = data.count(b"\n", 0, size)
        if table.num_rows != lines:
            raise ValueError(f"{table.num_rows} records from {lines} lines")
        if self._writer is None:
            # dictionaries for the strings only (on floats they cost 4x the time and grow
            # the file); lz4 writes and reads several times faster than snappy
            strings = [f.name for f in schema if pa.types.is_string(f.type)]
            self._writer = pq.ParquetWriter(
                self.partial,
                schema,
                compression="lz4",
                use_dictionary=strings,
                write_page_checksum=True,  # a damaged page is an error, not a value
            )
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        self.rows += table.num_rows

    def close(self, jsonl_size: int) -> Path | None:
        """Convert what is left, finish the file and rename it (the twin's path), or remove
        what was written when it cannot stand for the JSONL's ``jsonl_size`` bytes (None).
        A file that never filled a block gets its twin here when it has ``min_bytes``, no
        twin below that. Blocks until the converter is done (the run is over); a signal
        meanwhile stops it between blocks, leaves no twin, and is raised again."""
        if self._pool is None and self.failed is None and jsonl_size < max(1, self.min_bytes):
            return None
        interrupted: BaseException | None = None
        try:
            if self.failed is None and jsonl_size != self.written:
                self.failed = f"the file has {jsonl_size} bytes, its writer wrote {self.written}"
            if self._job is not None:
                self._job.wait()
            if self.failed is None and self.covered < jsonl_size:
                self._job = self._submit(jsonl_size)
                if self._job is not None:
                    self._job.wait()
            writer, self._writer = self._writer, None
            if writer is not None:
                if self.failed is None:
                    with open(self.jsonl, "rb") as fh:
                        tied = {
                            "format": TWIN_FORMAT,
                            "bytes": jsonl_size,
                            "samples": _fingerprint(fh, jsonl_size),
                        }
                    writer.add_key_value_metadata({_META: json.dumps(tied).encode()})
                writer.close()
            if self.failed is None:
                os.replace(self.partial, self.path)
                return self.path
        except OSError as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
        except BaseException as exc:  # a signal while waiting: stop the converter first
            interrupted = exc
            self.cancelled = True
            self.failed = "the run was stopped while it was being completed"
            if self._job is not None:
                self._job.wait(EXIT_WAIT_S)
        finally:
            if self._pool is not None:
                self._pool.stop()
                atexit.unregister(self._at_exit)
        self.partial.unlink(missing_ok=True)
        log.warning(
            "%s: no Parquet twin (%s); analysis parses the JSONL", self.jsonl.name, self.failed
        )
        if interrupted is not None:
            raise interrupted
        return None
