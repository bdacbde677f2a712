"""Every query crew runs, in one place.

Statements are SQLAlchemy Core on the SQLModel tables: the engine writes many small rows
(events, usage increments) and Core avoids the ORM's per-object bookkeeping. Updates name
only the columns they change, so two writers touching different columns of one row
(say, the engine setting a status while a heartbeat lands) never undo each other.

The query code is written once, in `_Queries`. `Writer` runs it on one connection inside
the transaction `Repository.batch()` opened; `Repository` runs each call in its own
short transaction.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Delete, Table, bindparam, delete, func, insert, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from crew.domain.errors import AmbiguousIdError, ConflictError, NotFoundError
from crew.store.errors import unavailable_on_failure
from crew.store.models import artifacts_table, events_table, nodes_table, runs_table
from crew.store.records import (
    ArtifactRecord,
    EventRecord,
    NewArtifact,
    NewEvent,
    NewNode,
    NodeRecord,
    RunProgress,
    RunRecord,
)

if TYPE_CHECKING:
    from crew.store.bulk import BulkWriter
    from crew.store.sync_writer import SyncWriter

AMBIGUOUS_SHOWN = 5


def replaced_artifacts_statement() -> Delete:
    """Delete the row of a file about to get a new one (one row per file, see models)."""
    c = artifacts_table.c
    return delete(artifacts_table).where(
        c.run_id == bindparam("run_id", type_=c.run_id.type),
        c.path == bindparam("path", type_=c.path.type),
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def _checked(table: Table, columns: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse unknown or immutable column names: a typo must not pass silently."""
    names = frozenset(columns)
    if (table.name, names) not in _ACCEPTED:  # the engine updates a few shapes, very often
        unknown = sorted(names - {c.name for c in table.columns} | ({"id"} & names))
        if unknown:
            raise ValueError(f"cannot update {table.name} column(s): {', '.join(unknown)}")
        _ACCEPTED.add((table.name, names))
    return dict(columns)


_ACCEPTED: set[tuple[str, frozenset[str]]] = set()


def _status_filter(table: Table, when_status: str | Collection[str] | None) -> list[Any]:
    if when_status is None:
        return []
    wanted = [when_status] if isinstance(when_status, str) else list(when_status)
    return [table.c.status.in_(wanted)]


