"""Rows for the API benchmarks: many finished runs of two nodes each, bulk-inserted."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any


def finished_runs(
    count: int, t0: datetime, *, last_id: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`count` completed runs one second apart, and their nodes (runs, nodes)."""
    runs: list[dict[str, Any]] = []
    nodes: list[dict[str, Any]] = []
    for i in range(count):
        run_id = last_id if last_id is not None and i == count - 1 else str(uuid.uuid4())
        at = t0 + timedelta(seconds=i)
        runs.append(
            {
                "id": run_id,
                "title": f"Rapport {i}",
                "status": "completed",
                "created_at": at,
                "started_at": at,
                "ended_at": at + timedelta(seconds=30),
                "updated_at": at,
                "request_id": None,
                "options": {},
                "task_spec": {"title": f"Rapport {i}"},
                "input_tokens": 1200,
                "output_tokens": 800,
                "cost_usd": 0.0,
                "cost_unknown": False,
            }
        )
        for k in range(2):
            nodes.append(
                {
                    "id": str(uuid.uuid4()),
                    "run_id": run_id,
                    "key": f"n{k}",
                    "position": k,
                    "title": f"Node {k}",
                    "type": "task",
                    "role": "Writer_FR",
                    "status": "completed",
                    "deps": [],
                    "spec": {},
                    "attempts": 1,
                    "input_tokens": 600,
                    "output_tokens": 400,
                    "cost_usd": 0.0,
                    "created_at": at,
                }
            )
    return runs, nodes
