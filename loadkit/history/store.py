"""The history database: opening it (the schema created or migrated on open), adding a
run (idempotent, safe with concurrent writers) and the queries the report and the gate
read. SQLAlchemy Core; SQLite by default (a file, no server), PostgreSQL by URL."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from loadkit.history.ingest import IngestedRun
from loadkit.history.schema import (
    SCHEMA_VERSION,
    StoreError,
    ensure_schema,
    limits,
    metrics,
    runs,
    slo,
    tags,
    verdicts,
)
from loadkit.history.stored import StoredRun, VerdictPoint

__all__ = ["SCHEMA_VERSION", "Store", "StoreError", "StoredRun", "VerdictPoint", "open_store"]

DEFAULT_DB = "loadkit-history.db"
DB_ENV = "LOADKIT_HISTORY_DB"
SQLITE_BUSY_TIMEOUT_S = 60.0  # a concurrent writer waits this long for the file lock
CONNECT_TIMEOUT_S = 10  # PostgreSQL: fail a dead server fast, not after the OS default


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
