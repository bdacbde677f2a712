"""Alembic, driven from code: no alembic.ini, works from a checkout and from a wheel.

The migration scripts live in the top-level `migrations/` folder of the source tree and
are shipped inside the wheel as `crew/migrations`; `migrations_dir()` finds either.
These functions are synchronous (they are called from `crew db ...`); inside a running
event loop use `upgrade_connection` through `AsyncConnection.run_sync`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import pool
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError

from crew.domain.errors import ConfigError, CrewError, InvalidInputError

T = TypeVar("T")
_URL_VARS = "ALEMBIC_DATABASE_URL / DATABASE_URL"
_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # .../crew


def migrations_dir() -> Path:
    """`<package>/migrations` when installed, `<repo>/migrations` in a source checkout."""
    for candidate in (_PACKAGE_DIR / "migrations", _PACKAGE_DIR.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise CrewError(
        "the migrations folder is missing: looked in "
        f"{_PACKAGE_DIR / 'migrations'} and {_PACKAGE_DIR.parent / 'migrations'}"
    )


def make_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic Config built in code; env.py reads `url`/`connection` from attributes.

    The URL goes through `attributes`, not `sqlalchemy.url`, because the ini-style
    option would treat a `%` in an encoded password as interpolation syntax.
    """
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["url"] = url
    config.attributes["connection"] = connection
    return config


def run_with_connection(url: str, fn: Callable[[Connection], T]) -> T:
    """Call `fn` with a synchronous Connection for an async or a sync database URL.

    Async URLs go through crew's own engine so SQLite gets the same pragmas and folder
    creation as the application; `fn` then runs in SQLAlchemy's greenlet bridge.
    """
    if _parse(url).get_dialect().is_async:
        return asyncio.run(_run_async(url, fn))
    try:
        engine = create_sync_engine(url, poolclass=pool.NullPool)
    except ImportError as error:
        raise ConfigError(
            f"{_URL_VARS}: the driver for {url.split(':')[0]!r} is not installed ({error.name})"
        ) from None
    try:
        with engine.connect() as connection:
            return fn(connection)
    finally:
        engine.dispose()


def _parse(url: str) -> URL:
    """Sync URLs are accepted here (ALEMBIC_DATABASE_URL) but only for crew's two backends."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{_URL_VARS}: {url!r} is not a database URL") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"{_URL_VARS}: scheme {parsed.drivername!r} is not supported: use a sqlite or "
            "postgresql URL (sqlite+aiosqlite://, postgresql+asyncpg://, or a sync driver)"
        )
    return parsed


async def _run_async(url: str, fn: Callable[[Connection], T]) -> T:
    from crew.store.engines import create_engine
    from crew.store.errors import unavailable_on_failure

    engine = create_engine(url)
    try:
        with unavailable_on_failure(
            engine.url.render_as_string(hide_password=True), connecting=True
        ):
            connection = await engine.connect()
        try:
            return await connection.run_sync(fn)
        finally:
            await connection.close()
    finally:
        await engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(make_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(make_config(url), revision)


def upgrade_connection(connection: Connection, revision: str = "head") -> None:
    """Upgrade on a connection the caller already holds (for `run_sync`)."""
    command.upgrade(make_config(connection=connection), revision)


def current(url: str) -> str | None:
    """The revision the database is at; None for an empty database."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    return run_with_connection(url, read)


def head() -> str:
    """The newest revision among the migration scripts."""
    found = ScriptDirectory.from_config(make_config()).get_current_head()
    if found is None:
        raise CrewError(f"no migration scripts in {migrations_dir()}")
    return found


def revision(message: str, autogenerate: bool = False, url: str | None = None) -> Path:
    """Write a new revision file into the source tree's migrations/versions.

    Revision ids continue the numbering (0001, 0002, ...) so the history reads in order.
    Autogenerate compares the models with the database at `url`, which must be at head.
    """
    source = _PACKAGE_DIR.parent / "migrations"
    if migrations_dir() != source:
        raise InvalidInputError("`crew db revision` needs a source checkout of crew")
    if autogenerate and url is None:
        raise InvalidInputError("--autogenerate needs a database to compare with")
    current_head = head()
    rev_id = f"{int(current_head) + 1:04d}" if re.fullmatch(r"\d+", current_head) else None
    script: Any = command.revision(
        make_config(url), message=message, autogenerate=autogenerate, rev_id=rev_id
    )
    return Path(script.path)
