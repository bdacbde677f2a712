"""Buffered writes for the engine's group commits: many small changes, few statements.

A group commit holds the changes of many nodes (a status here, two artifacts and five
events there). Sent one by one, each costs a round trip to the database driver. The
BulkWriter buffers them instead; `flush_segments` then sends one executemany per kind of
change: event inserts, artifact inserts, updates grouped by the columns they set, usage
increments summed per run. Buffering does no I/O, and flushing is one synchronous
function, so on SQLite the whole group runs in a single hop to the writer thread
instead of one hop per statement.

Order: changes to different rows commute within a transaction. When a row is changed
twice in different ways, the second change starts a new segment, flushed after the
first. Event ids follow the order events were added.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert, true, update

from crew.store.models import artifacts_table, events_table, nodes_table, runs_table
from crew.store.records import ArtifactRecord, NewArtifact, NewEvent
from crew.store.repository import _as_dict, _checked, _event_row, utcnow

_KEY = "b_key"
"""Bind name of the row id in grouped updates (must differ from every column name)."""

Shape = tuple[str, tuple[str, ...], tuple[str, ...]]
"""(table, columns set, columns incremented): updates of one shape share a statement."""

_TABLES: dict[str, Table] = {"runs": runs_table, "nodes": nodes_table}


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
    artifacts: list[dict[str, Any]] = field(default_factory=list)
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
        values = _checked(runs_table, columns)
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
        self._update("nodes", node_id, _checked(nodes_table, columns), increments=())

    async def finish_node(
        self,
        node_id: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cost_usd: float | None,
        **columns: Any,
    ) -> None:
        values = _checked(nodes_table, columns)
        values["input_tokens"] = input_tokens
        values["output_tokens"] = output_tokens
        values["cost_usd"] = cost_usd  # None: unknown for good, as in the one-shot writer
        counted = ("input_tokens", "output_tokens")
        increments = counted if cost_usd is None else (*counted, "cost_usd")
        self._update("nodes", node_id, values, increments=increments)

    async def add_artifacts(self, artifacts: Sequence[NewArtifact]) -> list[ArtifactRecord]:
        now = utcnow()
        records = [
            ArtifactRecord(id=str(uuid.uuid4()), created_at=now, **dataclasses.asdict(a))
            for a in artifacts
        ]
        self._current.artifacts.extend(_as_dict(r) for r in records)
        return records

    async def add_events(self, events: Sequence[NewEvent]) -> list[int]:
        """Buffer events; the returned list holds their ids once the group is flushed."""
        ids: list[int] = []
        now = utcnow()
        self._current.events.extend((_event_row(event, now), ids) for event in events)
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


def flush_segments(conn: Connection, segments: Sequence[Segment]) -> None:
    """Send buffered segments in order, one statement per kind of change."""
    for segment in segments:
        _flush(conn, segment)


def _flush(conn: Connection, segment: Segment) -> None:
    for (table_name, names, increments), rows in segment.updates.items():
        table = _TABLES[table_name]
        values = {
            name: (table.c[name] + bindparam(f"b_{name}"))
            if name in increments
            else bindparam(f"b_{name}")
            for name in names
        }
        conn.execute(update(table).where(table.c.id == bindparam(_KEY)).values(values), rows)
    c = runs_table.c
    for run_id, usage in segment.usage.items():
        changes: dict[str, Any] = {
            "input_tokens": c.input_tokens + usage.input_tokens,
            "output_tokens": c.output_tokens + usage.output_tokens,
            "cost_usd": c.cost_usd + usage.cost_usd,
            "updated_at": utcnow(),
        }
        if usage.cost_unknown:
            changes["cost_unknown"] = true()
        conn.execute(update(runs_table).where(c.id == run_id).values(changes))
    for run_id, owner in segment.releases:
        release = update(runs_table).where(c.id == run_id, c.owner == owner)
        conn.execute(release.values(owner=None, heartbeat_at=None))
    if segment.artifacts:
        conn.execute(insert(artifacts_table), segment.artifacts)
    if segment.events:
        stmt = insert(events_table).returning(events_table.c.id, sort_by_parameter_order=True)
        result = conn.execute(stmt, [row for row, _ in segment.events])
        for (_, ids), (event_id,) in zip(segment.events, result, strict=True):
            ids.append(int(event_id))
