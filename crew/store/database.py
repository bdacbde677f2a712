"""Opening the database: the schema check done on open, and the repository.

SQLite is the zero-setup default, so it is migrated automatically on first use;
PostgreSQL is shared by several processes and is only migrated on purpose
(`crew db upgrade`), so a stale schema there is an error, never a silent upgrade.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crew.domain.errors import MigrationRequiredError
from crew.store import SCHEMA_HEAD
from crew.store.engines import (
    ACCEPTED_SCHEMES,
    POSTGRES,
    SQLITE,
    create_engine,
    display_url,
    parse_url,
    sqlite_file,
    sqlite_pragmas,
)
from crew.store.errors import reason, unavailable_on_failure
from crew.store.repository import Repository

if TYPE_CHECKING:
    from crew.settings import Settings
    from crew.store.sync_writer import SyncWriter

__all__ = [
    "ACCEPTED_SCHEMES",
    "POSTGRES",
    "SQLITE",
    "create_engine",
    "display_url",
    "ensure_schema",
    "open_repository",
    "parse_url",
    "schema_revision",
    "sqlite_file",
]


async def schema_revision(connection: AsyncConnection) -> str | None:
    """The `alembic_version` row, read directly so Alembic is not imported for it."""

    def has_version_table(sync_connection: Any) -> bool:
        return bool(inspect(sync_connection).has_table("alembic_version"))

    if not await connection.run_sync(has_version_table):
        return None
    result = await connection.execute(text("SELECT version_num FROM alembic_version"))
    versions = [row[0] for row in result]
    return versions[0] if len(versions) == 1 else None


async def ensure_schema(engine: AsyncEngine) -> None:
    """Make sure the schema is at SCHEMA_HEAD: upgrade SQLite, refuse a stale PostgreSQL."""
    where = display_url(engine.url)
    with unavailable_on_failure(where, connecting=True):
        async with engine.connect() as connection:
            current = await schema_revision(connection)
    if current == SCHEMA_HEAD:
        return
    if engine.dialect.name != "sqlite":
        state = "has no crew schema" if current is None else f"is at revision {current}"
        raise MigrationRequiredError(
            f"the database {where} {state}, this crew needs {SCHEMA_HEAD}: run `crew db upgrade`"
        )
    await _upgrade_sqlite(engine, where)


async def _upgrade_sqlite(engine: AsyncEngine, where: str) -> None:
    from alembic.util.exc import CommandError

    from crew.store import migrate

    try:
        with unavailable_on_failure(where):
            async with engine.connect() as connection:
                await connection.run_sync(migrate.upgrade_connection, "head")
    except CommandError as error:
        raise MigrationRequiredError(
            f"cannot upgrade the SQLite database {where} ({reason(error)}); was it created by "
            "a newer crew? Run `crew db current` to see its revision."
        ) from error
    except Exception:
        # Two processes opening a fresh database race to create it; the loser's failure
        # is harmless if the winner got the schema to head.
        async with engine.connect() as connection:
            if await schema_revision(connection) == SCHEMA_HEAD:
                return
        raise


@asynccontextmanager
async def open_repository(settings: Settings) -> AsyncIterator[Repository]:
    """Open DATABASE_URL, make sure the schema is current, and yield the repository."""
    engine = create_engine(settings.database_url)
    writer = _sqlite_writer(engine)
    try:
        await ensure_schema(engine)
        yield Repository(engine, sync_writer=writer)
    finally:
        if writer is not None:
            writer.close()
        await engine.dispose()


def _sqlite_writer(engine: AsyncEngine) -> SyncWriter | None:
    """The group-commit writer for a SQLite file; None for other databases."""
    if engine.url.drivername != SQLITE or sqlite_file(engine.url) is None:
        return None
    from crew.store.sync_writer import SyncWriter

    return SyncWriter(engine.url, sqlite_pragmas)
