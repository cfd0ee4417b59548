"""Records to ``Columns`` in bounded batches: each arrow record batch (a block of a JSONL
file, a row group of records.parquet, or a slice of an in-memory table) is reduced at once
to the compact numpy arrays the analysis reads, then dropped. Strings become integer codes
against one dictionary that grows in order of first appearance (the order a whole-table
``dictionary_encode`` gives), and each stream's content-chunk times become the gaps between
consecutive chunks (all that ITL needs), so neither a whole-run arrow table nor a list
column of chunk times is ever held. The reductions are joined in memory (``Joiner``), or,
for a run large enough to keep its columns, straight into the column cache's files
(``column_cache.SpillJoiner``), so that not even the joined columns are held."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Columns read from every record (all others in a record file are skipped while parsing).
FLOAT_FIELDS = (
    "send_s",
    "conn_s",
    "headers_s",
    "first_token_s",
    "end_s",
    "scheduled_s",
    "queued_s",
    "completion_tokens",
    "rl_limit_requests",
    "rl_remaining_requests",
    "retry_after_s",
    "prompt_tokens",
    "sent_prompt_tokens",
    "sent_max_tokens",
    "rl_limit_tokens",
    "rl_remaining_tokens",
    "rl_reset_tokens_s",
)
CODE_FIELDS = (
    "tier",
    "key",
    "endpoint",
    "error_code",
    "transport_error",
    "content_type",
    "limit_signal",
    "worker",
    "limit_kind",
    "schema",
    "model",
)
OTHER_FIELDS = (
    "status",
    "stream",
    "content_chunks",
    "attempt",
    "finish_reason",
    "request_id",
    "chunk_s",
)
FIELDS = FLOAT_FIELDS + CODE_FIELDS + OTHER_FIELDS


@dataclass
class CodeDictionary:
    """One string column's dictionary in order of first appearance, grown part by part:
    each part's own codes (into its own names) are re-mapped onto it as the part comes."""

    names: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def map(self, codes: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
        """A part's codes as codes into this dictionary (its new names added)."""
        for name in names:
            if name not in self.index:
                self.index[name] = len(self.names)
                self.names.append(name)
        # the last slot maps a null (code -1) to -1
        mapping = np.array([self.index[s] for s in names] + [-1], dtype=np.int32)
        return np.asarray(mapping[codes], dtype=np.int32)


@dataclass
class _Dictionary(CodeDictionary):
    """A CodeDictionary that keeps the parts' re-mapped codes, to join them at the end."""

    parts: list[np.ndarray] = field(default_factory=list)

    def add(self, codes: np.ndarray, names: tuple[str, ...]) -> None:
        self.parts.append(self.map(codes, names))

    def codes(self) -> np.ndarray:
        return _concat(self.parts, np.int32)


def _encode(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, tuple[str, ...]]:
    """A string column as codes (-1: null) into its distinct values in order of first
    appearance."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    enc = pc.dictionary_encode(arr)
    names = tuple(str(x) for x in enc.dictionary.to_pylist())
    return _numpy(enc.indices, np.int32, -1), names


def trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc; elsewhere nothing): the
    batches' small arrays, once joined and freed, would otherwise stay resident beside the
    joined columns."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def limit_arenas(arenas: int = 2) -> None:
    """Let the C heap keep at most ``arenas`` arenas (glibc; elsewhere nothing): by default
    each thread that allocates while another does gets an arena of its own (up to eight a
    core), and what a reading thread freed stays in its arena, out of ``trim_heap``'s
    reach -- ~150 MB of a 10 M-record analysis, for no speed it measurably bought. Once
    per process, before the reading threads start; arenas already made stay."""
    global _arenas_limited
    if _arenas_limited:
        return
    _arenas_limited = True
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_ARENA_MAX, arenas)


_arenas_limited = False
_M_ARENA_MAX = -8  # glibc's malloc.h
TRIM_EVERY = 64 << 20  # bytes of parts freed between heap trims while joining


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    """The parts joined into one array (always a copy: writable, holding no arrow buffer).
    Each part is freed as soon as it is copied and the heap trimmed as it goes, so joining
    a field costs about nothing beyond the parts: the joined array takes their place."""
    if not parts:
        return np.zeros(0, dtype=dtype)
    end = sum(p.size for p in parts)
    out: np.ndarray = np.empty(end, dtype=dtype)
    freed = 0
    while parts:
        part = parts.pop()
        out[end - part.size : end] = part
        end -= part.size
        freed += part.nbytes
        del part
        if freed >= TRIM_EVERY:
            trim_heap()
            freed = 0
    trim_heap()
    return out


_NUMPY_OF = {
    "double": np.float64,
    "float": np.float32,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint64": np.uint64,
    "uint32": np.uint32,
    "uint16": np.uint16,
    "uint8": np.uint8,
}


def _bits(buf: pa.Buffer, offset: int, n: int) -> np.ndarray:
    raw = np.frombuffer(buf, dtype=np.uint8)
    return np.unpackbits(raw, count=offset + n, bitorder="little")[offset:].astype(np.bool_)


def _numpy(col: pa.Array | pa.ChunkedArray, dtype: type, null: Any = np.nan) -> np.ndarray:
    """A numeric or boolean column as a fresh numpy array of ``dtype``, nulls as ``null``.
    Read from the arrow buffers: ``to_numpy`` (and any Python scalar given to arrow)
    imports pandas, 0.15 s of a first analysis. A copy: a zero-copy view would keep the
    batch's arrow buffer alive (and the allocator's pages around it), so the batches'
    memory would add up over the run."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n, offset = len(arr), arr.offset
    kind = str(arr.type)
    buffers = arr.buffers()
    data = buffers[1] if len(buffers) > 1 else None
    if kind == "null" or data is None:
        return np.full(n, null, dtype=dtype)
    if kind == "bool":
        values = _bits(data, offset, n)
    elif kind in _NUMPY_OF:
        values = np.frombuffer(data, dtype=_NUMPY_OF[kind])[offset : offset + n]
    else:
        raise TypeError(f"a record column of type {kind} where a number was expected")
    out: np.ndarray = np.array(values, dtype=dtype, copy=True)
    if arr.null_count and buffers[0] is not None:
        out[~_bits(buffers[0], offset, n)] = null
    return out


