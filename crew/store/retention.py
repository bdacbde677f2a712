"""The store's part in retention: which finished runs are old enough, deleting them, and
giving the space back on SQLite.

Only finished runs are ever deleted, and the status is checked again in the DELETE
itself: a run resumed between the listing and the deletion is `running` again and stays.
A run's nodes, artifacts and events go with it (ON DELETE CASCADE).

SQLite does not shrink its file when rows go: the pages are kept for reuse. `VACUUM`
rewrites the file without them, and in WAL mode the result only reaches the main file at
a checkpoint, so `vacuum_sqlite` checkpoints (TRUNCATE) too. PostgreSQL's autovacuum
makes deleted rows' space reusable by itself; nothing is done there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from crew.store.errors import unavailable_on_failure
from crew.store.models import artifacts_table, runs_table

FINISHED_STATUSES: tuple[str, ...] = ("completed", "failed", "canceled", "interrupted")
"""The statuses a run may be deleted in; running, queued and parked runs never are."""

DELETE_CHUNK = 100
"""Runs deleted per transaction: short transactions let concurrent writers through."""


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A run that retention may delete, with the artifact content the database holds."""

    id: str
    title: str
    status: str
    created_at: datetime
    ended_at: datetime | None
    content_bytes: int
    """Bytes of artifact content stored in the database (the files are counted apart)."""


def _where(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _content_bytes() -> Any:
    """Per run, the bytes of stored artifact content (`size` is the file's byte size,
    which is what the content column holds when it is filled)."""
    a = artifacts_table.c
    return (
        select(a.run_id, func.coalesce(func.sum(a.size), 0).label("bytes"))
        .where(a.content.is_not(None))
        .group_by(a.run_id)
        .subquery()
    )


async def finished_runs(
    engine: AsyncEngine,
    *,
    ended_before: datetime | None = None,
    statuses: Sequence[str] = FINISHED_STATUSES,
    run_id: str | None = None,
) -> list[StoredRun]:
    """Finished runs in `statuses` (oldest first) that ended before `ended_before`, or
    the run `run_id` if it is finished.

    A run that never recorded its end counts from its creation.
    """
    wanted = [s for s in statuses if s in FINISHED_STATUSES]
    r = runs_table.c
    sizes = _content_bytes()
    finished_at = func.coalesce(r.ended_at, r.created_at)
    query = (
        select(
            r.id,
            r.title,
            r.status,
            r.created_at,
            r.ended_at,
            func.coalesce(sizes.c.bytes, 0).label("content_bytes"),
        )
        .select_from(runs_table.outerjoin(sizes, sizes.c.run_id == r.id))
        .where(r.status.in_(wanted))
        .order_by(finished_at, r.id)
    )
    if ended_before is not None:
        query = query.where(finished_at < ended_before)
    if run_id is not None:
        query = query.where(r.id == run_id)
    with unavailable_on_failure(_where(engine)):
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
    return [
        StoredRun(
            id=row.id,
            title=row.title,
            status=row.status,
            created_at=row.created_at,
            ended_at=row.ended_at,
            content_bytes=int(row.content_bytes),
        )
        for row in rows
    ]


async def delete_finished_runs(engine: AsyncEngine, run_ids: Sequence[str]) -> list[str]:
    """Delete these runs if they are still finished; the ids actually deleted.

    The status condition is part of each DELETE, so a run resumed meanwhile is kept.
    """
    deleted: list[str] = []
    r = runs_table.c
    for start in range(0, len(run_ids), DELETE_CHUNK):
        chunk = list(run_ids[start : start + DELETE_CHUNK])
        statement = (
            delete(runs_table)
            .where(r.id.in_(chunk), r.status.in_(FINISHED_STATUSES))
            .returning(r.id)
        )
        with unavailable_on_failure(_where(engine)):
            async with engine.begin() as conn:
                deleted.extend(row[0] for row in await conn.execute(statement))
    return deleted


async def sqlite_free_bytes(engine: AsyncEngine) -> int | None:
    """Bytes of unused pages in the SQLite file (what VACUUM would give back); None for
    other databases."""
    if engine.dialect.name != "sqlite":
        return None
    with unavailable_on_failure(_where(engine)):
        async with engine.connect() as conn:
            free = (await conn.execute(text("PRAGMA freelist_count"))).scalar_one()
            page = (await conn.execute(text("PRAGMA page_size"))).scalar_one()
    return int(free) * int(page)


async def checkpoint_sqlite(engine: AsyncEngine) -> None:
    """Copy the WAL into the SQLite file and truncate it, so the file's size says what
    the database holds (a deletion first grows the WAL); nothing on other databases.

    A reader still on an older snapshot makes the checkpoint stop short, without error.
    """
    if engine.dialect.name != "sqlite":
        return
    with unavailable_on_failure(_where(engine)):
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))


async def vacuum_sqlite(engine: AsyncEngine) -> bool:
    """Rewrite the SQLite file without its free pages and checkpoint the WAL into it, so
    the file on disk shrinks; False (nothing done) on other databases.

    VACUUM cannot run inside a transaction: the connection is switched to autocommit.
    """
    if engine.dialect.name != "sqlite":
        return False
    with unavailable_on_failure(_where(engine)):
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text("VACUUM"))
            await auto.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    return True
