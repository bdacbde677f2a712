"""Alembic environment for crew, driven by crew.store.migrate (no alembic.ini).

The database comes, in order, from: a connection handed over by the caller
(`config.attributes["connection"]`), a URL handed over (`attributes["url"]`),
`sqlalchemy.url` in an ini file, then ALEMBIC_DATABASE_URL / DATABASE_URL. Async URLs
(sqlite+aiosqlite, postgresql+asyncpg) and sync ones both work.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from alembic import context
from sqlalchemy.engine import Connection

from crew.store.migrate import run_with_connection
from crew.store.models import metadata
from crew.store.types import UTCDateTime

config = context.config
target_metadata = metadata


def _url() -> str:
    url = (
        config.attributes.get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("ALEMBIC_DATABASE_URL")
        or os.environ.get("DATABASE_URL")
    )
    if not url:
        raise RuntimeError("no database URL given to the migrations")
    return str(url)


def _render_item(type_: str, obj: Any, _autogen_context: Any) -> str | Literal[False]:
    """Write crew's UTCDateTime as plain DateTime(timezone=True) in new revisions.

    Revisions must not import application code: it changes, and old revisions must
    keep meaning what they meant.
    """
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )


def do_run_migrations(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode drops and recreates tables; with foreign keys on, dropping `runs`
        # would cascade-delete every node, artifact and event. Off for the migration.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    try:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        # A connection that was already in a transaction is left to its owner by
        # Alembic: commit here so the caller's connection is not left holding one.
        if connection.in_transaction():
            connection.commit()
    finally:
        if sqlite:
            # The pragma is ignored inside a transaction: end a failed one first.
            if connection.in_transaction():
                connection.rollback()
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        run_with_connection(_url(), do_run_migrations)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
