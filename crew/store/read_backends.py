"""Where reads execute: stdlib SQLite reader threads, or asyncpg on PostgreSQL.

See crew/store/reads.py for why. Each backend takes a list of queries (SQL with `:name`
parameters, plus an optional row decoder) and runs them in one read transaction, and
reads the schema revision (`alembic_version`) directly. Nothing here imports
SQLAlchemy: the read commands (`crew runs`, `crew events tail`) load this module.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from crew.domain.errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from crew.store.urls import DatabaseTarget

Decode = Callable[[dict[str, Any]], Any]
Query = tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], Decode]
Rows = list[Any]
CACHED_RESULTS = 256
"""Decoded results kept per SQLite reader connection, until the database changes."""
SQLITE_READERS = 4
"""Threads (each with its own connection) serving SQLite reads."""
PG_READERS = 10
"""Connections in the PostgreSQL read pool of a server (a command uses one)."""
PG_DECODED_ROWS = 4096
"""Decoded rows kept by the PostgreSQL backend, keyed by their raw values."""


def first_line(error: BaseException) -> str:
    """A driver's message, first line only (its class name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class ReadBackend:
    dialect: str = ""

    async def batch(self, queries: Sequence[Query]) -> list[Rows]:
        """Run the queries in one read transaction; one list of row dicts per query."""
        raise NotImplementedError

    async def schema_revision(self) -> str | None:
        """The `alembic_version` row; None without that table or with not exactly one row."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SqliteBackend(ReadBackend):
    dialect = "sqlite"

    def __init__(self, path: str, where: str, readers: int = SQLITE_READERS) -> None:
        self._path = path
        self._where = where
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._executor = ThreadPoolExecutor(readers, thread_name_prefix="crew-read")

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
                f"database unavailable ({self._where}): {first_line(error)}"
            ) from error

    def _revision(self) -> str | None:
        try:
            conn = self._connection()
            found = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            ).fetchone()
            if found is None:
                return None
            versions = [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]
        except sqlite3.Error as error:
            raise DatabaseUnavailableError(
                f"cannot connect to the database ({self._where}): {first_line(error)}"
            ) from error
        return str(versions[0]) if len(versions) == 1 else None

    async def batch(self, queries: Sequence[Query]) -> list[Rows]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, queries)

    async def schema_revision(self) -> str | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._revision)

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._guard:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """`:name` parameters as PostgreSQL's `$1, $2, ...`, and the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PARAMETER.sub(number, sql), tuple(names)


