"""How events are shown: one plain line for humans, one JSON object for machines.

Shared by `crew run` (its progress on stderr) and `crew events tail`, so an event reads
the same wherever it is seen.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any


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
