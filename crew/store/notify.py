"""Listening for queued runs on PostgreSQL (LISTEN/NOTIFY), so idle workers wake at once.

A worker polls anyway (that is how it finds runs whose owner died); the notification
only cuts the wait for a newly queued or released run from the polling interval to a
few milliseconds. One dedicated connection per worker process. When it cannot be made,
or drops later (the server restarted, a proxy closed an idle connection), the worker
logs it, keeps polling, and connects again in the background; once listening again it
looks for runs at once, for those queued while it was not listening.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

from sqlalchemy.engine import make_url

from crew.store.leases import RUNS_QUEUED_CHANNEL

log = logging.getLogger("crew.worker")

RECONNECT_DELAYS_S: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits between attempts to listen again; the last one repeats."""

CONNECT_TIMEOUT_S = 10.0


@asynccontextmanager
async def listen_for_queued_runs(
    database_url: str,
    on_queued: Callable[[str], None],
    *,
    reconnect_delays_s: Sequence[float] = RECONNECT_DELAYS_S,
) -> AsyncIterator[bool]:
    """Call `on_queued(run_id)` for every run queued anywhere; yields whether listening
    works now (False on SQLite, or when the first connection could not be made).

    `on_queued("")` means "look now": the connection is back after a gap.
    """
    url = make_url(database_url)
    if not url.drivername.startswith("postgresql"):
        yield False
        return
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    listener = _Listener(dsn, on_queued, tuple(reconnect_delays_s) or RECONNECT_DELAYS_S)
    listening = await listener.connect()
    if not listening:
        log.warning(
            "cannot LISTEN for queued runs (%s); polling, and trying again in the background",
            listener.last_error,
        )
    keeper = asyncio.create_task(listener.keep_listening(), name="crew-listen-queued")
    try:
        yield listening
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        await listener.close()


class _Listener:
    """The LISTEN connection, and connecting it again whenever it is lost."""

    def __init__(
        self, dsn: str, on_queued: Callable[[str], None], delays: tuple[float, ...]
    ) -> None:
        self._dsn = dsn
        self._on_queued = on_queued
        self._delays = delays
        self._connection: Any = None
        self._lost = asyncio.Event()
        self._closing = False
        self.last_error: BaseException | None = None

    async def connect(self) -> bool:
        import asyncpg

        connection: Any = None
        try:
            connection = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT_S)
            await connection.add_listener(RUNS_QUEUED_CHANNEL, self._deliver)
            connection.add_termination_listener(self._terminated)
        except (OSError, TimeoutError, asyncpg.PostgresError) as error:
            self.last_error = error
            if connection is not None:
                connection.terminate()
            self._lost.set()
            return False
        self._connection = connection
        return True

    def _deliver(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self._on_queued(payload)

    def _terminated(self, connection: Any) -> None:
        if self._closing or connection is not self._connection:
            return
        log.warning("the LISTEN connection for queued runs was lost; polling until it is back")
        self._connection = None
        self._lost.set()

    async def keep_listening(self) -> None:
        """Connect again whenever the connection is lost (backing off), then wake the
        worker: runs may have been queued while nobody was listening."""
        while True:
            await self._lost.wait()
            attempt = 0
            while True:
                self._lost.clear()
                await asyncio.sleep(self._delays[min(attempt, len(self._delays) - 1)])
                attempt += 1
                if await self.connect():
                    break
                log.debug("LISTEN for queued runs: attempt %d failed: %s", attempt, self.last_error)
            log.info("listening for queued runs again")
            self._on_queued("")

    async def close(self) -> None:
        self._closing = True
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            await connection.close(timeout=5)
        except Exception:  # closing a broken connection must not hide the real error
            log.debug("closing the LISTEN connection failed", exc_info=True)
            with suppress(Exception):
                connection.terminate()