class PostgresBackend(ReadBackend):
    """asyncpg directly: a small pool, every statement prepared once per connection.

    asyncpg keeps a statement cache per connection, so after the first use a query is a
    bind and an execute of a prepared statement; rows arrive with timestamps and
    booleans already typed, and only JSON text is left to decode. A batch of several
    queries runs in one REPEATABLE READ READ ONLY transaction (one snapshot, so a page
    and its total agree); a single query needs none. Decoding (JSON text, records) cost
    more than the queries, so decoded rows are kept keyed by their raw values: a row
    read again exactly as before is not decoded again, and any change to it is a new key.

    Like the SQLite backend's `PRAGMA data_version`, a batch first reads the server's
    current snapshot (`pg_current_snapshot()`: the transactions in progress and the next
    id). Two equal snapshots mean no transaction committed between them, so results
    read since the first are still exact and are answered again without running the
    queries: one trivial round trip instead of the SQL. Any commit anywhere on the
    server changes the snapshot, which only ever costs a miss.
    """

    dialect = "postgresql"

    def __init__(self, target: DatabaseTarget, max_connections: int = PG_READERS) -> None:
        assert target.dsn is not None
        self._target = target
        self._where = target.display
        self._max = max_connections
        self._pool: Any = None
        self._opening: asyncio.Lock | None = None
        self._sql: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._decoded: dict[tuple[Any, ...], Any] = {}
        self._snapshot: str | None = None
        self._probe: asyncio.Future[str] | None = None
        self._next_probe: asyncio.Future[str] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._results: dict[tuple[Any, ...], Rows] = {}

    async def _connected(self) -> Any:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                import asyncpg

                from crew.store.urls import PG_CONNECT_TIMEOUT_S

                try:
                    self._pool = await asyncpg.create_pool(
                        self._target.dsn,
                        min_size=1,
                        max_size=self._max,
                        timeout=PG_CONNECT_TIMEOUT_S,
                        **self._target.connect_args,
                    )
                except (OSError, TimeoutError) as error:
                    raise DatabaseUnavailableError(
                        f"cannot connect to the database ({self._where}): {first_line(error)}"
                    ) from error
                except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                    raise DatabaseUnavailableError(
                        f"database unavailable ({self._where}): {first_line(error)}"
                    ) from error
        return self._pool

    async def _fetch(self, conn: Any, query: Query) -> Rows:
        sql, params = query[0], query[1]
        prepared = self._sql.get(sql)
        if prepared is None:
            prepared = self._sql[sql] = numbered(sql)
        text, names = prepared
        records = await conn.fetch(text, *(params[name] for name in names))
        if len(query) == 2:
            return [dict(record) for record in records]
        decode = query[2]
        decoded = self._decoded
        rows: Rows = []
        for record in records:
            key = (decode, *record.values())
            row = decoded.get(key)
            if row is None:
                row = decode(dict(record))
                if len(decoded) >= PG_DECODED_ROWS:
                    decoded.clear()
                decoded[key] = row
            rows.append(row)
        return rows

    async def _guarded(self, work: Callable[[Any], Any]) -> Any:
        import asyncpg

        pool = await self._connected()
        try:
            async with pool.acquire() as conn:
                return await work(conn)
        except (
            OSError,
            TimeoutError,
            asyncpg.InterfaceError,
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.exceptions.OperatorInterventionError,
        ) as error:
            raise DatabaseUnavailableError(
                f"database unavailable ({self._where}): {first_line(error)}"
            ) from error

    async def batch(self, queries: Sequence[Query]) -> list[Rows]:
        snapshot = await self._current_snapshot()
        if snapshot != self._snapshot:
            self._snapshot, self._results = snapshot, {}
        results = self._results
        keys = [(query[0], tuple(query[1].items())) for query in queries]
        known = [results.get(key) for key in keys]
        if all(rows is not None for rows in known):
            return known  # type: ignore[return-value]

        async def work(conn: Any) -> list[Rows]:
            if len(queries) == 1:
                return [await self._fetch(conn, queries[0])]
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return [await self._fetch(conn, query) for query in queries]

        fresh: list[Rows] = await self._guarded(work)
        if self._results is results:  # no newer snapshot was seen meanwhile
            for key, rows in zip(keys, fresh, strict=True):
                if len(results) >= CACHED_RESULTS:
                    results.pop(next(iter(results)))
                results[key] = rows
        return fresh

    async def _current_snapshot(self) -> str:
        """The server's snapshot as read by a probe that started after this call.

        Concurrent callers share probes: while one is in flight, later callers wait for
        the next one (the one in flight may have started before a commit they must
        see), which starts as soon as it returns. Under load this is one probe per
        round trip, not one per request.
        """
        loop = asyncio.get_running_loop()
        if self._probe is None:
            self._probe = loop.create_future()
            self._probe_task = loop.create_task(self._run_probes())
            waiting = self._probe
        else:
            if self._next_probe is None:
                self._next_probe = loop.create_future()
            waiting = self._next_probe
        snapshot: str = await asyncio.shield(waiting)
        return snapshot

    async def _run_probes(self) -> None:
        while self._probe is not None:
            probe = self._probe
            try:
                value = await self._guarded(
                    lambda conn: conn.fetchval("SELECT pg_current_snapshot()::text")
                )
            except asyncio.CancelledError:
                for waiting in (probe, self._next_probe):
                    if waiting is not None:
                        waiting.cancel()
                self._probe = self._next_probe = None
                raise
            except Exception as error:
                if not probe.done():
                    probe.set_exception(error)
                    probe.exception()  # retrieved: a caller gone meanwhile logs nothing
            else:
                if not probe.done():
                    probe.set_result(str(value))
            self._probe, self._next_probe = self._next_probe, None

    async def schema_revision(self) -> str | None:
        import asyncpg

        async def work(conn: Any) -> str | None:
            try:
                rows = await conn.fetch("SELECT version_num FROM alembic_version")
            except asyncpg.UndefinedTableError:
                return None
            return str(rows[0][0]) if len(rows) == 1 else None

        revision: str | None = await self._guarded(work)
        return revision

    async def close(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


class EngineBackend(ReadBackend):
    """The async engine, for the URLs the two backends above do not take (in-memory
    SQLite, unusual query strings): SQLAlchemy runs the same SQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        from crew.store.engines import display_url

        self._engine = engine
        self.dialect = engine.dialect.name
        self._where = display_url(engine.url)
        self._statements: dict[str, Any] = {}

    async def batch(self, queries: Sequence[Query]) -> list[Rows]:
        from sqlalchemy import text

        from crew.store.errors import unavailable_on_failure

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

    async def schema_revision(self) -> str | None:
        from crew.store.database import schema_revision
        from crew.store.errors import unavailable_on_failure

        with unavailable_on_failure(self._where, connecting=True):
            async with self._engine.connect() as conn:
                return await schema_revision(conn)

    async def close(self) -> None:
        """The engine belongs to whoever created the repository; nothing to release here."""
