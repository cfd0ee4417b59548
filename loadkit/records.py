"""The request record: one per HTTP request, the same shape from every engine.

Times are monotonic seconds from the run's start (the wall-clock anchor lives in the run
metadata, see ``runmeta.py``). Derived metrics (TTFT, ITL, TPOT) are never stored: analysis
computes them from these raw timestamps. See ``docs/records.md``.
"""

from __future__ import annotations

import asyncio
import json
import operator
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from loadkit.parquet_twin import BLOCK_BYTES as TWIN_BLOCK_BYTES
from loadkit.parquet_twin import MIN_TWIN_BYTES as TWIN_MIN_BYTES
from loadkit.parquet_twin import ParquetTwin, twin_path

if TYPE_CHECKING:  # imported where used: the engines write records without loading pyarrow
    import pyarrow as pa

RECORD_SCHEMA = "loadkit.record/2"
# Every schema this loadkit reads. Version 2 only added fields; a version-1 record reads
# with them all None, and keeps "loadkit.record/1" as its schema so analysis can tell
# "not measured" from "measured, none".
READABLE_SCHEMAS = ("loadkit.record/1", RECORD_SCHEMA)
RECORDS_GLOB = "records-*.jsonl"
PARQUET_FILE = "records.parquet"

# Transport error kinds (status 0, or a stream cut after a 200).
TIMEOUT = "timeout"
REFUSED = "refused"
RESET = "reset"
INCOMPLETE_STREAM = "incomplete_stream"
MALFORMED_EVENT = "malformed_event"
CANCELLED = "cancelled"  # the run stopped (Ctrl-C, duration over) while the request was open
NOT_SENT = "not_sent"  # the run stopped while it waited for a client-side slot: never sent
LINE_TOO_LONG = "line_too_long"  # an SSE line over the decoder's bound (its event dropped)
BODY_TOO_LARGE = "body_too_large"  # a non-streamed body over the trace's bound (not parsed)
UNSUPPORTED_ENCODING = "unsupported_encoding"  # Content-Encoding not gzip/deflate/identity
ENCODING_ERROR = "encoding_error"  # gzip/deflate data that does not decompress
OTHER = "other"
TRANSPORT_ERRORS = (
    TIMEOUT,
    REFUSED,
    RESET,
    INCOMPLETE_STREAM,
    MALFORMED_EVENT,
    CANCELLED,
    NOT_SENT,
    LINE_TOO_LONG,
    BODY_TOO_LARGE,
    UNSUPPORTED_ENCODING,
    ENCODING_ERROR,
    OTHER,
)

ENDPOINTS = ("chat", "completions", "models", "model")


