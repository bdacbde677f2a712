"""JSON views of stored records, shared by `crew runs`, `crew events` and the API."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

RUN_LIST_FIELDS = (
    "id",
    "title",
    "status",
    "created_at",
    "started_at",
    "ended_at",
    "request_id",
    "input_tokens",
    "output_tokens",
    "error",
)
HIDDEN_FIELDS = frozenset(
    {"owner", "heartbeat_at", "claimed_by", "lease_expires_at", "idempotency_key"}
)
"""Execution bookkeeping: meaningful to the engine, noise to a reader."""


def jsonable(record: Any, *, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A record's fields with timestamps as ISO 8601 strings (with their UTC offset)."""
    names = only or tuple(f.name for f in fields(record) if f.name not in HIDDEN_FIELDS)
    result: dict[str, Any] = {}
    for name in names:
        value = getattr(record, name)
        result[name] = value.isoformat() if isinstance(value, datetime) else value
    return result


def run_cost(run: Any) -> float | None:
    """None when a call's price was unknown: a partial sum would understate the spend."""
    return None if run.cost_unknown else round(run.cost_usd, 8)


def run_list_item(run: Any, counts: dict[str, int]) -> dict[str, Any]:
    item = jsonable(run, only=RUN_LIST_FIELDS)
    item["cost_usd"] = run_cost(run)
    item["nodes"] = {
        "total": sum(counts.values()),
        **{status: counts.get(status, 0) for status in ("completed", "failed", "skipped")},
    }
    return item
