"""Persistence: the tables, the queries, the engines and the migrations.

Where the SQL is (every query crew runs lives in this package, and only here):

- `repository.py`: the writes of runs, nodes, artifacts and events, and idempotency
  keys; `Repository` runs each call in its own transaction, `batch()` several in one.
- `lookups.py`: the reads by id and key the engine and the writing commands make on the
  repository's connection (a run, its nodes, its artifacts, events after a cursor).
- `leases.py`: who executes which run: claims (`SKIP LOCKED` / compare-and-set),
  renewals, releases, the fencing and event-order locks, budget reservations, the
  workers registry, the NOTIFY of a queued run.
- `bulk.py` and `sync_writer.py`: the engine's group commits, buffered into few
  statements (`sync_writer.py` sends them straight to SQLite's driver in one thread).
- `statements.py`: statement pieces both writers share.
- `reads.py`, `read_sql.py`, `read_backends.py`: the one read path of the read commands
  (`crew runs`, `crew events tail`, `crew doctor`) and the API: plain SQL on stdlib
  `sqlite3` or asyncpg, no SQLAlchemy.
- `retention.py`: what `crew gc` and `DELETE /runs/{id}` delete.
- `models.py` (the tables), `records.py` (what queries return), `types.py` (columns).
- `engines.py`, `urls.py`, `database.py` (open and check the schema), `migrate.py`
  (Alembic), `notify.py` (LISTEN), `file_guard.py`, `errors.py`.

This package's `__init__` stays import-free on purpose: commands that never touch the
database (`crew --help`, `crew plan`) must not pay for SQLAlchemy. Import the submodules
(`crew.store.database`, `crew.store.repository`, ...) where they are used.
"""

from __future__ import annotations

# The Alembic revision the code's models correspond to. Opening a repository compares it
# with the `alembic_version` row so a normal command never has to load Alembic's script
# directory; a test keeps it equal to the real head of migrations/versions.
SCHEMA_HEAD = "0003"