def _floats(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return _numpy(col, np.float64)


# The plain arrays of a reduction, in order, with their types.
ARRAY_TYPES: dict[str, type] = {
    **{f: np.float64 for f in FLOAT_FIELDS},
    "status": np.int64,
    "stream": np.bool_,
    "content_chunks": np.int64,
    "attempt": np.int64,
    "finish_length": np.bool_,
}


@dataclass
class Reduced:
    """Records reduced to plain arrays by field name, string columns as (codes, names), the
    chunk gaps (ms) with how many each row has, and request ids: one batch's, one byte
    range's, or a whole run's (every part joined in order)."""

    n: int
    arrays: dict[str, np.ndarray]
    codes: dict[str, tuple[np.ndarray, tuple[str, ...]]]
    gap_ms: np.ndarray
    gap_counts: np.ndarray
    request_id: pa.ChunkedArray

    @property
    def schemas(self) -> set[str]:
        """The record schemas the records name."""
        return set(self.codes["schema"][1])


def _gaps(lists: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Gaps (ms) between consecutive chunk times of each row of a list column, in row
    order, and how many each row has."""
    lengths = _numpy(pc.list_value_length(lists), np.int64, 0)
    counts = np.maximum(lengths - 1, 0).astype(np.int32)
    values = _numpy(pc.list_flatten(lists), np.float64)
    if values.size < 2:
        return np.zeros(0), counts
    # the differences that straddle two rows: from each non-empty row's last value to the
    # next non-empty row's first
    ends = np.cumsum(lengths)[lengths > 0]
    keep = np.ones(values.size - 1, dtype=np.bool_)
    keep[ends[:-1] - 1] = False
    return np.diff(values)[keep] * 1000.0, counts


def reduce_batch(batch: pa.RecordBatch | pa.Table) -> Reduced:
    """One arrow batch (with the fields in FIELDS) reduced, its string codes its own."""
    arrays = {f: _floats(batch.column(f)) for f in FLOAT_FIELDS}
    arrays["status"] = _numpy(batch.column("status"), np.int64, 0)
    arrays["stream"] = _numpy(batch.column("stream"), np.bool_, False)
    arrays["content_chunks"] = _numpy(batch.column("content_chunks"), np.int64, 0)
    arrays["attempt"] = _numpy(batch.column("attempt"), np.int64, 1)
    finish, finish_names = _encode(batch.column("finish_reason"))
    arrays["finish_length"] = (
        finish == finish_names.index("length") if "length" in finish_names else finish < -1
    )
    codes = {f: _encode(batch.column(f)) for f in CODE_FIELDS}
    lists = batch.column("chunk_s")
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    gap_ms, gap_counts = _gaps(lists)
    rid = batch.column("request_id")
    ids = rid.chunks if isinstance(rid, pa.ChunkedArray) else [rid]
    return Reduced(
        n=batch.num_rows,
        arrays=arrays,
        codes=codes,
        gap_ms=gap_ms,
        gap_counts=gap_counts,
        request_id=pa.chunked_array(ids, type=pa.string()),
    )


class PartJoiner(Protocol):
    """Joins the reductions of a run's consecutive parts, in order, into one (``Joiner``
    in memory; ``column_cache.SpillJoiner`` into the column cache's files)."""

    n: int

    def add(self, part: Reduced) -> None: ...

    def finish(self) -> Reduced: ...


class Joiner:
    """Reductions of consecutive parts of a run joined in order into one: string codes
    re-mapped onto one dictionary in order of first appearance (the order a whole-table
    ``dictionary_encode`` gives), so how the records were split never shows."""

    def __init__(self) -> None:
        self.n = 0
        self._arrays: dict[str, list[np.ndarray]] = {name: [] for name in ARRAY_TYPES}
        self._dicts = {f: _Dictionary() for f in CODE_FIELDS}
        self._gaps: list[np.ndarray] = []
        self._gap_counts: list[np.ndarray] = []
        self._ids: list[pa.Array] = []

    def add(self, part: Reduced) -> None:
        if part.n == 0:
            return
        for name, parts in self._arrays.items():
            parts.append(part.arrays[name])
        for f, d in self._dicts.items():
            d.add(*part.codes[f])
        self._gaps.append(part.gap_ms)
        self._gap_counts.append(part.gap_counts)
        self._ids.extend(part.request_id.chunks)
        self.n += part.n

    def finish(self) -> Reduced:
        """The joined reduction; each field's parts are freed as it is joined, so the peak
        is the parts plus a trim interval, not the columns twice."""
        arrays = {name: _concat(self._arrays[name], t) for name, t in ARRAY_TYPES.items()}
        codes = {f: (d.codes(), tuple(d.names)) for f, d in self._dicts.items()}
        gap_ms = _concat(self._gaps, np.float64)
        gap_counts = _concat(self._gap_counts, np.int32)
        ids = pa.chunked_array(self._ids, type=pa.string())
        self._ids = []
        return Reduced(
            n=self.n,
            arrays=arrays,
            codes=codes,
            gap_ms=gap_ms,
            gap_counts=gap_counts,
            request_id=ids,
        )


def reduce_batches(
    batches: Iterable[pa.RecordBatch | pa.Table], joiner: PartJoiner | None = None
) -> Reduced:
    """Reduce record batches (arrow, with the fields in FIELDS) in order, each once, joined
    by ``joiner`` (default: in memory)."""
    if joiner is None:
        joiner = Joiner()
    for batch in batches:
        if batch.num_rows:
            joiner.add(reduce_batch(batch))
    return joiner.finish()


def table_batches(table: pa.Table, rows: int = 65536) -> Iterator[pa.RecordBatch]:
    """An in-memory table's rows in slices (each reduced, then dropped)."""
    yield from table.to_batches(max_chunksize=rows)


def select_fields(schema: pa.Schema) -> pa.Schema:
    """The record schema's fields that the analysis reads (FIELDS)."""
    return pa.schema([schema.field(f) for f in FIELDS])


def parquet_batches(path: Path, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """records.parquet row group by row group (fields an older file lacks are null)."""
    import pyarrow.parquet as pq

    from loadkit.records import OPTIONAL_FIELDS, V2_FIELDS

    try:
        pf = pq.ParquetFile(path)
        have = set(pf.schema_arrow.names)
        missing = [f.name for f in schema if f.name not in have]
        if [m for m in missing if m not in V2_FIELDS and m not in OPTIONAL_FIELDS]:
            raise ValueError(f"{path}: missing record fields {', '.join(missing)}")
        target = select_fields(schema)
        for batch in pf.iter_batches(columns=[f for f in FIELDS if f in have]):
            cols = []
            for f in target:
                if f.name in have:
                    cols.append(batch.column(f.name).cast(f.type))
                else:
                    cols.append(pa.nulls(batch.num_rows, f.type))
            yield pa.RecordBatch.from_arrays(cols, schema=target)
    except (OSError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None


def read_reduced(
    run_dir: str | os.PathLike[str],
    threads: int | None = None,
    joiner: Callable[[], PartJoiner] = Joiner,
) -> Reduced:
    """Every record of a run, reduced part by part: records.parquet when it is current
    (``loadkit.records.parquet_file``), else the JSONL files in order, their ranges parsed
    by ``threads`` threads (default: one per core, ``jsonl_ranges.default_threads``), the
    parts joined by a joiner from ``joiner`` (a fresh one each time the reading starts
    over). Raises ValueError (naming the file) for unreadable or foreign records, as
    ``loadkit.records.read_table``."""
    from loadkit.records import (
        _READABLE,
        READABLE_SCHEMAS,
    )

    limit_arenas()
    # Arrow's own allocator keeps what the batches freed; the C heap's is trimmed, so the
    # reading costs about one batch, not all of them (1 M records: 0.67 GB peak, not 0.79).
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        reduced = _read_reduced(run_dir, threads, joiner)
    finally:
        pa.set_memory_pool(previous)
        # what arrow's readers took from its own allocator regardless (~40 MB at 1 M)
        previous.release_unused()
    bad = reduced.schemas - set(READABLE_SCHEMAS)
    if bad:
        raise ValueError(
            f"{run_dir}: unsupported record schema {', '.join(sorted(bad))} "
            f"(this loadkit reads {_READABLE})"
        )
    return reduced


def _read_reduced(
    run_dir: str | os.PathLike[str], threads: int | None, joiner: Callable[[], PartJoiner]
) -> Reduced:
    from loadkit.analysis import jsonl_ranges
    from loadkit.records import arrow_schema, parquet_file, record_files

    schema = arrow_schema()
    parquet = parquet_file(run_dir)
    if parquet is not None:
        return reduce_batches(parquet_batches(parquet, schema), joiner())
    files = record_files(run_dir)
    if threads is None:
        threads = jsonl_ranges.default_threads()
    return jsonl_ranges.read_files(files, schema, threads, joiner=joiner)
