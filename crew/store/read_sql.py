"""The read path's building blocks: raw rows to records, and small SQL pieces.

Both read backends (stdlib sqlite3 and the asyncpg engine, crew/store/read_backends.py)
return plain rows; the decoders here turn either into the repository's records, with
timestamps aware UTC and JSON columns parsed. The SQL pieces build WHERE and ORDER BY
clauses with `:name` parameters, which both drivers accept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from crew.store.models import artifacts_table, events_table, nodes_table, runs_table
from crew.store.records import ArtifactRecord, EventRecord, NodeRecord, RunRecord

R = TypeVar("R")


def _columns(table: Any) -> list[str]:
    return [c.name for c in table.columns]


_JSON = {"options", "task_spec", "deps", "spec", "payload"}
_BOOL = {"cost_unknown"}


def _timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    stamp: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    if stamp.tzinfo is None:
        return stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


def _decoder(table: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Turn a raw row (either driver) into record keyword arguments."""
    stamps = {c.name for c in table.columns if c.type.__class__.__name__ == "UTCDateTime"}

    def decode(row: dict[str, Any]) -> dict[str, Any]:
        for name in stamps:
            row[name] = _timestamp(row[name])
        for name in _JSON & row.keys():
            value = row[name]
            if isinstance(value, str | bytes):
                row[name] = json.loads(value)
            elif value is None:
                row[name] = {} if name != "deps" else []
        for name in _BOOL & row.keys():
            row[name] = bool(row[name])
        return row

    return decode


_decode_run = _decoder(runs_table)
_decode_node = _decoder(nodes_table)
_decode_artifact = _decoder(artifacts_table)
_decode_event = _decoder(events_table)


def run_record(row: dict[str, Any]) -> RunRecord:
    return RunRecord(**_decode_run(row))


def node_record(row: dict[str, Any]) -> NodeRecord:
    return NodeRecord(**_decode_node(row))


def artifact_record(row: dict[str, Any]) -> ArtifactRecord:
    return ArtifactRecord(**_decode_artifact(row))


def event_record(row: dict[str, Any]) -> EventRecord:
    return EventRecord(**_decode_event(row))


RUN_COLUMNS = ", ".join(_columns(runs_table))
NODE_COLUMNS = ", ".join(_columns(nodes_table))
ARTIFACT_COLUMNS = ", ".join(_columns(artifacts_table))
EVENT_COLUMNS = ", ".join(_columns(events_table))

NULLABLE_ORDER = {"started_at", "ended_at", "role"}


@dataclass(frozen=True, slots=True)
class Order:
    """One ORDER BY term; the caller has checked `column` against an allow-list."""

    column: str
    descending: bool = False

    def sql(self) -> str:
        direction = " DESC" if self.descending else ""
        nulls = " NULLS LAST" if self.column in NULLABLE_ORDER else ""
        return f"{self.column}{direction}{nulls}"


def order_sql(orders: Sequence[Order], tie: str = "id") -> str:
    """ORDER BY with the id as the last key, in the direction of the first, for stable pages."""
    terms = [o.sql() for o in orders if o.column != tie]
    descending = orders[0].descending if orders else False
    terms.append(f"{tie}{' DESC' if descending else ''}")
    return "ORDER BY " + ", ".join(terms)


def like_pattern(value: str) -> str:
    """A case-insensitive substring pattern with LIKE's wildcards escaped."""
    escaped = value.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(slots=True)
class Where:
    clauses: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def add(self, clause: str, **params: Any) -> None:
        self.clauses.append(clause)
        self.params.update(params)

    def sql(self) -> str:
        return ("WHERE " + " AND ".join(self.clauses)) if self.clauses else ""


@dataclass(frozen=True, slots=True)
class RunFilters:
    status: str | None = None
    title_contains: str | None = None
    started_from: datetime | None = None
    started_to: datetime | None = None


@dataclass(frozen=True, slots=True)
class NodeFilters:
    status: str | None = None
    key: str | None = None
    role: str | None = None
    title_contains: str | None = None


@dataclass(frozen=True, slots=True)
class EventFilters:
    type: str | None = None
    level: str | None = None
    node_key: str | None = None
    q: str | None = None
    ts_from: datetime | None = None
    ts_to: datetime | None = None


@dataclass(frozen=True, slots=True)
class Page(Generic[R]):
    items: list[R]
    total: int
