"""The databases every history test runs on: a SQLite file, and a real PostgreSQL cluster
the tests start themselves (Debian's ``postgresql`` package: initdb and pg_ctl as an
unprivileged user, a unix socket in a private folder, no TCP port), skipped with the
reason only where the server is not installed or will not start."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_USER = "loadkit"
PG_PORT = 5433  # names the socket file only: the cluster listens on no TCP address
START_TIMEOUT_S = 60


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version(path: str) -> int:
    part = path.split("/")[4]
    return int(part) if part.isdigit() else 0


def _as_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as ``postgres`` (Debian's
    package creates that user) or ``nobody``."""
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"]
    pytest.skip("running as root and neither a postgres nor a nobody user exists")
    return []


class PgCluster:
    def __init__(self, root: Path, bin_dir: Path, wrap: list[str]) -> None:
        self.root, self.bin, self.wrap = root, bin_dir, wrap
        self.data, self.sock = root / "data", root

    def run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.wrap, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )

    def url(self, schema: str | None = None) -> str:
        url = f"postgresql://{PG_USER}@/postgres?host={self.sock}&port={PG_PORT}"
        # a schema of its own per test: as isolated as a new database, without copying a
        # template database each time (search_path puts loadkit's tables there)
        return url + (f"&options=-csearch_path%3D{schema}" if schema else "")

    def _execute(self, sql: str) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(
            self.url().replace("postgresql://", "postgresql+psycopg://"),
            isolation_level="AUTOCOMMIT",
            poolclass=sa.pool.NullPool,
        )
        with engine.connect() as conn:
            conn.exec_driver_sql(sql)
        engine.dispose()

    def create_schema(self) -> tuple[str, str]:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._execute(f"CREATE SCHEMA {name}")
        return name, self.url(name)

    def drop_schema(self, name: str) -> None:
        self._execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    bin_dir = _pg_bin()
    if bin_dir is None or not (bin_dir / "pg_ctl").exists():
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
    wrap = _as_user()
    root = Path(tempfile.mkdtemp(prefix="loadkit-pg-"))
    if wrap:
        user = wrap[2]
        os.chown(root, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    cluster = PgCluster(root, bin_dir, wrap)
    init = cluster.run(
        "initdb", "-D", str(cluster.data), "-A", "trust", "-U", PG_USER, "-E", "UTF8", "--no-sync"
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-400:]}")
    options = f"-k {root} -c listen_addresses='' -p {PG_PORT} -c fsync=off -c max_connections=50"
    start = cluster.run(
        "pg_ctl",
        "-D",
        str(cluster.data),
        "-l",
        str(root / "server.log"),
        "-w",
        "-t",
        str(START_TIMEOUT_S),
        "-o",
        options,
        "start",
    )
    if start.returncode != 0:
        log = (
            (root / "server.log").read_text(errors="replace")[-400:]
            if (root / "server.log").exists()
            else ""
        )
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[-300:]} {log}")
    try:
        yield cluster
    finally:
        cluster.run("pg_ctl", "-D", str(cluster.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty history database of each kind."""
    if request.param == "sqlite":
        yield str(tmp_path / "history.db")
        return
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    name, url = cluster.create_schema()
    yield url
    cluster.drop_schema(name)
