"""What the routes share: settings, the repository (writes, engine), the read store.

The database is opened in the app's lifespan. If it cannot be reached at startup the
server still starts (so `/health` can say so with a 503) and every request that needs
it retries the schema check, at most every few seconds, until it answers.

A SQLite file deleted or replaced under the running server is noticed by the same check
(crew.store.file_guard): from then on `/health` and every request that uses the
database answer 503, and the error is logged once, naming the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from crew.api.errors import ApiError
from crew.api.params import Fragments
from crew.api.ratelimit import TokenBuckets
from crew.api.runner import RunManager
from crew.domain.errors import DatabaseUnavailableError
from crew.observability.hooks import Hooks
from crew.settings import Settings
from crew.store.file_guard import DatabaseFileGoneError, SqliteFileGuard, guard_for
from crew.store.reads import ReadStore
from crew.store.repository import Repository

log = logging.getLogger("crew.api")

SCHEMA_RETRY_S = 2.0
DB_FILE_CHECK_S = 5.0
"""How often the SQLite file is checked when no request does it (so the error is logged
even on a server nobody is calling)."""


@dataclass
class ApiState:
    settings: Settings
    heartbeat_s: float = 15.0
    poll_s: float = 0.25
    repo: Repository | None = None
    reads: ReadStore | None = None
    runs: RunManager | None = None
    limiter: TokenBuckets | None = None
    shutting_down: asyncio.Event = field(default_factory=asyncio.Event)
    schema_ok: bool = False
    _schema_checked_at: float = 0.0
    idempotency_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    registry_factory: Any = None
    loop: asyncio.AbstractEventLoop | None = None
    fragments: Fragments = field(default_factory=Fragments)
    hooks: Hooks = field(default_factory=Hooks)
    db_file: SqliteFileGuard | None = None
    db_file_reported: bool = False
    _db_file_watch: asyncio.Task[None] | None = None

    async def open(self) -> None:
        from crew.store.database import create_engine

        self.loop = asyncio.get_running_loop()
        engine = create_engine(self.settings.database_url)
        self.db_file = guard_for(self.settings.database_url)
        self.repo = Repository(engine)
        self.reads = ReadStore.open(self.settings.database_url, engine)
        registry = self.registry_factory(self.settings) if self.registry_factory else None
        self.runs = RunManager(self.settings, self.repo, registry, hooks=self.hooks)
        self.limiter = TokenBuckets(
            self.settings.tasks_rate_per_min, self.settings.tasks_rate_burst
        )
        try:
            await self.ready()
        except DatabaseUnavailableError as error:
            log.warning("starting without the database (%s); /health reports it", error)
        # After the schema check (which creates a new SQLite database): the embedded
        # worker retries by itself while the database is unreachable.
        await self.runs.start_worker()
        if self.db_file is not None:
            self._db_file_watch = asyncio.create_task(
                self._watch_db_file(), name="crew-db-file-watch"
            )

    async def close(self) -> None:
        self.shutting_down.set()
        if self._db_file_watch is not None:
            self._db_file_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._db_file_watch
        if self.runs is not None:
            await self.runs.aclose()
        if self.reads is not None:
            await self.reads.close()
        if self.repo is not None:
            await self.repo.engine.dispose()
        if self.db_file is not None:
            self.db_file.close()

    def begin_shutdown(self) -> None:
        """SIGTERM: stop claiming runs (those in flight get WORKER_SHUTDOWN_GRACE_S, then go
        back to the queue for the next server or worker) and let streams close."""
        self.shutting_down.set()
        if self.runs is not None:
            self.runs.cancel_all()

    def begin_shutdown_threadsafe(self) -> None:
        """begin_shutdown from a signal handler: scheduled on the loop if one is running."""
        loop = self.loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self.begin_shutdown)

    async def ready(self) -> None:
        """Make sure the schema is there and the SQLite file is still the one opened;
        raises DatabaseUnavailableError (503) if not."""
        if self.schema_ok:
            self.check_db_file()
            return
        now = time.monotonic()
        if now - self._schema_checked_at < SCHEMA_RETRY_S and self._schema_checked_at:
            raise DatabaseUnavailableError("database unavailable")
        self._schema_checked_at = now
        from crew.store.database import ensure_schema

        assert self.repo is not None
        await ensure_schema(self.repo.engine)
        if self.db_file is not None:
            self.db_file.watch()
        self.schema_ok = True

    async def _watch_db_file(self) -> None:
        """Check the SQLite file every DB_FILE_CHECK_S until the server stops; the first
        problem found is logged by check_db_file, whether or not a request came."""
        while True:
            await asyncio.sleep(DB_FILE_CHECK_S)
            if self.schema_ok:
                with contextlib.suppress(DatabaseFileGoneError):
                    self.check_db_file()

    def check_db_file(self) -> None:
        """DatabaseFileGoneError once the SQLite file was deleted or replaced; the first
        time, an error naming the file is logged."""
        if self.db_file is None:
            return
        try:
            self.db_file.check()
            self.db_file_reported = False  # a file moved back: the next change is news
        except DatabaseFileGoneError:
            if not self.db_file_reported:
                self.db_file_reported = True
                log.error(
                    "the SQLite database %s %s while the server was running: every request "
                    "that uses the database now answers 503, and runs executing in this "
                    "server write to the old file, which is lost when it stops; restore the "
                    "file or restart the server",
                    self.db_file.path,
                    self.db_file.problem() or "changed",
                )
            raise


def api_state(request: Any) -> ApiState:
    state: ApiState = request.app.state.crew
    return state


async def read_store(request: Any) -> ReadStore:
    """The read store once the database is ready (503 otherwise)."""
    state = api_state(request)
    await state.ready()
    assert state.reads is not None
    return state.reads


T = TypeVar("T")


async def found(
    request: Any,
    kind: str,
    fetch: Callable[[ReadStore, str], Awaitable[T | None]],
) -> T:
    """What `fetch` reads for the id in the path's `<kind>_id`; 404 when it finds nothing."""
    reads = await read_store(request)
    identifier = request.path_params[f"{kind}_id"]
    row = await fetch(reads, identifier)
    if row is None:
        raise ApiError.missing(kind, identifier)
    return row
