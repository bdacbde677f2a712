"""Listening for queued runs on PostgreSQL (LISTEN/NOTIFY), so idle workers wake at once.

A worker polls anyway (that is how it finds runs whose owner died); the notification
only cuts the wait for a newly queued or released run from the polling interval to a
few milliseconds. One dedicated connection per worker process; if it drops, the worker
logs it and keeps polling.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.engine import make_url

from crew.store.leases import RUNS_QUEUED_CHANNEL

log = logging.getLogger("crew.worker")


@asynccontextmanager
async def listen_for_queued_runs(
    database_url: str, on_queued: Callable[[str], None]
) -> AsyncIterator[bool]:
    """Call `on_queued(run_id)` for every run queued anywhere; yields whether listening
    works (False on SQLite, or when the connection could not be made)."""
    url = make_url(database_url)
    if not url.drivername.startswith("postgresql"):
        yield False
        return
    import asyncpg

    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        connection = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError) as error:
        log.warning("cannot LISTEN for queued runs (%s); polling only", error)
        yield False
        return

    def deliver(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
        on_queued(payload)

    try:
        await connection.add_listener(RUNS_QUEUED_CHANNEL, deliver)
        yield True
    finally:
        try:
            await connection.close(timeout=5)
        except Exception:  # closing a broken connection must not hide the real error
            log.debug("closing the LISTEN connection failed", exc_info=True)
