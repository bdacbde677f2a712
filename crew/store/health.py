"""The database's health, as `crew doctor` reports it: reachable, and at the schema this
crew needs (a fresh SQLite file is fine, it is created and migrated on first use).

It reads on the read path (crew/store/reads.py): the driver and `alembic_version`, no
SQLAlchemy, for the two URL shapes that path takes; any other URL goes through the engine.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from crew.domain.errors import CrewError
from crew.store import SCHEMA_HEAD
from crew.store.reads import ReadStore
from crew.store.urls import parse


@dataclass(frozen=True, slots=True)
class DatabaseHealth:
    ok: bool
    where: str
    """The database URL without its password (or the setting's name)."""
    detail: str


async def check_database(database_url: str, *, timeout_s: float) -> DatabaseHealth:
    """Reachable, and at the schema this crew needs (a fresh SQLite file is fine).

    Read on the read path (crew/store/reads.py): the driver and `alembic_version`, no
    SQLAlchemy, for the two URL shapes it takes; any other URL goes through the engine.
    """
    target = parse(database_url)
    if target is None:
        found = await _engine_revision(database_url, timeout_s)
        if isinstance(found, DatabaseHealth):
            return found
        where, sqlite, revision = found
    else:
        where, sqlite = target.display, target.sqlite_path is not None
        if target.sqlite_path is not None and not Path(target.sqlite_path).exists():
            return DatabaseHealth(True, where, "not created yet: created and migrated on first use")
        store = ReadStore.open(database_url, connections=1)
        try:
            async with asyncio.timeout(timeout_s):
                revision = await store.schema_revision()
        except TimeoutError:
            return DatabaseHealth(False, where, "the database did not answer in time")
        except CrewError as error:
            return DatabaseHealth(False, where, error.message)
        finally:
            await store.close()
    if revision == SCHEMA_HEAD:
        return DatabaseHealth(True, where, f"schema at {revision} (current)")
    state = "empty" if revision is None else f"schema at {revision}"
    if sqlite:
        return DatabaseHealth(
            True,
            where,
            f"{state}; this crew needs {SCHEMA_HEAD}: upgraded automatically on first use",
        )
    return DatabaseHealth(
        False, where, f"{state}; this crew needs {SCHEMA_HEAD}: run `crew db upgrade`"
    )


async def _engine_revision(
    database_url: str, timeout_s: float
) -> DatabaseHealth | tuple[str, bool, str | None]:
    """(where, is SQLite, revision) through the async engine, or the failed health.

    Imported here: SQLAlchemy costs a read command more than the whole check."""
    from crew.store.database import schema_revision
    from crew.store.engines import SQLITE, create_engine, display_url, parse_url, sqlite_file
    from crew.store.errors import unavailable_on_failure

    try:
        parsed = parse_url(database_url)
    except CrewError as error:
        return DatabaseHealth(False, "DATABASE_URL", error.message)
    where = display_url(parsed)
    sqlite = parsed.drivername == SQLITE
    if sqlite:
        path = sqlite_file(parsed)
        if path is not None and not path.exists():
            return DatabaseHealth(True, where, "not created yet: created and migrated on first use")
    engine = create_engine(database_url)
    try:
        with unavailable_on_failure(where, connecting=True):
            async with asyncio.timeout(timeout_s), engine.connect() as connection:
                revision = await schema_revision(connection)
    except TimeoutError:
        return DatabaseHealth(False, where, "the database did not answer in time")
    except CrewError as error:
        return DatabaseHealth(False, where, error.message)
    finally:
        await engine.dispose()
    return where, sqlite, revision
