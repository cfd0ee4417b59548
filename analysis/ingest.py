"""Records to ``Columns`` in bounded batches: each arrow record batch (a block of a JSONL
file, a row group of records.parquet, or a slice of an in-memory table) is reduced at once
to the compact numpy arrays the analysis reads, then dropped. Strings become integer codes
against one dictionary that grows in order of first appearance (the order a whole-table
``dictionary_encode`` gives), and each stream's content-chunk times become the gaps between
consecutive chunks (all that ITL needs), so neither a whole-run arrow table nor a list
column of chunk times is ever held."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
class _Dictionary:
    """One string column's codes, batch by batch, against a dictionary in order of first
    appearance."""

    names: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    parts: list[np.ndarray] = field(default_factory=list)

    def add(self, column: pa.Array | pa.ChunkedArray) -> None:
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        enc = pc.dictionary_encode(arr)
        local = [str(x) for x in enc.dictionary.to_pylist()]
        for name in local:
            if name not in self.index:
                self.index[name] = len(self.names)
                self.names.append(name)
        # the last slot maps a null (index -1) to -1
        mapping = np.array([self.index[s] for s in local] + [-1], dtype=np.int32)
        idx = np.asarray(enc.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        self.parts.append(np.asarray(mapping[idx], dtype=np.int32))

    def codes(self) -> np.ndarray:
        return _concat(self.parts, np.int32)


def _trim_heap() -> None:
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


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    """The parts joined into one array; the list is emptied and the heap trimmed, so the
    peak is every part plus one joined field, not every part plus every joined field."""
    if not parts:
        return np.zeros(0, dtype=dtype)
    # a copy even of one part: writable, and holding no arrow buffer
    out = np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
    parts.clear()
    _trim_heap()
    return out


def _numpy(col: pa.Array | pa.ChunkedArray, dtype: type) -> np.ndarray:
    """A numpy copy: a zero-copy view would keep the batch's arrow buffer alive (and the
    allocator's pages around it), so the batches' memory would add up over the run."""
    return np.array(col.to_numpy(zero_copy_only=False), dtype=dtype, copy=True)


def _floats(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return _numpy(col, np.float64)


@dataclass
class Reduced:
    """Every batch's reduction, concatenated: plain arrays by field name, string columns as
    (codes, names), the chunk gaps (ms) with how many each row has, and request ids."""

    n: int
    arrays: dict[str, np.ndarray]
    codes: dict[str, tuple[np.ndarray, tuple[str, ...]]]
    gap_ms: np.ndarray
    gap_counts: np.ndarray
    request_id: pa.ChunkedArray
    schemas: set[str]


def _gaps(lists: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Gaps (ms) between consecutive chunk times of each row of a list column, in row
    order, and how many each row has."""
    lengths = np.asarray(pc.list_value_length(lists).fill_null(0).to_numpy(), dtype=np.int64)
    counts = np.maximum(lengths - 1, 0).astype(np.int32)
    values = np.asarray(pc.list_flatten(lists).to_numpy(zero_copy_only=False), dtype=np.float64)
    if values.size < 2:
        return np.zeros(0), counts
    owner = np.repeat(np.arange(lengths.size, dtype=np.int32), lengths)
    same = owner[1:] == owner[:-1]
    return np.diff(values)[same] * 1000.0, counts


def reduce_batches(batches: Iterable[pa.RecordBatch | pa.Table]) -> Reduced:
    """Reduce record batches (arrow, with the fields in FIELDS) in order, each once."""
    floats: dict[str, list[np.ndarray]] = {f: [] for f in FLOAT_FIELDS}
    dicts = {f: _Dictionary() for f in CODE_FIELDS}
    status: list[np.ndarray] = []
    stream: list[np.ndarray] = []
    chunks_n: list[np.ndarray] = []
    attempt: list[np.ndarray] = []
    length: list[np.ndarray] = []
    gaps: list[np.ndarray] = []
    gap_count_parts: list[np.ndarray] = []
    ids: list[pa.Array] = []
    n = 0
    for batch in batches:
        rows = batch.num_rows
        if rows == 0:
            continue
        for f in FLOAT_FIELDS:
            floats[f].append(_floats(batch.column(f)))
        for f in CODE_FIELDS:
            dicts[f].add(batch.column(f))
        status.append(_numpy(batch.column("status").fill_null(0), np.int64))
        stream.append(_numpy(batch.column("stream").fill_null(False), np.bool_))
        chunks_n.append(_numpy(batch.column("content_chunks").fill_null(0), np.int64))
        attempt.append(_numpy(batch.column("attempt").fill_null(1), np.int64))
        finish = pc.equal(batch.column("finish_reason"), "length").fill_null(False)
        length.append(_numpy(finish, np.bool_))
        lists = batch.column("chunk_s")
        if isinstance(lists, pa.ChunkedArray):
            lists = lists.combine_chunks()
        g, r = _gaps(lists)
        gaps.append(g)
        gap_count_parts.append(r)
        rid = batch.column("request_id")
        ids.extend(rid.chunks if isinstance(rid, pa.ChunkedArray) else [rid])
        n += rows
    # one field at a time, its batch parts freed as it is joined: the peak is the columns
    # plus one field, not the columns twice
    arrays = {f: _concat(floats.pop(f), np.float64) for f in FLOAT_FIELDS}
    for name, parts_, dtype in (
        ("status", status, np.int64),
        ("stream", stream, np.bool_),
        ("content_chunks", chunks_n, np.int64),
        ("attempt", attempt, np.int64),
        ("finish_length", length, np.bool_),
    ):
        arrays[name] = _concat(parts_, dtype)
    codes = {f: (dicts[f].codes(), tuple(dicts.pop(f).names)) for f in CODE_FIELDS}
    gap_ms = _concat(gaps, np.float64)
    gap_counts = _concat(gap_count_parts, np.int32)
    schemas = set(codes["schema"][1])
    return Reduced(
        n=n,
        arrays=arrays,
        codes=codes,
        gap_ms=gap_ms,
        gap_counts=gap_counts,
        request_id=pa.chunked_array(ids, type=pa.string()),
        schemas=schemas,
    )


