"""Nightly history: analysed runs in a database (SQLite or PostgreSQL), their trends, and a
regression gate built on change point detection (``loadkit history add|report|show|check``).

Modules: ``ingest`` (summary.json/run.json -> rows), ``store`` (schema, migrations, writes,
queries), ``changepoints`` (e-divisive means), ``trends`` (series, directions, verdict
lines), ``gate`` (the check), ``charts`` and ``report`` (HTML, PNG, text), ``identity``
(commit, branch, tags), ``cli``. Nothing here is imported by ``loadkit --help``."""
