"""Every query crew runs, in one place.

Statements are SQLAlchemy Core on the SQLModel tables: the engine writes many small rows
(events, usage increments) and Core avoids the ORM's per-object bookkeeping. Updates name
only the columns they change, so two writers touching different columns of one row
(say, the engine setting a status while a heartbeat lands) never undo each other.

The query code is written once: reads in `Lookups` (crew/store/lookups.py), writes in
`_Queries`. `Writer` runs it on one connection inside
the transaction `Repository.batch()` opened; `Repository` runs each call in its own
short transaction.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, delete, insert, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crew.domain.clock import utcnow
from crew.domain.errors import ConflictError
from crew.store.bulk import BulkWriter, ConnectionSender, flush_segments
from crew.store.errors import unavailable_on_failure
from crew.store.leases import Fence, LeaseQueries, event_lock_statement
from crew.store.models import artifacts_table, events_table, nodes_table, runs_table
from crew.store.records import (
    ArtifactRecord,
    NewArtifact,
    NewEvent,
    NewNode,
)
from crew.store.statements import checked, event_row, replaced_artifacts_statement

if TYPE_CHECKING:
    from crew.store.sync_writer import SyncWriter


def _status_filter(table: Table, when_status: str | Collection[str] | None) -> list[Any]:
    if when_status is None:
        return []
    wanted = [when_status] if isinstance(when_status, str) else list(when_status)
    return [table.c.status.in_(wanted)]


class _Queries(LeaseQueries):
    """The writes (the reads come from Lookups); subclasses say which connection (and
    transaction) they run on."""

    # ---- runs -------------------------------------------------------------------------

    async def create_run(
        self,
        *,
        run_id: str,
        title: str,
        status: str,
        options: Mapping[str, Any],
        task_spec: Mapping[str, Any],
        request_id: str | None,
        nodes: Sequence[NewNode],
        owner: str | None = None,
        lease_expires_at: datetime | None = None,
    ) -> None:
        """Insert a run and its nodes together; a taken run id raises ConflictError.

        With an owner, the run is created already leased to it (generation 1).
        """
        now = utcnow()
        async with self._connection() as conn:
            try:
                await conn.execute(
                    insert(runs_table).values(
                        id=run_id, title=title, status=status, created_at=now,
                        updated_at=now, request_id=request_id, options=dict(options),
                        task_spec=dict(task_spec), input_tokens=0, output_tokens=0,
                        cost_usd=0.0, cost_unknown=False, owner=owner,
                        heartbeat_at=now if owner else None,
                        lease_expires_at=lease_expires_at,
                        lease_generation=1 if owner else 0,
                    )
                )  # fmt: skip
            except IntegrityError:
                raise ConflictError(f"run id {run_id!r} is already taken") from None
            if not nodes:
                return
            rows = [
                {
                    "id": str(uuid.uuid4()), "run_id": run_id, "key": n.key,
                    "position": n.position, "title": n.title, "type": n.type, "role": n.role,
                    "status": n.status, "deps": list(n.deps), "spec": dict(n.spec),
                    "checksum": n.checksum, "attempts": 0, "input_tokens": 0,
                    "output_tokens": 0, "cost_usd": 0.0, "created_at": now,
                }
                for n in nodes
            ]  # fmt: skip
            try:
                await conn.execute(insert(nodes_table), rows)
            except IntegrityError:
                raise ConflictError(f"run {run_id!r} has duplicate node keys") from None

    async def update_run(
        self, run_id: str, *, when_status: str | Collection[str] | None = None, **columns: Any
    ) -> bool:
        """Set the given columns (and updated_at); False when no row matched.

        `when_status` makes it a compare-and-set: the row changes only if its status is
        one of those, so a late writer cannot resurrect a run someone else finished.
        """
        values = checked(runs_table, columns)
        values.setdefault("updated_at", utcnow())
        where = [runs_table.c.id == run_id, *_status_filter(runs_table, when_status)]
        return await self._update(update(runs_table).where(*where).values(values))

    async def add_run_usage(
        self, run_id: str, input_tokens: int, output_tokens: int, cost_usd: float | None
    ) -> None:
        """Add one call's usage atomically in SQL (no read-modify-write race).

        An unknown cost (None) marks the run's cost as a lower bound.
        """
        c = runs_table.c
        values: dict[str, Any] = {
            "input_tokens": c.input_tokens + input_tokens,
            "output_tokens": c.output_tokens + output_tokens,
            "updated_at": utcnow(),
        }
        if cost_usd is None:
            values["cost_unknown"] = true()
        else:
            values["cost_usd"] = c.cost_usd + cost_usd
        await self._update(update(runs_table).where(c.id == run_id).values(values))

    async def release_run(self, run_id: str, owner: str, generation: int | None = None) -> bool:
        """Give the lease up (only if `owner`, at `generation` when given, still holds it)."""
        c = runs_table.c
        where = [c.id == run_id, c.owner == owner]
        if generation is not None:
            where.append(c.lease_generation == generation)
        stmt = update(runs_table).where(*where)
        return await self._update(stmt.values(owner=None, heartbeat_at=None, lease_expires_at=None))

    # ---- idempotency keys of `POST /tasks` ---------------------------------------------
    # Stored (as a digest that also names the API key, so two clients cannot see each
    # other's runs) in a unique column of `runs`: the guarantee survives restarts and
    # holds across server processes.

    async def run_with_idempotency_key(self, digest: str) -> str | None:
        """The id of the run started with this key digest, if any."""
        c = runs_table.c
        row = await self._one(select(c.id).where(c.idempotency_key == digest))
        return None if row is None else str(row["id"])

    async def attach_idempotency_key(self, run_id: str, digest: str) -> str:
        """Give `run_id` the key; returns the run that holds it (another one if it won a
        race). When two identical requests race, the unique index lets exactly one run
        keep the key, and the loser's run (created a moment ago, never executed) is
        deleted: the caller answers with the winner's id instead."""
        try:
            await self.update_run(run_id, idempotency_key=digest)
        except IntegrityError:
            winner = await self.run_with_idempotency_key(digest)
            if winner is None:  # pragma: no cover - the winner was deleted meanwhile
                raise
            await self.delete_run(run_id)
            return winner
        return run_id

    async def delete_run(self, run_id: str) -> bool:
        """Delete a run; its nodes, artifacts and events go with it (ON DELETE CASCADE)."""
        return await self._update(delete(runs_table).where(runs_table.c.id == run_id))

    # ---- nodes ------------------------------------------------------------------------

    async def update_node(
        self, node_id: str, *, when_status: str | Collection[str] | None = None, **columns: Any
    ) -> bool:
        """Set the given columns only; `when_status` as in update_run."""
        values = checked(nodes_table, columns)
        where = [nodes_table.c.id == node_id, *_status_filter(nodes_table, when_status)]
        return await self._update(update(nodes_table).where(*where).values(values))

    async def finish_node(
        self,
        node_id: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float | None,
        **columns: Any,
    ) -> bool:
        """Set `columns` and add one execution's usage in a single UPDATE.

        The hot path of every node: one statement instead of an update plus an increment.
        """
        c = nodes_table.c
        values = checked(nodes_table, columns)
        values["input_tokens"] = c.input_tokens + input_tokens
        values["output_tokens"] = c.output_tokens + output_tokens
        values["cost_usd"] = None if cost_usd is None else c.cost_usd + cost_usd
        return await self._update(update(nodes_table).where(c.id == node_id).values(values))

    async def add_node_usage(
        self, node_id: str, input_tokens: int, output_tokens: int, cost_usd: float | None
    ) -> None:
        """Add one call's usage; an unknown cost makes the node's cost NULL (unknown) for good."""
        c = nodes_table.c
        values: dict[str, Any] = {
            "input_tokens": c.input_tokens + input_tokens,
            "output_tokens": c.output_tokens + output_tokens,
            "cost_usd": None if cost_usd is None else c.cost_usd + cost_usd,
        }
        await self._update(update(nodes_table).where(c.id == node_id).values(values))

    # ---- artifacts and events -----------------------------------------------------------

    async def add_artifact(
        self,
        *,
        run_id: str,
        node_id: str | None,
        type: str,
        path: str,
        content: str | None,
        summary: str | None,
        sha256: str,
        size: int,
    ) -> ArtifactRecord:
        """Record a file; a row already recorded for the same path is replaced."""
        artifact = NewArtifact(
            run_id=run_id, node_id=node_id, type=type, path=path, content=content,
            summary=summary, sha256=sha256, size=size,
        )  # fmt: skip
        (record,) = await self.add_artifacts([artifact])
        return record

    async def add_artifacts(self, artifacts: Sequence[NewArtifact]) -> list[ArtifactRecord]:
        """Record several files in one transaction (a node writes two at once).

        Each replaces the row already recorded for its path: the file was overwritten.
        """
        now = utcnow()
        records = [
            ArtifactRecord(id=str(uuid.uuid4()), created_at=now, **dataclasses.asdict(a))
            for a in artifacts
        ]
        rows = list({(r.run_id, r.path): _as_dict(r) for r in records}.values())
        if rows:
            async with self._connection() as conn:
                await conn.execute(replaced_artifacts_statement(), rows)
                await conn.execute(insert(artifacts_table), rows)
        return records

    async def add_event(
        self,
        *,
        run_id: str,
        type: str,
        level: str,
        message: str,
        payload: Mapping[str, Any],
        node_id: str | None = None,
        node_key: str | None = None,
        request_id: str | None = None,
        timestamp: datetime | None = None,
    ) -> int:
        """Insert one event and return its id (the followers' cursor)."""
        event = NewEvent(
            run_id=run_id, type=type, level=level, message=message, payload=dict(payload),
            node_id=node_id, node_key=node_key, request_id=request_id, timestamp=timestamp,
        )  # fmt: skip
        async with self._connection() as conn:
            await lock_runs_for_events(conn, [run_id])
            result = await conn.execute(insert(events_table).values(event_row(event)))
        key = result.inserted_primary_key
        if key is None:  # pragma: no cover - both drivers report the new id
            raise RuntimeError("the database did not return the new event's id")
        return int(key[0])

    async def add_events(self, events: Sequence[NewEvent]) -> list[int]:
        """Insert many events in one statement batch; returns their ids in input order."""
        if not events:
            return []
        now = utcnow()
        stmt = insert(events_table).returning(events_table.c.id, sort_by_parameter_order=True)
        async with self._connection() as conn:
            await lock_runs_for_events(conn, [e.run_id for e in events])
            result = await conn.execute(stmt, [event_row(e, now) for e in events])
            return [int(row[0]) for row in result]


