"""A dedicated thread with a synchronous SQLite connection, for group commits.

The async SQLite driver hops to its own thread for every statement; under load each
hop waits for the interpreter lock, and a group commit of a few statements can take
tens of milliseconds. Running the whole transaction as one function in one thread
costs a single hop. SQLite allows one writer at a time anyway, so one thread loses
nothing; WAL keeps readers on the async engine unaffected.

Inside that thread the statements skip SQLAlchemy's per-execution work (building,
caching and processing each statement's parameters row by row), which cost more
interpreter time than SQLite needs to store the rows, and that time is taken from the
event loop scheduling the nodes. Each statement shape is compiled once, by SQLAlchemy
with this dialect, together with the dialect's own value conversions; then only rows
go to the driver.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.dml import UpdateBase

from crew.store.bulk import EVENT_COLUMNS, consecutive_ids, insert_statement
from crew.store.leases import Fence
from crew.store.models import events_table

T = TypeVar("T")
Processor = Callable[[Any], Any] | None


class CompiledStatement:
    """SQL text, the order of its parameters, and how each parameter's value is converted."""

    def __init__(self, statement: UpdateBase, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        names = compiled.positiontup
        if names is None:  # pragma: no cover - SQLite's paramstyle is positional
            raise RuntimeError(f"{dialect.name} does not use positional parameters")
        self.sql = compiled.string
        self.names: tuple[str, ...] = tuple(names)
        self.processors: tuple[Processor, ...] = tuple(
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in self.names
        )

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        pairs = tuple(zip(self.names, self.processors, strict=True))
        return [
            tuple(row[name] if process is None else process(row[name]) for name, process in pairs)
            for row in rows
        ]


class DriverSender:
    """Sends a group's statements straight to the sqlite3 cursor (see bulk.Sender)."""

    def __init__(
        self,
        cursor: sqlite3.Cursor,
        dialect: Dialect,
        statements: dict[Hashable, CompiledStatement],
    ) -> None:
        self._cursor = cursor
        self._dialect = dialect
        self._statements = statements

    def send(
        self, key: Hashable, build: Callable[[], UpdateBase], rows: list[dict[str, Any]]
    ) -> None:
        compiled = self._statements.get(key)
        if compiled is None:
            compiled = self._statements[key] = CompiledStatement(build(), self._dialect)
        self._cursor.executemany(compiled.sql, compiled.parameters(rows))

    def holds(self, fence: Fence) -> bool:
        # BEGIN IMMEDIATE holds SQLite's only write lock: nobody can take the lease
        # between this check and the commit.
        row = self._cursor.execute(
            "SELECT 1 FROM runs WHERE id = ? AND owner = ? AND lease_generation = ?",
            (fence.run_id, fence.owner, fence.generation),
        ).fetchone()
        return row is not None

    def insert_events(self, rows: list[dict[str, Any]]) -> list[int]:
        self.send("events", lambda: insert_statement(events_table, EVENT_COLUMNS), rows)
        (last,) = self._cursor.execute("SELECT last_insert_rowid()").fetchone()
        return consecutive_ids(int(last), len(rows))


class SyncWriter:
    def __init__(self, url: URL, on_connect: Callable[[Any, Any], None]) -> None:
        sync_url = url.set(drivername="sqlite")
        self._engine = create_engine(sync_url, connect_args={"check_same_thread": False})
        event.listen(self._engine, "connect", on_connect)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="crew-sqlite-writer")
        self._connection: PoolProxiedConnection | None = None
        self._statements: dict[Hashable, CompiledStatement] = {}

    async def run(self, work: Callable[[DriverSender], T]) -> T:
        """Run `work(sender)` in one transaction on the writer thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._transaction, work
        )

    def _transaction(self, work: Callable[[DriverSender], T]) -> T:
        try:
            if self._connection is None:  # kept open: one writer, one connection
                self._connection = self._engine.raw_connection()
            driver = self._connection.driver_connection
            assert isinstance(driver, sqlite3.Connection)
            cursor = driver.cursor()
            # IMMEDIATE takes the write lock now, so the whole group commits or waits
            # here (busy_timeout), never half-way through.
            cursor.execute("BEGIN IMMEDIATE")
            try:
                result = work(DriverSender(cursor, self._engine.dialect, self._statements))
            except BaseException:
                driver.rollback()
                raise
            driver.commit()
            return result
        except sqlite3.Error as error:
            # The same exception types the SQLAlchemy path raises, for the same checks.
            raise exc.DBAPIError.instance("group commit", None, error, sqlite3.Error) from error

    def close(self) -> None:
        def disconnect() -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        self._thread.submit(disconnect).result()
        self._thread.shutdown(wait=True)
        self._engine.dispose()
