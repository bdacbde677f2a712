"""Shared fixtures: database URLs for SQLite (always) and PostgreSQL (when configured).

PostgreSQL tests run when CREW_TEST_DATABASE_URL names a database they may wipe: each
test starts from an empty `public` schema, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

PG_ENV = "CREW_TEST_DATABASE_URL"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A file database (not :memory:) so WAL, pragmas and several connections are real."""
    return f"sqlite+aiosqlite:///{tmp_path / 'crew.db'}"


def _reset_postgres(url: str) -> None:
    """Drop and recreate the public schema, from a thread with its own event loop.

    The thread keeps this sync fixture independent of whatever loop pytest-asyncio runs
    the test in.
    """
    import asyncpg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def reset() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute("DROP SCHEMA IF EXISTS public CASCADE")
            await connection.execute("CREATE SCHEMA public")
        finally:
            await connection.close()

    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(reset())
        except BaseException as error:  # reported in the test's thread below
            failure.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+asyncpg://...)")
    _reset_postgres(url)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs once per backend."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))
