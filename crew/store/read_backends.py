"""Where the API's reads execute: stdlib SQLite reader threads, or the async engine.

See crew/store/reads.py for why. Both take a list of queries (SQL with `:name`
parameters, plus an optional row decoder) and run them in one read transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from crew.domain.errors import DatabaseUnavailableError
from crew.store.database import display_url
from crew.store.errors import reason, unavailable_on_failure

Decode = Callable[[dict[str, Any]], Any]
Query = tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], Decode]
Rows = list[Any]
CACHED_RESULTS = 256
"""Decoded results kept per SQLite reader connection, until the database changes."""
SQLITE_READERS = 4
"""Threads (each with its own connection) serving SQLite reads."""


class ReadBackend:
    dialect: str = ""

    async def batch(self, queries: Sequence[Query]) -> list[Rows]:
        """Run the queries in one read transaction; one list of row dicts per query."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SqliteBackend(ReadBackend):
    dialect = "sqlite"

    def __init__(self, path: str, where: str) -> None:
        self._path = path
        self._where = where
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._executor = ThreadPoolExecutor(SQLITE_READERS, thread_name_prefix="crew-read")

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            self._local.cache = {}
            self._local.version = None
            with self._guard:
                self._connections.append(conn)
        return conn

    def _run(self, queries: Sequence[Query]) -> list[Rows]:
        """Run (or answer from this connection's cache) every query in one transaction.

        `PRAGMA data_version` changes when any other connection commits, so decoded
        results are reused only while the database is exactly as they were read.
        """
        try:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                cache: dict[Any, Rows] = self._local.cache
                if self._local.version != version:
                    cache.clear()
                    self._local.version = version
                results = []
                for query in queries:
                    sql, params = query[0], query[1]
                    key = (sql, tuple(params.items()))
                    rows = cache.get(key)
                    if rows is None:
                        cursor = conn.execute(sql, dict(params))
                        names = [d[0] for d in cursor.description]
                        decode = query[2] if len(query) > 2 else None
                        rows = [dict(zip(names, row, strict=True)) for row in cursor]
                        if decode is not None:
                            rows = [decode(row) for row in rows]
                        if len(cache) >= CACHED_RESULTS:
                            cache.pop(next(iter(cache)))
                        cache[key] = rows
                    results.append(rows)
                return results
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as error:
            raise DatabaseUnavailableError(
                f"database unavailable ({self._where}): {reason(error)}"
            ) from error

    async def batch(self, queries: Sequence[Query]) -> list[Rows]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, queries)

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._guard:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


class EngineBackend(ReadBackend):
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.dialect = engine.dialect.name
        self._where = display_url(engine.url)
        self._statements: dict[str, Any] = {}

    async def batch(self, queries: Sequence[Query]) -> list[Rows]:
        results = []
        with unavailable_on_failure(self._where):
            async with self._engine.connect() as conn:
                for query in queries:
                    sql, params = query[0], query[1]
                    statement = self._statements.get(sql)
                    if statement is None:
                        statement = self._statements[sql] = text(sql)
                    result = await conn.execute(statement, dict(params))
                    rows: Rows = [dict(row) for row in result.mappings()]
                    if len(query) > 2:
                        decode = query[2]
                        rows = [decode(row) for row in rows]
                    results.append(rows)
        return results

    async def close(self) -> None:
        """The engine belongs to whoever created the repository; nothing to release here."""