@dataclass(slots=True)
class RequestRecord:
    """Everything observed about one HTTP request (a retry is its own record)."""

    run_id: str
    engine: str  # "async" | "locust"
    worker: str  # which process/worker produced it
    request_id: str  # unique in the run; sent as the x-loadkit-request-id header
    attempt: int  # 1 for the first try, 2.. for retries of the same logical request
    tier: str
    key: str  # the key's label, never the key itself
    endpoint: str  # one of ENDPOINTS
    stream: bool
    model: str | None
    scheduled_s: float | None  # open loop: when the schedule wanted it sent
    send_s: float  # just before the request was handed to the HTTP client
    headers_s: float | None  # response status line and headers received
    first_token_s: float | None  # first chunk with non-empty content (streams only)
    last_token_s: float | None  # last chunk with non-empty content (streams only)
    end_s: float  # body fully read, or the failure observed
    chunk_s: list[float] = field(default_factory=list)  # each content chunk of choice 0
    status: int = 0  # HTTP status; 0 = no response (transport failure)
    error_code: str | None = None  # API error code from the body / error event
    error_type: str | None = None  # v2: the error's "type", apart from its code
    transport_error: str | None = None  # one of TRANSPORT_ERRORS
    prompt_tokens: int | None = None  # from usage
    completion_tokens: int | None = None  # from usage
    # v2, later: what the request asked of a token limit, as the client counted it (known
    # for a 429 too, which has no usage)
    sent_prompt_tokens: int | None = None
    sent_max_tokens: int | None = None  # max_tokens x choices
    content_chunks: int = 0  # content-bearing chunks, all choices
    finish_reason: str | None = None
    content_type: str | None = None  # v2: media type of the response, parameters stripped
    rl_limit_requests: int | None = None
    rl_remaining_requests: int | None = None
    rl_reset_requests_s: float | None = None
    rl_limit_tokens: int | None = None  # v2: x-ratelimit-limit-tokens
    rl_remaining_tokens: int | None = None  # v2
    rl_reset_tokens_s: float | None = None  # v2
    retry_after_s: float | None = None  # retry-after-ms if sent, else retry-after
    limit_kind: str | None = None  # v2: which limit refused a 429 (limit_signals.LIMIT_KINDS)
    limit_signal: str | None = None  # v2: what in the response decided limit_kind
    queued_s: float = 0.0  # time spent waiting for a client-side slot before send
    pause_s: float | None = None  # v2: closed loop: the pause taken after it (think, backoff)
    # Optional (null: not measured): when a connection was ready for it, new or reused from
    # the pool. The asyncio engine records it; the Locust engine does not.
    conn_s: float | None = None
    schema: str = RECORD_SCHEMA

    def to_json(self) -> str:
        """The record as one line of JSON (no newline)."""
        return self.to_jsonl()[:-1].decode()

    def to_jsonl(self) -> bytes:
        """The record as one line of JSON, newline included: what a record file holds."""
        # Not dataclasses.asdict (its deep copy was the engine's largest single cost), and
        # orjson rather than json.dumps: ~5x faster per record, the same JSON values.
        try:
            return orjson.dumps(_row(self), option=orjson.OPT_APPEND_NEWLINE)
        except (OverflowError, ValueError, TypeError):
            # A value orjson or the fast rounding cannot take (an infinite or NaN time, an
            # integer past 64 bits): the exact, slower path.
            d = dict(zip(RECORD_FIELDS, _GET_ALL(self), strict=True))
            return (json.dumps(_rounded(d), separators=(",", ":")) + "\n").encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestRecord:
        """A record of any readable schema; fields a version did not have are None."""
        schema = data.get("schema", RECORD_SCHEMA)
        if schema not in READABLE_SCHEMAS:
            raise ValueError(
                f"unsupported record schema {schema!r} (this loadkit reads {_READABLE})"
            )
        return cls(**{k: v for k, v in data.items() if k in _FIELD_SET})


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RequestRecord))
# Optional fields added within version 2: absent from files written before them (and never
# written by an engine that does not measure them), read as null: "not measured".
OPTIONAL_FIELDS = ("conn_s",)
# Fields version 2 added: absent from version-1 files, read as null.
V2_FIELDS = (
    "error_type",
    "content_type",
    "rl_limit_tokens",
    "rl_remaining_tokens",
    "rl_reset_tokens_s",
    "limit_kind",
    "limit_signal",
    "pause_s",
    "sent_prompt_tokens",
    "sent_max_tokens",
)
_FIELD_SET = frozenset(RECORD_FIELDS)
_READABLE = ", ".join(READABLE_SCHEMAS)
_GET_ALL = operator.attrgetter(*RECORD_FIELDS)
_TIME_FIELDS = (
    "scheduled_s",
    "send_s",
    "conn_s",
    "headers_s",
    "first_token_s",
    "last_token_s",
    "end_s",
    "rl_reset_requests_s",
    "rl_reset_tokens_s",
    "retry_after_s",
    "queued_s",
    "pause_s",
)


