"""A run's request records as flat numpy columns (the shape every analysis module reads),
loaded straight from the JSONL files with pyarrow so a million records never become a
million Python objects."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from loadkit import records as _records
from loadkit.analysis import column_cache
from loadkit.analysis.ingest import Reduced, read_reduced, reduce_batches, table_batches
from loadkit.analysis.outcome import Refused
from loadkit.analysis.token_columns import TokenColumns
from loadkit.outcomes import Outcome, classify
from loadkit.records import RequestRecord
from loadkit.runmeta import RunMeta, read_run_meta

INFERENCE_ENDPOINTS = ("chat", "completions")  # the authenticated, rate-limited endpoints
#: ``Columns.outcome`` holds each row's outcome as its index in this tuple.
OUTCOMES: tuple[Outcome, ...] = tuple(Outcome)
V1_RECORD_SCHEMA = "loadkit.record/1"
# Version-1 records have no limit_kind: loadkit's own codes say which limit refused.
_V1_CODES = {
    "rate_limit_exceeded": Refused.REQUESTS,
    "concurrency_limit_exceeded": Refused.CONCURRENCY,
}
_KINDS = {
    "requests": Refused.REQUESTS,
    "concurrency": Refused.CONCURRENCY,
    "tokens": Refused.TOKENS,
    "requests_per_day": Refused.DAILY,
    "model_requests": Refused.MODEL_REQUESTS,
    "model_concurrency": Refused.MODEL_CONCURRENCY,
}
# loadkit.records does not annotate it; the alias gives the call a type.
_arrow_schema: Callable[[], pa.Schema] = _records.arrow_schema


class UnusableInput(Exception):
    """The run directory cannot be analysed (missing run.json, no records, unreadable file)."""


@dataclass(frozen=True)
class Codes:
    """A string column as integer codes into ``names`` (-1 = null)."""

    codes: np.ndarray
    names: tuple[str, ...]

    def code_of(self, name: str) -> int:
        return self.names.index(name) if name in self.names else -2

    def isin(self, names: tuple[str, ...] | list[str]) -> np.ndarray:
        wanted = [self.code_of(n) for n in names]
        return np.isin(self.codes, wanted)

    def label(self, code: int) -> str | None:
        return None if code < 0 else self.names[code]


@dataclass(frozen=True)
class Columns:
    """One row per request record. Times are float seconds from run start, NaN when absent;
    nullable integers are float with NaN. The content chunk times are kept only as what ITL
    needs: the gaps between consecutive chunks of each row (``gap_ms``, ``gap_counts``)."""

    n: int
    send: np.ndarray
    headers: np.ndarray
    first_token: np.ndarray
    end: np.ndarray
    scheduled: np.ndarray
    queued: np.ndarray
    status: np.ndarray
    stream: np.ndarray
    completion_tokens: np.ndarray
    content_chunks: np.ndarray
    rl_limit: np.ndarray
    rl_remaining: np.ndarray
    retry_after: np.ndarray
    tier: Codes
    key: Codes
    endpoint: Codes
    error_code: Codes
    transport_error: Codes
    gap_ms: np.ndarray  # every gap between consecutive content chunks of a row (ms) ...
    gap_counts: np.ndarray  # ... of which row i has gap_counts[i] (int32), in row order
    request_id: pa.ChunkedArray
    content_type: Codes
    limit_signal: Codes
    worker: Codes
    attempt: np.ndarray
    outcome: np.ndarray  # index into OUTCOMES (loadkit.outcomes.classify of each row)
    refused: np.ndarray  # a Refused value: which limit refused a 429 (0: not a 429)
    conn: np.ndarray  # conn_s: the connection was ready (NaN: not measured)
    tokens: TokenColumns | None = None  # what each request asked of token limits

    def outcome_in(self, outcomes: frozenset[Outcome] | set[Outcome]) -> np.ndarray:
        """Rows whose outcome is one of ``outcomes``."""
        return np.isin(self.outcome, [OUTCOMES.index(o) for o in outcomes])

    def ids(self, rows: np.ndarray | list[int]) -> list[str]:
        """request_id of the given rows (only ever called for evidence, so a few rows)."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.size == 0:
            return []
        # from the buffer, not pa.array(): that one imports pandas (0.15 s) to ask whether
        # the rows are a pandas object
        index = pa.Array.from_buffers(pa.int64(), rows.size, [None, pa.py_buffer(rows)])
        return [str(x) for x in self.request_id.take(index).to_pylist()]


