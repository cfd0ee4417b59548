"""The history schema as version 1 shipped it (before git_branch, completeness and tags),
frozen here so a test can build a v1 database and watch loadkit migrate it on open."""

from __future__ import annotations

import sqlalchemy as sa

v1 = sa.MetaData()

sa.Table(
    "loadkit_meta",
    v1,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)
sa.Table(
    "loadkit_runs",
    v1,
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
    sa.Column("source", sa.String(2000), nullable=False),
    sa.Column("added_unix", sa.Float(precision=53), nullable=False),
    sa.Index("loadkit_runs_series", "scenario", "target", "started_unix"),
)


def _run_fk() -> sa.Column[int]:
    return sa.Column(
        "run", sa.Integer, sa.ForeignKey("loadkit_runs.id", ondelete="CASCADE"), nullable=False
    )


sa.Table(
    "loadkit_metrics",
    v1,
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
sa.Table(
    "loadkit_limits",
    v1,
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
sa.Table(
    "loadkit_verdicts",
    v1,
    _run_fk(),
    sa.Column("tier", sa.String(100), nullable=False),
    sa.Column("key_label", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("aspect", sa.String(60), nullable=False),
    sa.Column("verdict", sa.String(40), nullable=False),
    sa.PrimaryKeyConstraint("run", "key_label", "kind", "aspect", "tier"),
)
sa.Table(
    "loadkit_slo",
    v1,
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


def create_v1(url: str, runs: list[dict[str, object]], metrics: list[dict[str, object]]) -> None:
    """A v1 database at ``url`` holding the given rows."""
    from loadkit.history.store import database_url

    engine = sa.create_engine(database_url(url), poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        v1.create_all(conn)
        conn.execute(sa.insert(v1.tables["loadkit_meta"]).values(name="schema_version", value="1"))
        conn.execute(sa.insert(v1.tables["loadkit_runs"]), runs)
        conn.execute(sa.insert(v1.tables["loadkit_metrics"]), metrics)
    engine.dispose()