async def lock_runs_for_events(conn: AsyncConnection, run_ids: Sequence[str]) -> None:
    """On PostgreSQL, hold the runs' rows while adding their events (event_lock_statement)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(event_lock_statement(run_ids))


def _as_dict(record: ArtifactRecord) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


class Writer(_Queries):
    """Runs every call on one connection, inside the transaction `batch()` opened."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._conn = connection

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        yield self._conn


class Repository(_Queries):
    """The store's entry point; each call is its own transaction unless inside batch()."""

    def __init__(self, engine: AsyncEngine, *, sync_writer: SyncWriter | None = None) -> None:
        self.engine = engine
        self._sync_writer = sync_writer
        self._where = engine.url.render_as_string(hide_password=True)

    @asynccontextmanager
    async def bulk(self, fence: Fence | None = None) -> AsyncIterator[BulkWriter]:
        """Buffer writes, then send them as few statements in one transaction.

        Nothing is sent if the body raises. With a sync writer (SQLite files), the whole
        transaction runs in one hop to its thread. With a fence, the transaction commits
        only while the fence still holds its run's lease (LeaseLostError otherwise).
        """
        writer = BulkWriter()
        yield writer
        segments = writer.segments
        with unavailable_on_failure(self._where):
            if self._sync_writer is not None:
                await self._sync_writer.run(lambda sender: flush_segments(sender, segments, fence))
            else:
                async with self.engine.begin() as conn:
                    await conn.run_sync(
                        lambda sync: flush_segments(ConnectionSender(sync), segments, fence)
                    )

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[Writer]:
        """One transaction for many writes: committed at exit, rolled back on exception."""
        with unavailable_on_failure(self._where):
            async with self.engine.begin() as conn:
                yield Writer(conn)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        with unavailable_on_failure(self._where):
            async with self.engine.begin() as conn:
                yield conn
