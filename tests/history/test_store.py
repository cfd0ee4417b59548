"""The history database on SQLite and on a real PostgreSQL: every row kept, the same run
twice stored once, concurrent writers, schema migration on open."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from loadkit.history.ingest import Identity, read_run_dir
from loadkit.history.schema import (
    MIGRATION_LOCK,
    SCHEMA_VERSION,
    limits,
    meta_table,
    metrics,
    runs,
    slo,
    tags,
    verdicts,
)
from loadkit.history.store import StoreError, database_url, open_store
from tests.history.builders import Night, write_night
from tests.history.schema_v1 import create_v1

ROOT = Path(__file__).resolve().parents[2]


def test_add_keeps_every_row_and_the_same_run_twice_is_a_no_op(db_url, tmp_path):
    night = Night(
        limits={("free-1", "requests"): "unusable", ("free-1", "concurrency"): "held"},
        completeness={"complete": True},
    )
    item = read_run_dir(
        write_night(tmp_path, 0, night), Identity("c0ffee", "main", (("env", "ci"),))
    )
    with open_store(db_url) as store:
        rid, added = store.add(item)
        assert added
        assert store.add(item) == (rid, False)
        assert store.count(runs) == 1
        assert store.count(metrics) == len(item.metrics)
        assert store.count(limits) == 2
        assert store.count(verdicts) == len(item.verdicts) == 6  # enforced, honoured, retry_after
        assert store.count(slo) == 1 and store.count(tags) == 1
        (run,) = store.runs()
        assert (run.run_id, run.git_commit, run.git_branch, run.complete) == (
            "nightly-000",
            "c0ffee",
            "main",
            True,
        )
        assert store.tags_of([rid]) == {rid: {"env": "ci"}}
        words = {(p.key, p.kind, p.aspect): p.verdict for p in store.verdict_points([rid])}
        assert words[("free-1", "requests", "enforced")] == "unusable"  # a new word, kept
        values = store.metric_values([rid], ["ttft_ms.p99", "error_rate"])
        assert values == {"ttft_ms.p99": {rid: 200.0}, "error_rate": {rid: 0.0}}
        assert store.metric_values([rid], ["ttft_ms.p99"], tier="free") == {
            "ttft_ms.p99": {rid: pytest.approx(220.0)}
        }
    with open_store(db_url) as again:  # reopening a current database changes nothing
        assert again.migrated_from == SCHEMA_VERSION
        assert again.count(runs) == 1


def test_runs_filter_by_scenario_and_time(db_url, tmp_path):
    with open_store(db_url) as store:
        for i in range(4):
            store.add(read_run_dir(write_night(tmp_path, i, Night(), scenario="a")))
        store.add(read_run_dir(write_night(tmp_path, 9, Night(), scenario="b")))
        everything = store.runs()
        assert [r.run_id for r in everything] == ["a-000", "a-001", "a-002", "a-003", "b-009"]
        assert len(store.runs(scenario="a")) == 4
        since = everything[2].started_unix
        assert [r.run_id for r in store.runs(scenario="a", since_unix=since)] == ["a-002", "a-003"]


def _add_process(db: str, dirs: list[Path]) -> subprocess.Popen[str]:
    env = dict(os.environ, LOADKIT_HISTORY_DB=db, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "loadkit", "history", "add", *map(str, dirs)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class _HeldDatabase:
    """Holds the database's schema lock while two writers start, so they are both waiting
    on it when it is released and then really write at the same time."""

    def __init__(self, db: str) -> None:
        self.db = db
        self.url = database_url(db)
        self.sqlite = self.url.get_backend_name() == "sqlite"

    def __enter__(self) -> _HeldDatabase:
        if self.sqlite:
            import sqlite3

            self.conn = sqlite3.connect(self.url.database, isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            self.engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
            self.pg = self.engine.connect()
            self.pg.execute(sa.select(sa.func.pg_advisory_lock(MIGRATION_LOCK)))
        return self

    def waiting(self, procs: list[subprocess.Popen[str]]) -> int:
        """How many of ``procs`` are blocked on the lock."""
        if self.sqlite:
            path = os.path.realpath(self.url.database or "")
            n = 0
            for p in procs:
                try:
                    fds = os.listdir(f"/proc/{p.pid}/fd")
                    n += any(os.path.realpath(f"/proc/{p.pid}/fd/{fd}") == path for fd in fds)
                except OSError:
                    pass
            return n
        q = "select count(*) from pg_locks where locktype = 'advisory' and not granted"
        with self.engine.connect() as conn:
            return int(conn.exec_driver_sql(q).scalar_one())

    def __exit__(self, *exc: object) -> None:
        if self.sqlite:
            self.conn.execute("COMMIT")
            self.conn.close()
        else:
            self.pg.execute(sa.select(sa.func.pg_advisory_unlock(MIGRATION_LOCK)))
            self.pg.close()
            self.engine.dispose()


def test_two_processes_adding_at_once(db_url, tmp_path):
    """Two writers released at the same instant on a database neither created: each
    creates or finds the schema, adds 12 runs of its own and 6 that both add; nothing
    lost, nothing doubled, no "database is locked"."""
    shared = [write_night(tmp_path / "shared", i, Night(ttft=100 + i)) for i in range(6)]
    own_a = [write_night(tmp_path / "a", 10 + i, Night(), scenario="a") for i in range(12)]
    own_b = [write_night(tmp_path / "b", 10 + i, Night(), scenario="b") for i in range(12)]
    deadline = time.monotonic() + 120
    with _HeldDatabase(db_url) as held:
        procs = [_add_process(db_url, shared + own_a), _add_process(db_url, shared + own_b)]
        while held.waiting(procs) < 2:
            assert all(p.poll() is None for p in procs), "a writer ended before the lock was free"
            assert time.monotonic() < deadline, "the writers never reached the database"
            time.sleep(0.05)  # polling an outside process's state: nothing to await
    outs = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    text = "".join(o for o, _ in outs)
    assert text.count("added as run") == 30
    assert text.count("already in the history") == 6
    per_run = len(read_run_dir(shared[0]).metrics)
    with open_store(db_url) as store:
        assert store.count(runs) == 30
        assert store.count(metrics) == 30 * per_run


def test_a_v1_database_is_migrated_on_open(db_url, tmp_path):
    item = read_run_dir(write_night(tmp_path, 0, Night()))
    old = {
        k: v
        for k, v in item.run.__dict__.items()
        if k not in ("git_branch", "complete", "completeness")
    }
    old |= {"id": 1, "added_unix": 1.0}
    create_v1(
        db_url,
        [old],
        [
            {
                "run": 1,
                "metric": "ttft_ms.p99",
                "tier": "",
                "key_label": "",
                "endpoint": "",
                "stream": "",
                "value": 123.0,
            }
        ],
    )
    with open_store(db_url) as store:
        assert store.migrated_from == 1
        (run,) = store.runs()
        assert run.run_id == "nightly-000" and run.complete is None and run.git_branch is None
        assert store.metric_values([1], ["ttft_ms.p99"]) == {"ttft_ms.p99": {1: 123.0}}
        assert store.add(item) == (1, False)  # the old run is still the same run
        new = read_run_dir(
            write_night(tmp_path, 1, Night(completeness={"complete": False})),
            Identity("abc", "main", (("env", "ci"),)),
        )
        rid, added = store.add(new)
        assert added and store.tags_of([rid]) == {rid: {"env": "ci"}}
        assert store.runs()[-1].complete is False
        with store.engine.connect() as conn:
            version = conn.execute(sa.select(meta_table.c.value)).scalar()
        assert version == str(SCHEMA_VERSION)


def test_a_database_from_a_newer_loadkit_is_refused(db_url):
    with open_store(db_url) as store, store.engine.begin() as conn:
        conn.execute(sa.update(meta_table).values(value=str(SCHEMA_VERSION + 1)))
    with pytest.raises(StoreError, match=f"schema v{SCHEMA_VERSION + 1}.*upgrade loadkit"):
        open_store(db_url)


def test_database_urls():
    assert database_url("h.db").render_as_string() == "sqlite:///h.db"
    assert database_url("postgresql://u@db/x").drivername == "postgresql+psycopg"
    assert database_url("sqlite:////tmp/x.db").database == "/tmp/x.db"


def test_errors_never_show_the_password():
    # nothing listens on port 1: the connection is refused at once
    with pytest.raises(StoreError) as info:
        open_store("postgresql://bob:s3cret-pw@127.0.0.1:1/history")
    assert "s3cret-pw" not in str(info.value)
    assert "bob:***@127.0.0.1:1" in str(info.value)


def test_sqlite_file_in_a_missing_folder_is_named(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(str(tmp_path / "nope" / "h.db"))
