"""JSON views of stored records, shared by `crew runs`, `crew events` and the API."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

from crew.domain.clock import utcnow

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
    {
        "heartbeat_at",
        "claimed_by",
        "idempotency_key",
        "lease_generation",
        "reserved_tokens",
        "reserved_cost_usd",
    }
)
"""Execution bookkeeping: meaningful to the engine, noise to a reader. A run's owner,
lease expiry and recoveries stay visible: operators need to see who holds what."""


def lease_state(run: Any, now: datetime | None = None) -> str:
    """`held` (an executor holds the run), `expired` (its executor stopped: a worker
    will take it over) or `free` (nobody holds it)."""
    if getattr(run, "owner", None) is None:
        return "free"
    expires = getattr(run, "lease_expires_at", None)
    if expires is None or expires < (now or utcnow()):
        return "expired"
    return "held"


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


def worker_item(worker: Any, runs: list[str], lease_s: float) -> dict[str, Any]:
    """A registered executor for `crew workers list` and `GET /workers`.

    `alive` is false once it has missed two lease periods of heartbeats: it died
    without deregistering, and its runs are (or will be) taken over.
    """
    item = jsonable(worker, only=tuple(f.name for f in fields(worker)))
    silent_for = (utcnow() - worker.heartbeat_at).total_seconds()
    item["alive"] = silent_for <= 2 * lease_s
    item["runs"] = runs
    item["runs_held"] = len(runs)  # the database's word, fresher than the last beat
    return item
