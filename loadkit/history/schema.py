"""The history database's schema and its migrations (SQLAlchemy Core tables).

Schema history (``loadkit_meta.schema_version``):

* v1: runs, metrics, limits, verdicts, slo.
* v2: runs gain ``git_branch``, ``complete`` and ``completeness`` (the summary's section,
  absent = unknown); run tags (``loadkit_tags``: ``--tag`` and ``$LOADKIT_TAGS``).

A change to the schema is a new version: a step in ``MIGRATIONS``, and the previous
version's tables frozen in ``tests/history/`` so a test can migrate a database made by it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

SCHEMA_VERSION = 2
# pg_advisory_xact_lock key: serialises schema creation and migration between processes
MIGRATION_LOCK = 0x6C6F_6164_6B69_74  # "loadkit"

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


def _lock_for_schema(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK)))
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