def columns_from_table(table: pa.Table) -> Columns:
    """Columns of an arrow table with the record schema (see loadkit.records)."""
    return columns_from_reduced(reduce_batches(table_batches(table)))


def _codes(reduced: Reduced, name: str) -> Codes:
    codes, names = reduced.codes[name]
    return Codes(codes, names)


def columns_from_reduced(r: Reduced) -> Columns:
    """Columns of the batch-by-batch reduction of a run's records (``ingest``)."""
    a = r.arrays
    status = a["status"]
    error_code = _codes(r, "error_code")
    transport = _codes(r, "transport_error")
    content_type = _codes(r, "content_type")
    limit_kind = _codes(r, "limit_kind")
    model, model_names = r.codes["model"]
    tokens = TokenColumns(
        model=model,
        model_names=model_names,
        usage_prompt=a["prompt_tokens"],
        usage_completion=a["completion_tokens"],
        sent_prompt=a["sent_prompt_tokens"],
        sent_output=a["sent_max_tokens"],
        finish_length=a["finish_length"],
        rl_limit=a["rl_limit_tokens"],
        rl_remaining=a["rl_remaining_tokens"],
        rl_reset=a["rl_reset_tokens_s"],
        limit_kind=limit_kind.codes,
        kind_names=limit_kind.names,
    )
    return Columns(
        n=r.n,
        send=a["send_s"],
        conn=a["conn_s"],
        headers=a["headers_s"],
        first_token=a["first_token_s"],
        end=a["end_s"],
        scheduled=a["scheduled_s"],
        # a copy: the reduction's arrays may be read-only maps of the column cache
        queued=np.nan_to_num(a["queued_s"], nan=0.0),
        status=status,
        stream=a["stream"],
        completion_tokens=a["completion_tokens"],
        content_chunks=a["content_chunks"],
        rl_limit=a["rl_limit_requests"],
        rl_remaining=a["rl_remaining_requests"],
        retry_after=a["retry_after_s"],
        tier=_codes(r, "tier"),
        key=_codes(r, "key"),
        endpoint=_codes(r, "endpoint"),
        error_code=error_code,
        transport_error=transport,
        gap_ms=r.gap_ms,
        gap_counts=r.gap_counts,
        request_id=r.request_id,
        content_type=content_type,
        limit_signal=_codes(r, "limit_signal"),
        worker=_codes(r, "worker"),
        attempt=a["attempt"],
        outcome=outcomes(status, error_code, content_type, transport),
        refused=refusals(status, error_code, limit_kind, _codes(r, "schema")),
        tokens=tokens,
    )


#: Rows whose outcomes are worked out at a time: what the keys and their sorting cost in
#: memory is bounded by this, not by the run's size (~40 MB).
OUTCOME_ROWS = 1 << 20


def outcomes(
    status: np.ndarray, error_code: Codes, content_type: Codes, transport: Codes
) -> np.ndarray:
    """Each row's outcome (index into OUTCOMES): ``loadkit.outcomes.classify`` applied once
    per distinct (status, error code, content type, transport error), not once per row;
    OUTCOME_ROWS rows at a time."""
    n = status.size
    out = np.zeros(n, dtype=np.int8)
    if n == 0:
        return out
    low = int(status.min())
    columns = (error_code.codes, content_type.codes, transport.codes)
    radices = [int(status.max()) - low + 1] + [int(c.max()) + 2 for c in columns]
    # one integer a combination when the vocabularies allow, else the rows themselves
    as_int = np.prod([float(r) for r in radices]) < 2.0**62
    index = {o: i for i, o in enumerate(OUTCOMES)}
    known: dict[object, int] = {}  # a combination's key -> its outcome's index
    for start in range(0, n, OUTCOME_ROWS):
        rows = slice(start, min(start + OUTCOME_ROWS, n))
        parts = [status[rows].astype(np.int64) - low] + [
            c[rows].astype(np.int64) + 1 for c in columns
        ]
        if as_int:
            combined = parts[0]
            for p, r in zip(parts[1:], radices[1:], strict=True):
                combined = combined * r + p
            keys, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
            names: list[object] = keys.tolist()
        else:  # vocabularies too large for one integer key
            stacked = np.stack(parts, axis=1)
            keys, first, inverse = np.unique(
                stacked, axis=0, return_index=True, return_inverse=True
            )
            names = [tuple(k) for k in keys.tolist()]
        per_combo = np.empty(len(names), dtype=np.int8)
        for i, (key, r) in enumerate(zip(names, (first + start).tolist(), strict=True)):
            if key not in known:
                known[key] = index[
                    classify(
                        int(status[r]),
                        error_code.label(int(error_code.codes[r])),
                        content_type.label(int(content_type.codes[r])),
                        transport.label(int(transport.codes[r])),
                    )
                ]
            per_combo[i] = known[key]
        out[rows] = per_combo[np.asarray(inverse).reshape(-1)]
    return out


