"""A record file's Parquet twin, written while the run goes: every ~16 MB of JSON lines
the record writer has written are parsed by arrow on a thread of their own and appended to
``records-<w>.parquet.partial`` as one row group; at a clean close the rest is added, the
footer written with how many JSONL bytes it covers, and the file renamed to
``records-<w>.parquet``. Analysis reads a twin instead of parsing its JSONL when the twin
is complete and covers the JSONL byte for byte (``valid_twin``); otherwise (a killed run
leaves only the ``.partial``, an edited or appended JSONL no longer matches) it parses the
JSONL, which stays the record of truth: a crash loses no more than before.

Parsing JSON is nearly all of a large run's first analysis (~5.5 s of CPU per million
records). Here it is paid during the run, off the event loop (arrow parses and Parquet
writes without holding the GIL), ~8 us of CPU a record (~2.5 % of a core at 3,000 records a
second), on a thread at the lowest CPU priority. A file under one block is converted at
close when it has ``MIN_TWIN_BYTES``; a smaller one gets no twin and no thread: it parses
in a few milliseconds."""

from __future__ import annotations

import _queue
import importlib
import io
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: JSONL bytes parsed and written as one row group (~17 k streamed records).
BLOCK_BYTES = 16 << 20
#: A file closed below this size gets no twin: parsing it costs the analysis < 25 ms.
MIN_TWIN_BYTES = 4 << 20
#: JSONL bytes waiting for the converter before the twin is given up (its memory stays
#: bounded; arrow parses ~180 MB/s, far above any network load generator's record rate).
MAX_BEHIND_BYTES = 64 << 20
TWIN_SUFFIX = ".parquet"
PARTIAL_SUFFIX = ".parquet.partial"
_META_BYTES = b"loadkit.jsonl_bytes"
_META_FORMAT = b"loadkit.twin_format"
TWIN_FORMAT = b"1"


def twin_path(jsonl: Path) -> Path:
    """``records-<w>.parquet`` beside ``records-<w>.jsonl``."""
    return jsonl.with_suffix(TWIN_SUFFIX)


