"""Engines for the two supported backends and the schema check done on open.

SQLite is the zero-setup default, so it is migrated automatically on first use;
PostgreSQL is shared by several processes and is only migrated on purpose
(`crew db upgrade`), so a stale schema there is an error, never a silent upgrade.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from crew.domain.errors import ConfigError, DatabaseUnavailableError, MigrationRequiredError
from crew.store import SCHEMA_HEAD
from crew.store.errors import reason, unavailable_on_failure
from crew.store.repository import Repository

if TYPE_CHECKING:
    from crew.settings import Settings
    from crew.store.sync_writer import SyncWriter

SQLITE = "sqlite+aiosqlite"
POSTGRES = "postgresql+asyncpg"
ACCEPTED_SCHEMES = (SQLITE, POSTGRES)
# Fail fast when the server is down instead of the driver's one-minute default.
PG_CONNECT_TIMEOUT_S = 10


def parse_url(url: str) -> URL:
    """Parse DATABASE_URL and check it names a supported async driver."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"DATABASE_URL {url!r} is not a database URL: expected "
            + " or ".join(f"{scheme}://..." for scheme in ACCEPTED_SCHEMES)
        ) from None
    if parsed.drivername not in ACCEPTED_SCHEMES:
        raise ConfigError(
            f"DATABASE_URL scheme {parsed.drivername!r} is not supported: use "
            + " or ".join(f"{scheme}://" for scheme in ACCEPTED_SCHEMES)
        )
    return parsed


def display_url(url: str | URL) -> str:
    """The URL with its password hidden, for messages and logs."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def sqlite_file(parsed: URL) -> Path | None:
    """The file behind a SQLite URL; None for an in-memory database."""
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def create_engine(url: str) -> AsyncEngine:
    """An async engine for `sqlite+aiosqlite` or `postgresql+asyncpg` (ConfigError otherwise)."""
    parsed = parse_url(url)
    if parsed.drivername == SQLITE:
        path = sqlite_file(parsed)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise DatabaseUnavailableError(
                    f"cannot create the folder of the SQLite database {path}: {error.strerror}"
                ) from error
        engine = create_async_engine(parsed)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        parsed, pool_pre_ping=True, connect_args={"timeout": PG_CONNECT_TIMEOUT_S}
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection settings SQLite does not remember (except WAL, which is harmless).

    WAL lets readers (`crew events tail`, the API) run while the engine writes;
    busy_timeout makes a writer wait for the lock instead of failing at once; foreign
    keys are off by default in SQLite and cascades depend on them; NORMAL sync is safe
    with WAL and much faster than FULL.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


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

    return SyncWriter(engine.url, _sqlite_pragmas)
