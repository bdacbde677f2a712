"""The repository's reads by id and key: runs, nodes, artifacts, events.

These are what the engine and the writing commands ask for inside their own work (a
run, its nodes, its events after a cursor), on the repository's connection. The read
commands (`crew runs`, `crew events tail`, `crew doctor`) and the API read through
crew/store/reads.py instead, which needs no SQLAlchemy. The class holds no connection:
the repository classes built on it say which one each call uses.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from crew.store.models import artifacts_table, events_table, nodes_table, runs_table
from crew.store.reads import AMBIGUOUS_SHOWN, only_match
from crew.store.records import ArtifactRecord, EventRecord, NodeRecord, RunProgress, RunRecord


class Lookups:
    """Reads, and the plumbing every query of the repository shares."""

    def _connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError

    # ---- reads --------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord | None:
        row = await self._one(select(runs_table).where(runs_table.c.id == run_id))
        return None if row is None else RunRecord(**row)

    async def get_run_progress(self, run_id: str) -> RunProgress | None:
        columns = [runs_table.c[name] for name in RunProgress.__dataclass_fields__]
        row = await self._one(select(*columns).where(runs_table.c.id == run_id))
        return None if row is None else RunProgress(**row)

    async def resolve_run_id(self, prefix: str) -> str:
        """The run id `prefix` names: an exact id wins, otherwise a unique prefix."""
        c = runs_table.c
        if prefix and await self._one(select(c.id).where(c.id == prefix)) is not None:
            return prefix
        # substr, not LIKE: LIKE is case-insensitive on SQLite and `_` is a wildcard.
        stmt = (
            select(c.id)
            .where(func.substr(c.id, 1, len(prefix)) == prefix)
            .order_by(c.id)
            .limit(AMBIGUOUS_SHOWN + 1)
        )
        matches = [str(row["id"]) for row in await self._all(stmt)] if prefix else []
        return only_match(prefix, matches)

    async def list_runs(
        self, *, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[RunRecord]:
        """Newest first; ties on created_at are broken by id so pages are stable."""
        c = runs_table.c
        stmt = select(runs_table).order_by(c.created_at.desc(), c.id.desc())
        if status is not None:
            stmt = stmt.where(c.status == status)
        rows = await self._all(stmt.limit(limit).offset(offset))
        return [RunRecord(**row) for row in rows]

    async def count_runs(self, status: str | None = None) -> int:
        stmt = select(func.count()).select_from(runs_table)
        if status is not None:
            stmt = stmt.where(runs_table.c.status == status)
        return int(await self._scalar(stmt) or 0)

    async def list_nodes(self, run_id: str) -> list[NodeRecord]:
        c = nodes_table.c
        stmt = select(nodes_table).where(c.run_id == run_id).order_by(c.position, c.key)
        return [NodeRecord(**row) for row in await self._all(stmt)]

    async def get_node_by_key(self, run_id: str, key: str) -> NodeRecord | None:
        c = nodes_table.c
        row = await self._one(select(nodes_table).where(c.run_id == run_id, c.key == key))
        return None if row is None else NodeRecord(**row)

    async def list_artifacts(
        self, *, run_id: str | None = None, node_id: str | None = None, type: str | None = None
    ) -> list[ArtifactRecord]:
        c = artifacts_table.c
        where: list[ColumnElement[bool]] = []
        if run_id is not None:
            where.append(c.run_id == run_id)
        if node_id is not None:
            where.append(c.node_id == node_id)
        if type is not None:
            where.append(c.type == type)
        stmt = select(artifacts_table).where(*where).order_by(c.created_at, c.path)
        return [ArtifactRecord(**row) for row in await self._all(stmt)]

    async def list_events(
        self, run_id: str, *, after_id: int | None = None, limit: int | None = None
    ) -> list[EventRecord]:
        """A run's events in id order after a cursor (keyset paging on (run_id, id))."""
        c = events_table.c
        stmt = select(events_table).where(c.run_id == run_id)
        if after_id is not None:
            stmt = stmt.where(c.id > after_id)
        stmt = stmt.order_by(c.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        return [EventRecord(**row) for row in await self._all(stmt)]

    async def last_event_id(self, run_id: str) -> int | None:
        c = events_table.c
        value = await self._scalar(select(func.max(c.id)).where(c.run_id == run_id))
        return None if value is None else int(value)

    # ---- plumbing -----------------------------------------------------------------------

    async def _update(self, stmt: Any) -> bool:
        async with self._connection() as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)

    async def _one(self, stmt: Any) -> dict[str, Any] | None:
        async with self._connection() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        return None if row is None else dict(row)

    async def _all(self, stmt: Any) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            return [dict(row) for row in (await conn.execute(stmt)).mappings()]

    async def _scalar(self, stmt: Any) -> Any:
        async with self._connection() as conn:
            return (await conn.execute(stmt)).scalar()
