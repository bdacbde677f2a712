"""Engines for the two supported backends: URL checks, connection settings, creation.

Below crew/store/database.py (which opens a repository and checks the schema) and
crew/store/migrate.py (which runs Alembic), so both use it without importing each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from crew.domain.errors import ConfigError, DatabaseUnavailableError

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
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        return engine
    return create_async_engine(
        parsed, pool_pre_ping=True, connect_args={"timeout": PG_CONNECT_TIMEOUT_S}
    )


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
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