def _row_source() -> str:
    """Source of ``_row(rec)``: the record as a dict, times rounded to the microsecond, in
    field order. One dict display (what ``dataclasses`` generates its methods from, too)
    costs a third of reading the fields, rounding them by index and zipping them with their
    names. ``round(t * 1e6) / 1e6`` is the double nearest the microsecond (k / 1e6 is
    correctly rounded), as ``round(t, 6)`` is, at a third of its cost; they could differ
    only for a time within one ulp of a half-microsecond."""
    items = []
    for name in RECORD_FIELDS:
        if name in _TIME_FIELDS:
            v = f"None if (v := r.{name}) is None else round(v * 1e6) / 1e6"
        elif name == "chunk_s":
            v = "[round(t * 1e6) / 1e6 for t in c] if (c := r.chunk_s) else c"
        else:
            v = f"r.{name}"
        items.append(f"        {name!r}: {v},")
    return "def _row(r):\n    return {\n" + "\n".join(items) + "\n    }\n"


_ns: dict[str, Any] = {}
exec(_row_source(), _ns)  # noqa: S102 -- generated from RECORD_FIELDS, no outside input
_row: Any = _ns["_row"]


# Instants on the run's clock (the other *_s fields are durations).
INSTANT_FIELDS = (
    "scheduled_s",
    "send_s",
    "conn_s",
    "headers_s",
    "first_token_s",
    "last_token_s",
    "end_s",
)


def shifted(record: RequestRecord, delta_s: float) -> RequestRecord:
    """The record with every instant moved by ``delta_s`` (re-anchoring onto another t=0)."""
    moved: dict[str, Any] = {
        name: (v + delta_s if (v := getattr(record, name)) is not None else None)
        for name in INSTANT_FIELDS
    }
    moved["chunk_s"] = [t + delta_s for t in record.chunk_s]
    return replace(record, **moved)


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    # Microseconds are far below any effect loadkit measures and halve the file size.
    for name in _TIME_FIELDS:
        v = d[name]
        if v is not None:
            d[name] = round(v, 6)
    if d["chunk_s"]:
        d["chunk_s"] = [round(t, 6) for t in d["chunk_s"]]
    return d


# A crash (a killed process) loses at most the records of the last flush interval.
FLUSH_INTERVAL_S = 0.1
_FLUSH_LINES = 4096  # and a burst never holds more than this many lines in memory


class RecordWriter:
    """Appends records as JSON lines. Inside a running asyncio loop, lines are held and
    written together at most ``flush_interval_s`` after the first of them (one write and
    flush per interval instead of per record): a killed process loses at most that
    interval's records, and a write it interrupts can tear only the file's last line,
    which readers skip. Without a loop (or with an interval of 0), every record is written
    and flushed to the OS as it comes. ``close`` (or leaving the ``with``) writes the rest.

    A file the writer starts gets a Parquet twin once it has ``twin_min_bytes``
    (``loadkit.parquet_twin``: written on a thread of its own, block by block, so a large
    run's analysis reads columns instead of parsing JSON); ``twin_block_bytes=None``
    writes none.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        flush_interval_s: float = FLUSH_INTERVAL_S,
        twin_block_bytes: int | None = TWIN_BLOCK_BYTES,
        twin_min_bytes: int = TWIN_MIN_BYTES,
    ) -> None:
        if not flush_interval_s >= 0:
            raise ValueError(f"flush_interval_s: expected >= 0, got {flush_interval_s!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] | None = open(self.path, "ab")  # noqa: SIM115
        # A file this writer starts gets a Parquet twin once it passes one block (None: no
        # twin); one it appends to keeps only its JSONL.
        self._twin: ParquetTwin | None = None
        if os.fstat(self._fh.fileno()).st_size == 0:
            if twin_block_bytes is not None:
                self._twin = ParquetTwin(self.path, twin_block_bytes, twin_min_bytes)
            else:  # a new file: a twin beside it would be another file's
                twin_path(self.path).unlink(missing_ok=True)
        self.flush_interval_s = flush_interval_s
        self._lines: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.count = 0

    def write(self, record: RequestRecord) -> None:
        if self._fh is None:
            raise RuntimeError(f"record writer for {self.path} is closed")
        lines = self._lines
        lines.append(record.to_jsonl())
        self.count += 1
        if self._timer is not None:
            # A loop that ended with lines pending never ran the timer: flush now.
            if len(lines) >= _FLUSH_LINES or self._loop is None or self._loop.is_closed():
                self.flush()
            return
        if self.flush_interval_s > 0:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self._loop = loop
                self._timer = loop.call_later(self.flush_interval_s, self.flush)
                return
        self.flush()

    def flush(self) -> None:
        """Write every held line and flush it to the OS."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines and self._fh is not None:
            lines = self._lines
            self._lines = []
            data = lines[0] if len(lines) == 1 else b"".join(lines)
            self._fh.write(data)
            self._fh.flush()
            if self._twin is not None:
                self._twin.feed(len(data))

    @property
    def closed(self) -> bool:
        return self._fh is None

    def close(self) -> None:
        if self._fh is not None:
            self.flush()
            size = os.fstat(self._fh.fileno()).st_size
            self._fh.close()
            self._fh = None
            if self._twin is not None:
                twin, self._twin = self._twin, None
                twin.close(size)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def record_writer(path: str | os.PathLike[str], twins: bool = True) -> RecordWriter:
    """The run's writer of one records file: with its Parquet twin, or (``twins`` False,
    the scenario's ``[run] parquet_twins``) without."""
    return RecordWriter(path, twin_block_bytes=TWIN_BLOCK_BYTES if twins else None)