def valid_twin(jsonl: Path) -> tuple[Path, int] | None:
    """The JSONL file's twin and its number of row groups, when the twin is complete (a
    footer), at least as new as the JSONL, and covers exactly the JSONL's current size;
    else None (then the JSONL is parsed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    twin = twin_path(jsonl)
    try:
        t_stat, j_stat = twin.stat(), jsonl.stat()
    except OSError:
        return None
    if t_stat.st_mtime_ns < j_stat.st_mtime_ns:
        return None
    try:
        meta = pq.read_metadata(twin)
    except (OSError, pa.ArrowException):
        return None
    kv = meta.metadata or {}
    if kv.get(_META_FORMAT) != TWIN_FORMAT or kv.get(_META_BYTES) != str(j_stat.st_size).encode():
        return None
    return twin, meta.num_row_groups


class _Chunks(io.RawIOBase):
    """A list of byte strings read as one stream (what arrow's JSON reader is given), so
    the block is never joined on the writer's thread."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__()
        self._chunks = deque(memoryview(c) for c in chunks)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        n = 0
        while n < len(out) and self._chunks:
            head = self._chunks[0]
            take = min(len(head), len(out) - n)
            out[n : n + take] = head[:take]
            n += take
            if take == len(head):
                self._chunks.popleft()
            else:
                self._chunks[0] = head[take:]
        return n


def _native(module: str, name: str) -> Any:
    """The standard library's own ``module.name``, even where gevent has patched it."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


class _Job:
    """A job handed to the converter's thread; ``wait`` blocks until it has run."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = _native("_thread", "allocate_lock")()
        self._lock.acquire()

    def finished(self) -> None:
        self._lock.release()

    def done(self) -> bool:
        return not self._lock.locked()

    def wait(self) -> None:
        self._lock.acquire()
        self._lock.release()


class _Converter:
    """One native thread running jobs in order, with native locks and queue: in a process
    gevent has patched (the Locust master's) a patched thread would be a greenlet, so the
    parsing would stall the run's other greenlets, and a cooperative wait at the end could
    be cut short by Locust's shutdown. Waiting blocks the whole process (only at close,
    when the run is over)."""

    def __init__(self) -> None:
        self._queue: Any = _queue.SimpleQueue()  # the C queue: never patched
        _native("_thread", "start_new_thread")(self._run, ())

    def submit(self, fn: Callable[[list[bytes]], None], chunks: list[bytes], size: int) -> _Job:
        job = _Job(size)
        self._queue.put((fn, chunks, job))
        return job

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        # The lowest CPU priority for this thread alone (Linux): on a core the run needs,
        # the twin takes only what the run leaves; starved, it falls behind and is given
        # up, and the analysis parses the JSONL.
        try:
            os.setpriority(os.PRIO_PROCESS, _native("_thread", "get_native_id")(), 19)
        except (OSError, AttributeError):
            pass
        while (item := self._queue.get()) is not None:
            fn, chunks, job = item
            try:
                fn(chunks)
            except Exception:  # noqa: BLE001 -- ``fn`` records its failures; the loop lives on
                pass
            finally:
                job.finished()


class ParquetTwin:
    """Fed the bytes a record writer has just written (whole lines); see the module
    docstring. ``feed`` only keeps references; parsing and writing happen on the twin's
    thread, started with the first full block."""

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
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.covered = 0  # JSONL bytes handed to the converter
        self.rows = 0  # records written to the twin (by the converter's thread)
        self.cpu_s = 0.0  # the converter thread's CPU time (what the twin cost the run)
        self.failed: str | None = None
        self._pool: _Converter | None = None
        self._jobs: deque[_Job] = deque()
        self._writer: Any = None  # pyarrow.parquet.ParquetWriter, used on the pool's thread

    def feed(self, data: bytes) -> None:
        if self.failed is not None:
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.block_bytes:
            self._submit()

    def _submit(self) -> None:
        chunks, size = self._pending, self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        while self._jobs and self._jobs[0].done():
            self._jobs.popleft()
        if sum(job.size for job in self._jobs) + size > MAX_BEHIND_BYTES:
            self.failed = f"the converter fell {MAX_BEHIND_BYTES >> 20} MB behind the run"
            return
        if self._pool is None:
            self._pool = _Converter()
        self.covered += size
        self._jobs.append(self._pool.submit(self._convert, chunks, size))

    def _convert(self, chunks: list[bytes]) -> None:
        """One block to one row group (on the pool's thread)."""
        if self.failed is not None:
            return
        import pyarrow as pa
        import pyarrow.json as pj
        import pyarrow.parquet as pq

        from loadkit.records import arrow_schema

        schema = arrow_schema()
        c0 = time.thread_time()
        try:
            table = pj.read_json(
                _Chunks(chunks),
                read_options=pj.ReadOptions(use_threads=False, block_size=4 << 20),
                parse_options=pj.ParseOptions(
                    explicit_schema=schema, unexpected_field_behavior="ignore"
                ),
            ).select(schema.names)
            if self._writer is None:
                # dictionaries for the strings only (on floats they cost 4x the time and
                # grow the file); lz4 writes and reads several times faster than snappy
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
        except Exception as exc:  # noqa: BLE001 -- any failure: no twin, the JSONL stands
            self.failed = f"{type(exc).__name__}: {exc}"
        finally:
            self.cpu_s += time.thread_time() - c0

    def close(self, jsonl_size: int) -> Path | None:
        """Convert what is left, finish the file and rename it (the twin's path), or remove
        what was written when it cannot stand for the JSONL's ``jsonl_size`` bytes (None).
        A file that never filled a block gets its twin here when it has ``min_bytes``, no
        twin below that."""
        if self._pool is None:
            if self.failed is not None or self._pending_bytes < self.min_bytes:
                self._pending = []
                return None
            self._pool = _Converter()
        try:
            if self._pending and self.failed is None:
                self.covered += self._pending_bytes
                self._jobs.append(self._pool.submit(self._convert, self._pending, 0))
                self._pending = []
            for job in self._jobs:
                job.wait()
            self._jobs.clear()
            if self.failed is None and self.covered != jsonl_size:
                self.failed = f"it covers {self.covered} of the file's {jsonl_size} bytes"
            writer, self._writer = self._writer, None
            if writer is not None:
                if self.failed is None:
                    writer.add_key_value_metadata(
                        {_META_FORMAT: TWIN_FORMAT, _META_BYTES: str(jsonl_size).encode()}
                    )
                writer.close()
            if self.failed is None:
                os.replace(self.partial, self.path)
                return self.path
        except OSError as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
        finally:
            self._pool.stop()
        self.partial.unlink(missing_ok=True)
        log.warning(
            "%s: no Parquet twin (%s); analysis parses the JSONL", self.jsonl.name, self.failed
        )
        return None
