"""Statement pieces shared by the repository's writers (one-shot and buffered).

Below crew/store/repository.py and crew/store/bulk.py, so neither imports the other for
them: the column checks of updates, the row of an event, the replacement of a file's
artifact row.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Delete, Table, bindparam, delete

from crew.domain.clock import utcnow
from crew.store.models import artifacts_table
from crew.store.records import NewEvent


def replaced_artifacts_statement() -> Delete:
    """Delete the row of a file about to get a new one (one row per file, see models)."""
    c = artifacts_table.c
    return delete(artifacts_table).where(
        c.run_id == bindparam("run_id", type_=c.run_id.type),
        c.path == bindparam("path", type_=c.path.type),
    )


def checked(table: Table, columns: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse unknown or immutable column names: a typo must not pass silently."""
    names = frozenset(columns)
    if (table.name, names) not in _ACCEPTED:  # the engine updates a few shapes, very often
        unknown = sorted(names - {c.name for c in table.columns} | ({"id"} & names))
        if unknown:
            raise ValueError(f"cannot update {table.name} column(s): {', '.join(unknown)}")
        _ACCEPTED.add((table.name, names))
    return dict(columns)


_ACCEPTED: set[tuple[str, frozenset[str]]] = set()


def event_row(event: NewEvent, now: datetime | None = None) -> dict[str, Any]:
    return {
        "run_id": event.run_id, "node_id": event.node_id, "node_key": event.node_key,
        "type": event.type, "level": event.level, "payload": dict(event.payload),
        "message": event.message, "request_id": event.request_id,
        "timestamp": event.timestamp or now or utcnow(),
    }  # fmt: skip