def table_batches(table: pa.Table, rows: int = 65536) -> Iterator[pa.RecordBatch]:
    """An in-memory table's rows in slices (each reduced, then dropped)."""
    yield from table.to_batches(max_chunksize=rows)


def _select(schema: pa.Schema) -> pa.Schema:
    return pa.schema([schema.field(f) for f in FIELDS])


class _ReadCarefully(Exception):
    """Arrow's JSON reader could not read this file: read it with the line reader."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.path = path


def _torn(path: Path) -> bool:
    """The file does not end with a newline: its last line may be torn."""
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


def _careful(path: Path, schema: pa.Schema) -> list[pa.RecordBatch]:
    from loadkit.records import iter_records_file

    recs = [asdict(r) for r in iter_records_file(path)]
    table: pa.Table = pa.Table.from_pylist(recs, schema=schema).select(list(FIELDS))
    batches: list[pa.RecordBatch] = table.to_batches()
    return batches


def file_batches(
    path: Path, schema: pa.Schema, careful: bool, block_size: int = 8 << 20
) -> Iterator[pa.RecordBatch]:
    """One JSONL file's records as arrow batches of about ``block_size`` bytes of JSON each,
    only the fields in FIELDS parsed. ``careful`` (or a file whose last line may be torn by
    a killed writer) reads it with the line reader instead, which skips a torn last line."""
    import pyarrow.json as pj

    if path.stat().st_size == 0:
        return
    if careful or _torn(path):
        yield from _careful(path, schema)
        return
    opts = pj.ParseOptions(explicit_schema=_select(schema), unexpected_field_behavior="ignore")
    try:
        reader = pj.open_json(
            path, read_options=pj.ReadOptions(block_size=block_size), parse_options=opts
        )
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            yield batch
    except pa.ArrowInvalid:
        raise _ReadCarefully(path) from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None


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
        target = _select(schema)
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


def read_reduced(run_dir: str | os.PathLike[str]) -> Reduced:
    """Every record of a run, reduced batch by batch: records.parquet when it is current
    (``loadkit.records.parquet_file``), else the JSONL files in order. Raises ValueError
    (naming the file) for unreadable or foreign records, as ``loadkit.records.read_table``."""
    from loadkit.records import (
        _READABLE,
        READABLE_SCHEMAS,
    )

    # Arrow's own allocator keeps what the batches freed; the C heap's is trimmed, so the
    # reading costs about one batch, not all of them (1 M records: 0.67 GB peak, not 0.79).
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        reduced = _read_reduced(run_dir)
    finally:
        pa.set_memory_pool(previous)
    bad = reduced.schemas - set(READABLE_SCHEMAS)
    if bad:
        raise ValueError(
            f"{run_dir}: unsupported record schema {', '.join(sorted(bad))} "
            f"(this loadkit reads {_READABLE})"
        )
    return reduced


def _read_reduced(run_dir: str | os.PathLike[str]) -> Reduced:
    from loadkit.records import arrow_schema, parquet_file, record_files

    schema = arrow_schema()
    parquet = parquet_file(run_dir)
    careful: set[Path] = set()
    while True:
        if parquet is not None:
            batches: Iterable[pa.RecordBatch] = parquet_batches(parquet, schema)
        else:
            batches = (
                b
                for path in record_files(run_dir)
                for b in file_batches(path, schema, path in careful)
            )
        try:
            reduced = reduce_batches(batches)
            break
        except _ReadCarefully as exc:  # rare: start again, reading that file line by line
            careful.add(exc.path)
    return reduced
