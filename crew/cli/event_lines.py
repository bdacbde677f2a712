"""How events are shown: one plain line for humans, one JSON object for machines.

Shared by `crew run` (its progress on stderr) and `crew events tail`, so an event reads
the same wherever it is seen. With LOG_FORMAT=json, `crew run` sends its progress
through the log instead (`log_event`), so stderr holds nothing but JSON lines that a log
shipper can read, each naming its run and node.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crew.engine.journal import EngineEvent

event_log = logging.getLogger("crew.events")
progress_log = logging.getLogger("crew.run")
LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def event_line(
    *,
    event_id: int | None,
    timestamp: datetime,
    type: str,
    level: str,
    message: str,
    node_key: str | None = None,
) -> str:
    marker = {"warning": "!", "error": "x"}.get(level, " ")
    clock = timestamp.astimezone().strftime("%H:%M:%S.%f")[:-3]
    ident = f"#{event_id} " if event_id is not None else ""
    node = f" [{node_key}]" if node_key else ""
    return f"{clock} {marker} {ident}{type}{node} {message}"


def event_json(
    *,
    event_id: int | None,
    run_id: str,
    timestamp: datetime,
    type: str,
    level: str,
    message: str,
    payload: dict[str, Any],
    node_key: str | None = None,
    request_id: str | None = None,
) -> str:
    return json.dumps(
        {
            "id": event_id,
            "run_id": run_id,
            "timestamp": timestamp.isoformat(),
            "type": type,
            "level": level,
            "node_key": node_key,
            "message": message,
            "payload": payload,
            "request_id": request_id,
        },
        ensure_ascii=False,
    )


def log_event(event: EngineEvent) -> None:
    """One log record for a run's event: `msg` is the event's human message, and the
    record names the run, the node (None for run events), the event type and its id."""
    level = LOG_LEVELS.get(event.level.value, logging.INFO)
    if not event_log.isEnabledFor(level):
        return
    event_log.log(
        level,
        "%s",
        event.message,
        extra={
            "run_id": event.run_id,
            "node_key": event.node_key,
            "event": event.type.value,
            "event_id": event.id,
        },
    )


def log_progress(text: str) -> None:
    """A progress message of `crew run` that is not an event (planning, dry-run preview)."""
    progress_log.info("%s", text)
