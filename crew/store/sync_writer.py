"""A dedicated thread with a synchronous SQLite connection, for group commits.

The async SQLite driver hops to its own thread for every statement; under load each
hop waits for the interpreter lock, and a group commit of a few statements can take
tens of milliseconds. Running the whole transaction as one function in one thread
costs a single hop. SQLite allows one writer at a time anyway, so one thread loses
nothing; WAL keeps readers on the async engine unaffected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import URL

T = TypeVar("T")


class SyncWriter:
    def __init__(self, url: URL, on_connect: Callable[[Any, Any], None]) -> None:
        sync_url = url.set(drivername="sqlite")
        self._engine = create_engine(sync_url, connect_args={"check_same_thread": False})
        event.listen(self._engine, "connect", on_connect)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="crew-sqlite-writer")

    async def run(self, work: Callable[[Connection, Any], T], argument: Any) -> T:
        """Run `work(connection, argument)` in one transaction on the writer thread."""

        def transaction() -> T:
            with self._engine.begin() as connection:
                return work(connection, argument)

        return await asyncio.get_running_loop().run_in_executor(self._thread, transaction)

    def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._engine.dispose()
