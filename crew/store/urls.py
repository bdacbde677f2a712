"""DATABASE_URL read without SQLAlchemy, for the read path.

`crew runs list` and friends must not import SQLAlchemy to learn which file or server to
read. This understands the two plain shapes crew documents (`sqlite+aiosqlite:///PATH`
and `postgresql+asyncpg://USER[:PASSWORD]@HOST[:PORT]/NAME[?ARGS]`); for anything else
`parse` returns None and the caller takes the full path (crew.store.database), which
gives the usual messages for a URL it does not accept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

SQLITE_PREFIX = "sqlite+aiosqlite:///"
POSTGRES_PREFIX = "postgresql+asyncpg://"
PG_CONNECT_TIMEOUT_S = 10
"""As for the async engine: fail fast when the server is down."""


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """Where the database is: a SQLite file, or a PostgreSQL server (asyncpg's DSN)."""

    dialect: str
    display: str
    """The URL with its password hidden, for messages (as SQLAlchemy renders it)."""
    sqlite_path: str | None = None
    dsn: str | None = None
    connect_args: dict[str, str] = field(default_factory=dict)


def parse(url: str) -> DatabaseTarget | None:
    """The target of a plain SQLite-file or PostgreSQL URL; None for any other URL."""
    if url.startswith(SQLITE_PREFIX):
        path = url[len(SQLITE_PREFIX) :]
        if not path or path == ":memory:" or "?" in path or path.startswith("file:"):
            return None
        return DatabaseTarget("sqlite", url, sqlite_path=path)
    if url.startswith(POSTGRES_PREFIX):
        rest = url[len(POSTGRES_PREFIX) :]
        rest, _, query = rest.partition("?")
        netloc, slash, database = rest.partition("/")
        if not slash or not database or not netloc or "/" in database:
            return None
        shown = netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                shown = f"{userinfo.split(':', 1)[0]}:***@{host}"
        display = f"{POSTGRES_PREFIX}{shown}/{database}" + (f"?{query}" if query else "")
        return DatabaseTarget(
            "postgresql",
            display,
            dsn=f"postgresql://{rest}",
            connect_args=dict(parse_qsl(query)),
        )
    return None
