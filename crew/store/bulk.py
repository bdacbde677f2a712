"""Buffered writes for the engine's group commits: many small changes, few statements.

A group commit holds the changes of many nodes (a status here, two artifacts and five
events there). Sent one by one, each costs a round trip to the database driver. The
BulkWriter buffers them instead; `flush_segments` then sends one executemany per kind of
change: event inserts, artifact replacements, updates grouped by the columns they set, usage
increments summed per run. Buffering does no I/O, and flushing is one synchronous
function, so on SQLite the whole group runs in a single hop to the writer thread
instead of one hop per statement.

Every statement has a key naming its shape, and a function that builds it: a Sender
either executes the built statement on a SQLAlchemy connection, or compiles each shape
once and hands only rows to the driver (crew/store/sync_writer.py).

Order: changes to different rows commute within a transaction. When a row is changed
twice in different ways, the second change starts a new segment, flushed after the
first. Event ids follow the order events were added.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from sqlalchemy import Connection, Table, bindparam, insert, null, update
from sqlalchemy.sql.dml import UpdateBase

from crew.domain.clock import utcnow
from crew.domain.errors import LeaseLostError
from crew.store.leases import Fence, event_lock_statement, fence_statement
from crew.store.models import artifacts_table, events_table, nodes_table, runs_table
from crew.store.records import ArtifactRecord, NewArtifact, NewEvent
from crew.store.statements import checked, event_row, replaced_artifacts_statement

_KEY = "b_key"
"""Bind name of the row id in grouped updates (must differ from every column name)."""

Shape = tuple[str, tuple[str, ...], tuple[str, ...]]
"""(table, columns set, columns incremented): updates of one shape share a statement."""

_TABLES: dict[str, Table] = {"runs": runs_table, "nodes": nodes_table}
_ARTIFACT_COLUMNS = tuple(c.name for c in artifacts_table.columns)
EVENT_COLUMNS = tuple(c.name for c in events_table.columns if c.name != "id")
_USAGE = ("input_tokens", "output_tokens", "cost_usd")


@dataclass(slots=True)
class _Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_unknown: bool = False


@dataclass(slots=True)
class Segment:
    """Changes that commute with each other, sent together."""

    updates: dict[Shape, list[dict[str, Any]]] = field(default_factory=dict)
    shape_of_row: dict[tuple[str, str], Shape] = field(default_factory=dict)
    # Keyed by (run_id, path): a file written twice in one group keeps its last row.
    artifacts: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[dict[str, Any], list[int]]] = field(default_factory=list)
    usage: dict[str, _Usage] = field(default_factory=dict)
    releases: list[tuple[str, str]] = field(default_factory=list)


class BulkWriter:
    """The write methods the engine uses, buffered until the transaction ends.

    Methods are coroutines so that code written against the one-shot Writer works
    unchanged; none of them does I/O.
    """

    def __init__(self) -> None:
        self.segments: list[Segment] = [Segment()]

    @property
    def _current(self) -> Segment:
        return self.segments[-1]

    async def update_run(self, run_id: str, **columns: Any) -> None:
        values = checked(runs_table, columns)
        values.setdefault("updated_at", utcnow())
        self._update("runs", run_id, values, increments=())

    async def release_run(self, run_id: str, owner: str) -> None:
        """Clear the owner (only if it is still `owner`), after the changes before it."""
        self._current.releases.append((run_id, owner))

    async def add_run_usage(
        self, run_id: str, input_tokens: int, output_tokens: int, cost_usd: float | None
    ) -> None:
        usage = self._current.usage.setdefault(run_id, _Usage())
        usage.input_tokens += input_tokens
        usage.output_tokens += output_tokens
        if cost_usd is None:
            usage.cost_unknown = True
        else:
            usage.cost_usd += cost_usd

    async def update_node(self, node_id: str, **columns: Any) -> None:
        self._update("nodes", node_id, checked(nodes_table, columns), increments=())

    async def finish_node(
        self,
        node_id: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float | None,
        **columns: Any,
    ) -> None:
        values = checked(nodes_table, columns)
        values["input_tokens"] = input_tokens
        values["output_tokens"] = output_tokens
        values["cost_usd"] = cost_usd  # None: unknown for good, as in the one-shot writer
        counted = ("input_tokens", "output_tokens")
        increments = counted if cost_usd is None else (*counted, "cost_usd")
        self._update("nodes", node_id, values, increments=increments)

    async def add_artifacts(self, artifacts: Sequence[NewArtifact]) -> list[ArtifactRecord]:
        now = utcnow()
        records = []
        for artifact in artifacts:
            record = ArtifactRecord(
                id=str(uuid.uuid4()),
                run_id=artifact.run_id,
                node_id=artifact.node_id,
                type=artifact.type,
                path=artifact.path,
                content=artifact.content,
                summary=artifact.summary,
                sha256=artifact.sha256,
                size=artifact.size,
                created_at=now,
            )
            records.append(record)
            self._current.artifacts[(record.run_id, record.path)] = {
                name: getattr(record, name) for name in _ARTIFACT_COLUMNS
            }
        return records

    async def add_events(self, events: Sequence[NewEvent]) -> list[int]:
        """Buffer events; the returned list holds their ids once the group is flushed."""
        ids: list[int] = []
        now = utcnow()
        self._current.events.extend((event_row(event, now), ids) for event in events)
        return ids

    def _update(
        self, table: str, row_id: str, values: dict[str, Any], increments: tuple[str, ...]
    ) -> None:
        shape: Shape = (table, tuple(sorted(values)), increments)
        seen = self._current.shape_of_row.get((table, row_id))
        if seen is not None and seen != shape:
            self.segments.append(Segment())
        segment = self._current
        segment.shape_of_row[(table, row_id)] = shape
        params = {f"b_{name}": value for name, value in values.items()}
        params[_KEY] = row_id
        segment.updates.setdefault(shape, []).append(params)


class Sender(Protocol):
    """Executes a group's statements inside the transaction its caller opened."""

    def send(
        self, key: Hashable, build: Callable[[], UpdateBase], rows: list[dict[str, Any]]
    ) -> None:
        """Execute the statement `build()` makes (named by `key`) once per row."""

    def insert_events(self, rows: list[dict[str, Any]]) -> list[int]:
        """Insert event rows in order; returns their ids in the same order."""

    def holds(self, fence: Fence) -> bool:
        """Whether `fence` still holds its run's lease (and, where it matters, lock it)."""