def record_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    return sorted(Path(run_dir).glob(RECORDS_GLOB))


def iter_records(run_dir: str | os.PathLike[str]) -> list[RequestRecord]:
    """All records of a run as objects (small runs, tests)."""
    return [r for path in record_files(run_dir) for r in iter_records_file(path)]


def read_table(run_dir: str | os.PathLike[str]) -> pa.Table:
    """Every record of a run as one Arrow table with the record schema (``chunk_s`` a list
    column). ``records.parquet`` is read instead of the JSONL files when it is at least as
    new as all of them, a file's Parquet twin (``parquet_twin.valid_twin``) instead of the
    file. A torn last line falls back to the careful line reader. Raises
    ValueError (naming the file) for unreadable or foreign records."""
    import pyarrow as pa

    schema = arrow_schema()
    parquet = parquet_file(run_dir)
    if parquet is not None:
        table = _read_parquet(parquet, schema)
        _check_schemas(run_dir, table)
        return table
    tables = list(_file_tables(run_dir, schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _file_tables(run_dir: str | os.PathLike[str], schema: pa.Schema) -> Iterator[pa.Table]:
    """Each JSONL file's records (or its valid twin's) as a table, file by file, each
    checked for foreign schemas."""
    import pyarrow as pa
    import pyarrow.json as pj

    from loadkit.parquet_twin import valid_twin

    for path in record_files(run_dir):
        if path.stat().st_size == 0:
            continue
        table = None
        twin = valid_twin(path)
        if twin is not None:
            try:
                table = _read_parquet(twin[0], schema)
            except ValueError:
                pass  # the twin is unusable after all: its JSONL is the record
        if table is None:
            opts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
            try:
                table = pj.read_json(path, parse_options=opts)
            except pa.ArrowInvalid:
                recs = [asdict(r) for r in iter_records_file(path)]
                table = records_table(recs, schema)
            except OSError as exc:
                raise ValueError(f"{path}: cannot read ({exc})") from None
        _check_schemas(run_dir, table)
        yield table


def _check_schemas(run_dir: str | os.PathLike[str], table: pa.Table) -> None:
    schemas = set(table.column("schema").unique().to_pylist()) - {None}
    if schemas - set(READABLE_SCHEMAS):
        bad = sorted(str(x) for x in schemas - set(READABLE_SCHEMAS))
        raise ValueError(
            f"{run_dir}: unsupported record schema {', '.join(bad)} "
            f"(this loadkit reads {_READABLE})"
        )


def read_records(run_dir: str | os.PathLike[str]) -> Any:  # a pandas.DataFrame (no stubs)
    """Every record of a run as a pandas DataFrame, one row per request, columns as
    RECORD_FIELDS (``chunk_s`` holds lists). Uses pyarrow's JSON reader: fast on millions
    of records."""
    return read_table(run_dir).to_pandas()


def parquet_file(run_dir: str | os.PathLike[str]) -> Path | None:
    """records.parquet when it exists and is at least as new as every JSONL file (then it
    holds the same records and reads ~10x faster), else None."""
    path = Path(run_dir) / PARQUET_FILE
    if not path.is_file():
        return None
    newest = max((f.stat().st_mtime for f in record_files(run_dir)), default=0.0)
    return path if path.stat().st_mtime >= newest else None


def _read_parquet(path: Path, schema: pa.Schema) -> pa.Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    missing = [f.name for f in schema if f.name not in table.column_names]
    if [m for m in missing if m not in V2_FIELDS and m not in OPTIONAL_FIELDS]:
        raise ValueError(f"{path}: missing record fields {', '.join(missing)}")
    for name in missing:  # an older Parquet file: the fields it did not have are null
        table = table.append_column(
            schema.field(name), pa.nulls(len(table), schema.field(name).type)
        )
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"{path}: unexpected field types ({exc})") from None


def write_parquet(run_dir: str | os.PathLike[str]) -> Path:
    """Write every record of the run as ``records.parquet`` (the JSONL files stay: they
    are what an interrupted run keeps), one record file at a time: a soak's ten million
    records are never one table in memory. Written under a temporary name, then renamed:
    a failure leaves no partial file."""
    import pyarrow.parquet as pq

    path = Path(run_dir) / PARQUET_FILE
    partial = path.with_name(f".{PARQUET_FILE}.partial-{os.getpid()}")
    schema = arrow_schema()
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            for table in _file_tables(run_dir, schema):
                writer.write_table(table.select(schema.names).cast(schema))
                del table
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def iter_records_file(path: Path) -> list[RequestRecord]:
    """Records of one file. A torn last line (the writer was killed mid-write) is skipped;
    any other bad line is an error naming the file and line."""
    out: list[RequestRecord] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(RequestRecord.from_dict(json.loads(line)))
        except json.JSONDecodeError as exc:
            if i == last:
                continue  # torn final line of a killed writer
            raise ValueError(f"{path}:{i + 1}: not a JSON record ({exc.msg})") from None
    return out


_INT64 = (-(2**63), 2**63 - 1)


def records_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Record dicts as a table of ``schema``. An integer beyond int64 (a number a hostile or
    broken server sent in a header or a body, kept in the record as sent) is clamped to the
    nearest bound, so it still reads as huge instead of failing the whole run's analysis."""
    import pyarrow as pa

    ints = [f.name for f in schema if pa.types.is_integer(f.type)]
    for row in rows:
        for name in ints:
            v = row.get(name)
            if isinstance(v, int) and not _INT64[0] <= v <= _INT64[1]:
                row[name] = min(max(v, _INT64[0]), _INT64[1])
    return pa.Table.from_pylist(rows, schema=schema)


def arrow_schema() -> pa.Schema:
    """The Arrow schema of a record table (JSONL reading, Parquet writing)."""
    import pyarrow as pa

    f64, i64, s, b = pa.float64(), pa.int64(), pa.string(), pa.bool_()
    types = {
        "attempt": i64,
        "stream": b,
        "status": i64,
        "prompt_tokens": i64,
        "completion_tokens": i64,
        "sent_prompt_tokens": i64,
        "sent_max_tokens": i64,
        "content_chunks": i64,
        "rl_limit_requests": i64,
        "rl_remaining_requests": i64,
        "rl_limit_tokens": i64,
        "rl_remaining_tokens": i64,
        "chunk_s": pa.list_(f64),
    }
    cols = []
    for name in RECORD_FIELDS:
        if name in types:
            cols.append(pa.field(name, types[name]))
        elif name.endswith("_s"):
            cols.append(pa.field(name, f64))
        else:
            cols.append(pa.field(name, s))
    return pa.schema(cols)
