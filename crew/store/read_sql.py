"""The read path's building blocks: raw rows to records, and small SQL pieces.

Both read backends (stdlib sqlite3 and asyncpg, crew/store/read_backends.py) return
plain rows; the decoders here turn either into the repository's records, with
timestamps aware UTC and JSON columns parsed. The SQL pieces build WHERE and ORDER BY
clauses with `:name` parameters (the PostgreSQL backend numbers them).

No SQLAlchemy here: the read commands import this module. The column lists below are
the tables' of crew/store/models.py, in their order; a test keeps them equal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from crew.store.records import ArtifactRecord, EventRecord, NodeRecord, RunRecord

R = TypeVar("R")


RUN_COLUMN_NAMES = (
    "id",
    "title",
    "status",
    "created_at",
    "started_at",
    "ended_at",
    "request_id",
    "options",
    "task_spec",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "cost_unknown",
    "error",
    "owner",
    "heartbeat_at",
    "lease_expires_at",
    "lease_generation",
    "recoveries",
    "error_code",
    "reserved_tokens",
    "reserved_cost_usd",
    "cancel_requested_at",
    "updated_at",
    "idempotency_key",
)
NODE_COLUMN_NAMES = (
    "id",
    "run_id",
    "key",
    "position",
    "title",
    "type",
    "role",
    "status",
    "deps",
    "spec",
    "checksum",
    "attempts",
    "started_at",
    "ended_at",
    "error",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "claimed_by",
    "lease_expires_at",
    "created_at",
)
ARTIFACT_COLUMN_NAMES = (
    "id",
    "run_id",
    "node_id",
    "type",
    "path",
    "content",
    "summary",
    "sha256",
    "size",
    "created_at",
)
EVENT_COLUMN_NAMES = (
    "id",
    "run_id",
    "node_id",
    "node_key",
    "type",
    "level",
    "payload",
    "message",
    "request_id",
    "timestamp",
)
TIMESTAMP_COLUMNS = frozenset(
    {
        "created_at",
        "started_at",
        "ended_at",
        "heartbeat_at",
        "lease_expires_at",
        "cancel_requested_at",
        "updated_at",
        "timestamp",
    }
)
"""Every UTCDateTime column of the four tables (the same names in each)."""

_JSON = {"options", "task_spec", "deps", "spec", "payload"}
_BOOL = {"cost_unknown"}


def _timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    stamp: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
    if stamp.tzinfo is None:
        return stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


def _decoder(columns: Sequence[str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Turn a raw row (either driver) into record keyword arguments."""
    stamps = TIMESTAMP_COLUMNS & set(columns)

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


_decode_run = _decoder(RUN_COLUMN_NAMES)
_decode_node = _decoder(NODE_COLUMN_NAMES)
_decode_artifact = _decoder(ARTIFACT_COLUMN_NAMES)
_decode_event = _decoder(EVENT_COLUMN_NAMES)


def run_record(row: dict[str, Any]) -> RunRecord:
    return RunRecord(**_decode_run(row))


def node_record(row: dict[str, Any]) -> NodeRecord:
    return NodeRecord(**_decode_node(row))


def artifact_record(row: dict[str, Any]) -> ArtifactRecord:
    return ArtifactRecord(**_decode_artifact(row))


def event_record(row: dict[str, Any]) -> EventRecord:
    return EventRecord(**_decode_event(row))


RUN_COLUMNS = ", ".join(RUN_COLUMN_NAMES)
NODE_COLUMNS = ", ".join(NODE_COLUMN_NAMES)
ARTIFACT_COLUMNS = ", ".join(ARTIFACT_COLUMN_NAMES)
EVENT_COLUMNS = ", ".join(EVENT_COLUMN_NAMES)

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