class ConnectionSender:
    """Sends through a SQLAlchemy connection (PostgreSQL, or SQLite without a writer)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._locked: set[str] = set()
        """Runs whose row this transaction already holds (the fence locked it)."""

    def send(
        self, key: Hashable, build: Callable[[], UpdateBase], rows: list[dict[str, Any]]
    ) -> None:
        self._conn.execute(build(), rows)

    def holds(self, fence: Fence) -> bool:
        held = self._conn.execute(fence_statement(fence)).first() is not None
        if held:
            self._locked.add(fence.run_id)
        return held

    def insert_events(self, rows: list[dict[str, Any]]) -> list[int]:
        conn = self._conn
        if conn.dialect.name != "sqlite":
            unlocked = {row["run_id"] for row in rows} - self._locked
            if unlocked:  # one round trip less for an executor's own, fenced, commits
                conn.execute(event_lock_statement(sorted(unlocked)))
            stmt = insert(events_table).returning(events_table.c.id, sort_by_parameter_order=True)
            return [int(event_id) for (event_id,) in conn.execute(stmt, rows)]
        # SQLite cannot promise RETURNING's order for a batch, so an ordered RETURNING
        # insert there runs one statement per row; see consecutive_ids for why none is
        # needed.
        conn.execute(insert_statement(events_table, EVENT_COLUMNS), rows)
        last = conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one()
        return consecutive_ids(int(last), len(rows))


def consecutive_ids(last: int, count: int) -> list[int]:
    """The ids of the `count` event rows a SQLite transaction just inserted.

    The transaction holds SQLite's only write lock from its first insert, and the
    AUTOINCREMENT key gives each new row the next id, so the rows hold the consecutive
    ids ending at `last_insert_rowid()`.
    """
    return list(range(last - count + 1, last + 1))


def insert_statement(table: Table, columns: Sequence[str]) -> UpdateBase:
    return insert(table).values(
        {name: bindparam(name, type_=table.c[name].type) for name in columns}
    )


def _update_statement(shape: Shape) -> UpdateBase:
    table_name, names, increments = shape
    table = _TABLES[table_name]
    values = {
        name: (table.c[name] + _bind(table, name)) if name in increments else _bind(table, name)
        for name in names
    }
    return update(table).where(table.c.id == bindparam(_KEY)).values(values)


def _bind(table: Table, name: str) -> Any:
    return bindparam(f"b_{name}", type_=table.c[name].type)


def _release_statement() -> UpdateBase:
    c = runs_table.c
    return (
        update(runs_table)
        .where(c.id == bindparam(_KEY), c.owner == bindparam("b_owner"))
        .values(owner=null(), heartbeat_at=null(), lease_expires_at=null())
    )


def flush_segments(sender: Sender, segments: Sequence[Segment], fence: Fence | None = None) -> None:
    """Send buffered segments in order, one statement per kind of change.

    With a fence, nothing is sent unless the fence still holds its run's lease: the
    whole transaction is refused (LeaseLostError) and rolled back by the caller.
    """
    if fence is not None and not sender.holds(fence):
        raise LeaseLostError(
            f"run {fence.run_id}: this process ({fence.owner}) no longer holds the run's "
            f"lease (generation {fence.generation}); another executor has taken it over"
        )
    for segment in segments:
        _flush(sender, segment)


def _flush(sender: Sender, segment: Segment) -> None:
    for shape, rows in segment.updates.items():
        sender.send(shape, partial(_update_statement, shape), rows)
    usage_rows: dict[Shape, list[dict[str, Any]]] = {}
    now = utcnow()
    for run_id, usage in segment.usage.items():
        row = {
            _KEY: run_id,
            "b_input_tokens": usage.input_tokens,
            "b_output_tokens": usage.output_tokens,
            "b_cost_usd": usage.cost_usd,
            "b_updated_at": now,
        }
        names: tuple[str, ...] = (*_USAGE, "updated_at")
        if usage.cost_unknown:
            names, row["b_cost_unknown"] = (*names, "cost_unknown"), True
        usage_rows.setdefault(("runs", names, _USAGE), []).append(row)
    for shape, rows in usage_rows.items():
        sender.send(shape, partial(_update_statement, shape), rows)
    if segment.releases:
        rows = [{_KEY: run_id, "b_owner": owner} for run_id, owner in segment.releases]
        sender.send("release", _release_statement, rows)
    if segment.artifacts:
        rows = list(segment.artifacts.values())
        sender.send("artifacts_replaced", replaced_artifacts_statement, rows)
        sender.send(
            "artifacts",
            lambda: insert_statement(artifacts_table, _ARTIFACT_COLUMNS),
            rows,
        )
    if segment.events:
        event_ids = sender.insert_events([row for row, _ in segment.events])
        for (_, ids), event_id in zip(segment.events, event_ids, strict=True):
            ids.append(event_id)