def refusals(status: np.ndarray, error_code: Codes, limit_kind: Codes, schema: Codes) -> np.ndarray:
    """Which limit refused each 429 (a ``Refused`` value; NOT_REFUSED elsewhere): the
    record's ``limit_kind``, decided by the engine from what the response said; null is
    unattributed. A version-1 record has no limit_kind: loadkit's own error codes decide,
    as they did when it was written."""

    def lookup(c: Codes, table: dict[str, Refused], default: Refused) -> np.ndarray:
        # index -1 (null) reads the last slot, which holds the default
        return np.array([table.get(name, default) for name in c.names] + [default], np.int8)

    by_kind = lookup(limit_kind, _KINDS, Refused.UNATTRIBUTED)
    by_code = lookup(error_code, _V1_CODES, Refused.UNATTRIBUTED)
    v1 = schema.code_of(V1_RECORD_SCHEMA)
    n = status.size
    out = np.empty(n, dtype=np.int8)
    for start in range(0, n, OUTCOME_ROWS):  # the temporaries bounded, as in outcomes()
        rows = slice(start, min(start + OUTCOME_ROWS, n))
        kinds = limit_kind.codes[rows]
        old = (schema.codes[rows] == v1) & (kinds < 0)
        kind = np.where(old, by_code[error_code.codes[rows]], by_kind[kinds])
        out[rows] = np.where(status[rows] == 429, kind, np.int8(Refused.NOT_REFUSED))
    return out


def table_from_records(recs: list[RequestRecord]) -> pa.Table:
    """An arrow table of record objects (tests, small runs)."""
    return _records.records_table([asdict(r) for r in recs], _arrow_schema())


def columns_from_records(recs: list[RequestRecord]) -> Columns:
    return columns_from_table(table_from_records(recs))


def read_table(run_dir: str | os.PathLike[str]) -> pa.Table:
    """Every record of a run as one arrow table (``loadkit.records.read_table``), its
    errors as UnusableInput."""
    try:
        return _records.read_table(run_dir)
    except (ValueError, TypeError, OSError) as exc:
        raise UnusableInput(str(exc)) from None


def parquet_file(run_dir: str | os.PathLike[str]) -> Path | None:
    return _records.parquet_file(run_dir)


def load_run(
    run_dir: str | os.PathLike[str],
    cache_min_records: int | None = None,
) -> tuple[RunMeta, Columns]:
    """run.json and the records of a run; UnusableInput with a one-line reason otherwise.
    A run of ``cache_min_records`` (default ``column_cache.CACHE_MIN_RECORDS``) or more
    keeps its reduced records in the run folder (``column_cache``), written while they are
    read: a later analysis of the same records skips parsing them, and either one reads the
    columns memory-mapped (read-only arrays)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise UnusableInput(f"{run_dir}: not a directory")
    try:
        meta = read_run_meta(path)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise UnusableInput(str(exc)) from None
    if not _records.record_files(path) and parquet_file(path) is None:
        raise UnusableInput(f"{run_dir}: no record files ({_records.RECORDS_GLOB})")
    if cache_min_records is None:
        cache_min_records = column_cache.CACHE_MIN_RECORDS
    # before reading: records appended meanwhile must make the cache stale
    sources = column_cache.source_signature(path)
    reduced = column_cache.load(path)
    if reduced is None:
        try:
            try:
                with column_cache.Spill(path, sources, cache_min_records) as spill:
                    reduced = read_reduced(path, joiner=spill.joiner)
                    spill.keep()
            except column_cache.CannotSpill:  # a full disk: no cache, the run in memory
                reduced = read_reduced(path)
        except (ValueError, TypeError, OSError) as exc:
            raise UnusableInput(str(exc)) from None
    if reduced.n == 0:
        raise UnusableInput(f"{run_dir}: the record files hold no records")
    cols = columns_from_reduced(reduced)
    del reduced
    if np.isnan(cols.send).any() or np.isnan(cols.end).any():
        raise UnusableInput(f"{run_dir}: some records lack send_s or end_s")
    return meta, cols