class _Queries:
    """The queries; subclasses say which connection (and transaction) they run on."""

    def _connection(self) -> AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError

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
    ) -> None:
        """Insert a run and its nodes together; a taken run id raises ConflictError."""
        now = utcnow()
        async with self._connection() as conn:
            try:
                await conn.execute(
                    insert(runs_table).values(
                        id=run_id, title=title, status=status, created_at=now,
                        updated_at=now, request_id=request_id, options=dict(options),
                        task_spec=dict(task_spec), input_tokens=0, output_tokens=0,
                        cost_usd=0.0, cost_unknown=False,
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
        values = _checked(runs_table, columns)
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

    async def claim_run(
        self, run_id: str, owner: str, now: datetime, stale_before: datetime
    ) -> bool:
        """Take ownership of a run if nobody live holds it; True when `owner` now holds it.

        One conditional UPDATE, so two processes racing for the same run cannot both win.
        A holder whose heartbeat is older than `stale_before` is presumed dead.
        """
        c = runs_table.c
        free = or_(
            c.owner.is_(None), c.owner == owner, c.heartbeat_at.is_(None),
            c.heartbeat_at < stale_before,
        )  # fmt: skip
        stmt = update(runs_table).where(c.id == run_id, free)
        return await self._update(stmt.values(owner=owner, heartbeat_at=now))

    async def heartbeat(self, run_id: str, owner: str, now: datetime) -> bool:
        """Refresh the claim; False means someone else took the run over."""
        c = runs_table.c
        stmt = update(runs_table).where(c.id == run_id, c.owner == owner)
        return await self._update(stmt.values(heartbeat_at=now))

    async def release_run(self, run_id: str, owner: str) -> bool:
        c = runs_table.c
        stmt = update(runs_table).where(c.id == run_id, c.owner == owner)
        return await self._update(stmt.values(owner=None, heartbeat_at=None))

    async def interrupt_stale_runs(self, stale_before: datetime, now: datetime) -> list[str]:
        """Mark `running` runs whose owner stopped beating as `interrupted`; return their ids.

        A conditional UPDATE per candidate, so when several readers notice the same dead
        run at once exactly one of them changes it (and emits its event).
        """
        c = runs_table.c
        dead = (c.status == "running", or_(c.heartbeat_at.is_(None), c.heartbeat_at < stale_before))
        candidates = await self._all(select(c.id).where(*dead))
        interrupted = []
        for row in candidates:
            stmt = update(runs_table).where(c.id == row["id"], *dead).values(
                status="interrupted", ended_at=now, owner=None, heartbeat_at=None,
                error="interrupted: the executing process stopped", updated_at=now,
            )  # fmt: skip
            if await self._update(stmt):
                interrupted.append(row["id"])
        return interrupted

    async def delete_run(self, run_id: str) -> bool:
        """Delete a run; its nodes, artifacts and events go with it (ON DELETE CASCADE)."""
        return await self._update(delete(runs_table).where(runs_table.c.id == run_id))

    # ---- nodes ------------------------------------------------------------------------

    async def update_node(
        self, node_id: str, *, when_status: str | Collection[str] | None = None, **columns: Any
    ) -> bool:
        """Set the given columns only; `when_status` as in update_run."""
        values = _checked(nodes_table, columns)
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
        values = _checked(nodes_table, columns)
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
            result = await conn.execute(insert(events_table).values(_event_row(event)))
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
            result = await conn.execute(stmt, [_event_row(e, now) for e in events])
            return [int(row[0]) for row in result]

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
        matches = [row["id"] for row in await self._all(stmt)] if prefix else []
        if not matches:
            raise NotFoundError(f"no run matches {prefix!r}")
        if len(matches) > 1:
            shown = matches[:AMBIGUOUS_SHOWN]
            more = " (and more)" if len(matches) > AMBIGUOUS_SHOWN else ""
            raise AmbiguousIdError(
                f"run id prefix {prefix!r} matches several runs{more}; give more characters",
                problems=shown,
            )
        return str(matches[0])

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

    async def get_node(self, node_id: str) -> NodeRecord | None:
        row = await self._one(select(nodes_table).where(nodes_table.c.id == node_id))
        return None if row is None else NodeRecord(**row)

    async def get_node_by_key(self, run_id: str, key: str) -> NodeRecord | None:
        c = nodes_table.c
        row = await self._one(select(nodes_table).where(c.run_id == run_id, c.key == key))
        return None if row is None else NodeRecord(**row)

    async def node_counts(self, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Nodes per status for each run, in one grouped query (for run lists)."""
        counts: dict[str, dict[str, int]] = {run_id: {} for run_id in run_ids}
        if not run_ids:
            return counts
        c = nodes_table.c
        stmt = (
            select(c.run_id, c.status, func.count().label("n"))
            .where(c.run_id.in_(list(run_ids)))
            .group_by(c.run_id, c.status)
        )
        for row in await self._all(stmt):
            counts[row["run_id"]][row["status"]] = int(row["n"])
        return counts

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

    async def get_artifact(self, artifact_id: str) -> ArtifactRecord | None:
        stmt = select(artifacts_table).where(artifacts_table.c.id == artifact_id)
        row = await self._one(stmt)
        return None if row is None else ArtifactRecord(**row)

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


def _as_dict(record: ArtifactRecord) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


def _event_row(event: NewEvent, now: datetime | None = None) -> dict[str, Any]:
    return {
        "run_id": event.run_id, "node_id": event.node_id, "node_key": event.node_key,
        "type": event.type, "level": event.level, "payload": dict(event.payload),
        "message": event.message, "request_id": event.request_id,
        "timestamp": event.timestamp or now or utcnow(),
    }  # fmt: skip


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
    async def bulk(self) -> AsyncIterator[BulkWriter]:
        """Buffer writes, then send them as few statements in one transaction.

        Nothing is sent if the body raises. With a sync writer (SQLite files), the whole
        transaction runs in one hop to its thread.
        """
        from crew.store.bulk import BulkWriter, ConnectionSender, flush_segments

        writer = BulkWriter()
        yield writer
        segments = writer.segments
        with unavailable_on_failure(self._where):
            if self._sync_writer is not None:
                await self._sync_writer.run(lambda sender: flush_segments(sender, segments))
            else:
                async with self.engine.begin() as conn:
                    await conn.run_sync(
                        lambda sync: flush_segments(ConnectionSender(sync), segments)
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
