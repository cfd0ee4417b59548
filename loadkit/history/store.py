"""The history database: schema, migrations on open, adding a run (idempotent and safe
with concurrent writers) and the queries the report and the gate read. SQLAlchemy Core;
SQLite by default (a file, no server), PostgreSQL by URL for a team.

Schema history (``loadkit_meta.schema_version``):

* v1: runs, metrics, limits, verdicts, slo.
* v2: runs gain ``git_branch``, ``complete`` and ``completeness`` (the summary's section,
  absent = unknown); run tags (``loadkit_tags``: ``--tag`` and ``$LOADKIT_TAGS``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from loadkit.history.ingest import IngestedRun

SCHEMA_VERSION = 2
DEFAULT_DB = "loadkit-history.db"
DB_ENV = "LOADKIT_HISTORY_DB"
SQLITE_BUSY_TIMEOUT_S = 60.0  # a concurrent writer waits this long for the file lock
CONNECT_TIMEOUT_S = 10  # PostgreSQL: fail a dead server fast, not after the OS default
# pg_advisory_xact_lock key: serialises schema creation and migration between processes
_MIGRATION_LOCK = 0x6C6F_6164_6B69_74  # "loadkit"

metadata = sa.MetaData()

meta_table = sa.Table(
    "loadkit_meta",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)

runs = sa.Table(
    "loadkit_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_key", sa.String(64), nullable=False, unique=True),
    sa.Column("run_id", sa.String(200), nullable=False),
    sa.Column("started_unix", sa.Float(precision=53), nullable=False),
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("scenario", sa.String(200), nullable=False),
    sa.Column("scenario_hash", sa.String(64), nullable=False),
    sa.Column("target", sa.String(1000), nullable=False),
    sa.Column("engine", sa.String(40), nullable=False),
    sa.Column("verdict", sa.String(40), nullable=False),
    sa.Column("duration_s", sa.Float(precision=53)),
    sa.Column("records", sa.BigInteger),
    sa.Column("interrupted", sa.Boolean),
    sa.Column("loadkit_version", sa.String(40), nullable=False),
    sa.Column("summary_schema", sa.String(40), nullable=False),
    sa.Column("git_commit", sa.String(64)),
    sa.Column("git_branch", sa.String(200)),  # v2
    sa.Column("complete", sa.Boolean),  # v2
    sa.Column("completeness", sa.Text),  # v2
    sa.Column("source", sa.String(2000), nullable=False),
    sa.Column("added_unix", sa.Float(precision=53), nullable=False),
    sa.Index("loadkit_runs_series", "scenario", "target", "started_unix"),
)


def _run_fk() -> sa.Column[int]:
    return sa.Column(
        "run", sa.Integer, sa.ForeignKey("loadkit_runs.id", ondelete="CASCADE"), nullable=False
    )


metrics = sa.Table(
    "loadkit_metrics",
    metadata,
    _run_fk(),
    sa.Column("metric", sa.String(120), nullable=False),
    sa.Column("tier", sa.String(100), nullable=False),
    sa.Column("key_label", sa.String(200), nullable=False),
    sa.Column("endpoint", sa.String(60), nullable=False),
    sa.Column("stream", sa.String(12), nullable=False),
    sa.Column("value", sa.Float(precision=53)),
    sa.PrimaryKeyConstraint("run", "metric", "tier", "key_label", "endpoint", "stream"),
    sa.Index("loadkit_metrics_by_name", "metric", "tier", "key_label", "endpoint", "stream", "run"),
)

limits = sa.Table(
    "loadkit_limits",
    metadata,
    _run_fk(),
    sa.Column("tier", sa.String(100), nullable=False),
    sa.Column("key_label", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("promised", sa.Float(precision=53)),
    sa.Column("window_s", sa.Float(precision=53)),
    sa.Column("observed_max", sa.Float(precision=53)),
    sa.Column("observed_max_possible", sa.Float(precision=53)),
    sa.Column("offered_requests", sa.Float(precision=53)),
    sa.Column("offered_max_in_window", sa.Float(precision=53)),
    sa.PrimaryKeyConstraint("run", "key_label", "kind", "tier"),
)

verdicts = sa.Table(
    "loadkit_verdicts",
    metadata,
    _run_fk(),
    sa.Column("tier", sa.String(100), nullable=False),
    sa.Column("key_label", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("aspect", sa.String(60), nullable=False),
    # free text on purpose: new verdict words (unusable, …) are stored as they come
    sa.Column("verdict", sa.String(40), nullable=False),
    sa.PrimaryKeyConstraint("run", "key_label", "kind", "aspect", "tier"),
)

slo = sa.Table(
    "loadkit_slo",
    metadata,
    _run_fk(),
    sa.Column("name", sa.String(120), nullable=False),
    sa.Column("metric", sa.String(120), nullable=False),
    sa.Column("stat", sa.String(20), nullable=False),
    sa.Column("threshold", sa.Float(precision=53)),
    sa.Column("direction", sa.String(4), nullable=False),
    sa.Column("observed", sa.Float(precision=53)),
    sa.Column("met", sa.Boolean),
    sa.Column("status", sa.String(40), nullable=False),
    sa.Column("source", sa.String(40), nullable=False),
    sa.PrimaryKeyConstraint("run", "name"),
)

tags = sa.Table(  # v2
    "loadkit_tags",
    metadata,
    _run_fk(),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("value", sa.String(500), nullable=False),
    sa.PrimaryKeyConstraint("run", "name"),
)


class StoreError(RuntimeError):
    """The database cannot be opened, migrated or written; the message names it without
    its password."""


@dataclass(frozen=True)
class StoredRun:
    """A run as the history knows it (no figures)."""

    id: int
    run_key: str
    run_id: str
    started_unix: float
    started_at: str
    scenario: str
    scenario_hash: str
    target: str
    engine: str
    verdict: str
    duration_s: float | None
    records: int | None
    interrupted: bool | None
    loadkit_version: str
    summary_schema: str
    git_commit: str | None
    git_branch: str | None
    complete: bool | None
    completeness: str | None
    source: str
    added_unix: float


@dataclass(frozen=True)
class VerdictPoint:
    run: int
    tier: str
    key: str
    kind: str
    aspect: str
    verdict: str


def database_url(db: str | None) -> URL:
    """``--db`` as a SQLAlchemy URL: a URL as given (``postgresql://`` uses psycopg 3), a
    plain path as a SQLite file; nothing given: ``$LOADKIT_HISTORY_DB``, else
    ``loadkit-history.db`` in the current folder."""
    text = db or os.environ.get(DB_ENV) or DEFAULT_DB
    if "://" not in text:
        return URL.create("sqlite", database=text)
    try:
        url = make_url(text)
    except ArgumentError:
        raise StoreError(f"--db: not a database URL: {redact(text)}") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def redact(url: str | URL) -> str:
    """A URL fit for a message: the password hidden."""
    try:
        return (url if isinstance(url, URL) else make_url(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def _sqlite_engine(url: URL) -> Engine:
    engine = sa.create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}, poolclass=sa.pool.NullPool
    )

    # SQLAlchemy's documented recipe for pysqlite: let SQLAlchemy issue BEGIN itself, and
    # make it BEGIN IMMEDIATE so a writer takes the file's write lock at the start of its
    # transaction and concurrent writers queue on the busy timeout instead of failing with
    # "database is locked" when a read lock cannot be upgraded.
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA foreign_keys = ON")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        return sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.NullPool)
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        raise StoreError(f"{redact(url)}: {exc}") from None


def _lock_for_schema(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
    # SQLite: BEGIN IMMEDIATE already holds the file's write lock.


def schema_version(conn: Connection) -> int:
    """0 for an empty database."""
    if not sa.inspect(conn).has_table(meta_table.name):
        return 0
    value = conn.execute(
        sa.select(meta_table.c.value).where(meta_table.c.name == "schema_version")
    ).scalar()
    return int(value) if value is not None else 0


def _set_version(conn: Connection, version: int) -> None:
    conn.execute(sa.delete(meta_table).where(meta_table.c.name == "schema_version"))
    conn.execute(sa.insert(meta_table).values(name="schema_version", value=str(version)))


def _migrate_1_to_2(conn: Connection) -> None:
    for column, type_ in (
        ("git_branch", sa.String(200)),
        ("complete", sa.Boolean()),
        ("completeness", sa.Text()),
    ):
        kind = type_.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE loadkit_runs ADD COLUMN {column} {kind}")
    tags.create(conn)


# version n -> the step that brings a version-n database to n + 1
MIGRATIONS = {1: _migrate_1_to_2}


def ensure_schema(conn: Connection) -> int:
    """Create or migrate the schema inside the caller's transaction; returns the version
    found. Refuses a database made by a newer loadkit."""
    _lock_for_schema(conn)
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"the history database has schema v{found}, newer than this loadkit's "
            f"v{SCHEMA_VERSION}: upgrade loadkit"
        )
    if found == 0:
        metadata.create_all(conn)
    else:
        for version in range(found, SCHEMA_VERSION):
            MIGRATIONS[version](conn)
    if found != SCHEMA_VERSION:
        _set_version(conn, SCHEMA_VERSION)
    return found


class Store:
    """An open history database (schema current). Use as a context manager."""

    def __init__(self, engine: Engine, url: URL, migrated_from: int) -> None:
        self.engine = engine
        self.url = url
        self.migrated_from = migrated_from

    @property
    def name(self) -> str:
        return redact(self.url)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"{self.name}: {_short(exc)}") from None

    # -- writing ---------------------------------------------------------------------------

    def add(self, item: IngestedRun) -> tuple[int, bool]:
        """Add one run with all its rows in one transaction: (run id, True), or the
        existing run's id and False when the same run is already there."""
        return self.add_many([item])[0]

    def add_many(self, items: Sequence[IngestedRun]) -> list[tuple[int, bool]]:
        """Add runs in one transaction (a backfill: one commit, not one per run)."""
        with self._tx() as conn:
            return [_add(conn, item) for item in items]

    # -- reading ---------------------------------------------------------------------------

    def runs(
        self,
        scenario: str | None = None,
        since_unix: float | None = None,
        target: str | None = None,
    ) -> list[StoredRun]:
        """Runs in start order, optionally of one scenario/target and from a time on."""
        q = sa.select(runs).order_by(runs.c.started_unix, runs.c.id)
        if scenario is not None:
            q = q.where(runs.c.scenario == scenario)
        if target is not None:
            q = q.where(runs.c.target == target)
        if since_unix is not None:
            q = q.where(runs.c.started_unix >= since_unix)
        with self._tx() as conn:
            return [StoredRun(**r._asdict()) for r in conn.execute(q)]

    def metric_values(
        self, run_ids: Sequence[int], names: Iterable[str], tier: str = ""
    ) -> dict[str, dict[int, float | None]]:
        """metric -> run id -> value, for the all-keys, all-endpoints figures of ``tier``
        ('' = overall)."""
        names = list(names)
        out: dict[str, dict[int, float | None]] = {n: {} for n in names}
        if not run_ids or not names:
            return out
        wanted = set(run_ids)
        q = sa.select(metrics.c.run, metrics.c.metric, metrics.c.value).where(
            metrics.c.metric.in_(names),
            metrics.c.tier == tier,
            metrics.c.key_label == "",
            metrics.c.endpoint == "",
            metrics.c.stream == "",
        )
        q = _only_runs(q, metrics.c.run, wanted)
        with self._tx() as conn:
            for run, metric, value in conn.execute(q):
                if run in wanted:
                    out[metric][run] = value
        return out

    def verdict_points(self, run_ids: Sequence[int]) -> list[VerdictPoint]:
        if not run_ids:
            return []
        wanted = set(run_ids)
        q = sa.select(
            verdicts.c.run,
            verdicts.c.tier,
            verdicts.c.key_label,
            verdicts.c.kind,
            verdicts.c.aspect,
            verdicts.c.verdict,
        )
        q = _only_runs(q, verdicts.c.run, wanted)
        with self._tx() as conn:
            return [VerdictPoint(*r) for r in conn.execute(q) if r[0] in wanted]

    def tags_of(self, run_ids: Sequence[int]) -> dict[int, dict[str, str]]:
        out: dict[int, dict[str, str]] = {}
        if not run_ids:
            return out
        wanted = set(run_ids)
        q = _only_runs(sa.select(tags.c.run, tags.c.name, tags.c.value), tags.c.run, wanted)
        with self._tx() as conn:
            for run, name, value in conn.execute(q):
                if run in wanted:
                    out.setdefault(run, {})[name] = value
        return out

    def count(self, table: sa.Table) -> int:
        with self._tx() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


_MAX_IN_LIST = 5000  # above this many runs, read all rows and filter in Python


def _only_runs(q: Any, column: Any, wanted: set[int]) -> Any:
    """Restrict a query to some runs; a huge id list is filtered by the caller instead
    (both SQLite and PostgreSQL cap the number of bound parameters)."""
    return q.where(column.in_(sorted(wanted))) if len(wanted) <= _MAX_IN_LIST else q


def _add(conn: Connection, item: IngestedRun) -> tuple[int, bool]:
    row = asdict(item.run) | {"added_unix": time.time()}
    inserted = conn.execute(_insert_ignore(conn, runs).values(**row).returning(runs.c.id)).scalar()
    if inserted is None:
        existing = conn.execute(
            sa.select(runs.c.id).where(runs.c.run_key == item.run.run_key)
        ).scalar_one()
        return int(existing), False
    rid = int(inserted)
    _insert_many(
        conn,
        metrics,
        rid,
        (
            {
                "metric": m.metric,
                "tier": m.tier,
                "key_label": m.key,
                "endpoint": m.endpoint,
                "stream": m.stream,
                "value": m.value,
            }
            for m in item.metrics
        ),
    )
    _insert_many(
        conn,
        limits,
        rid,
        (
            {
                "tier": lr.tier,
                "key_label": lr.key,
                "kind": lr.kind,
                "promised": lr.promised,
                "window_s": lr.window_s,
                "observed_max": lr.observed_max,
                "observed_max_possible": lr.observed_max_possible,
                "offered_requests": lr.offered_requests,
                "offered_max_in_window": lr.offered_max_in_window,
            }
            for lr in item.limits
        ),
    )
    _insert_many(
        conn,
        verdicts,
        rid,
        (
            {
                "tier": v.tier,
                "key_label": v.key,
                "kind": v.kind,
                "aspect": v.aspect,
                "verdict": v.verdict,
            }
            for v in item.verdicts
        ),
    )
    _insert_many(conn, slo, rid, (asdict(s) for s in item.slos))
    _insert_many(conn, tags, rid, ({"name": k, "value": v} for k, v in item.tags))
    return rid, True


def _insert_ignore(conn: Connection, table: sa.Table) -> Any:
    """INSERT … ON CONFLICT DO NOTHING: of two processes adding the same run at once, one
    inserts and the other gets no row back."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=["run_key"])
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=["run_key"])
    raise StoreError(f"unsupported database {conn.dialect.name!r} (use SQLite or PostgreSQL)")


def _insert_many(
    conn: Connection, table: sa.Table, run: int, rows: Iterable[dict[str, Any]]
) -> None:
    batch = [{"run": run, **r} for r in rows]
    if batch:
        conn.execute(sa.insert(table), batch)


def _short(exc: SQLAlchemyError) -> str:
    """The driver's message without SQLAlchemy's statement dump and help link."""
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def open_store(db: str | None = None) -> Store:
    """Open (creating or migrating the schema if needed) the history database ``db``."""
    url = database_url(db)
    if url.get_backend_name() == "sqlite" and url.database:
        folder = os.path.dirname(os.path.abspath(url.database))
        if not os.path.isdir(folder):
            raise StoreError(f"{url.database}: folder {folder} does not exist")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            found = ensure_schema(conn)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(f"{redact(url)}: {_short(exc)}") from None
    except StoreError:
        engine.dispose()
        raise
    return Store(engine, url, found)
