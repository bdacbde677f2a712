"""The run summary: `summary.json`, the `crew run --json` object, the API's run totals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from crew.domain.status import NodeStatus, RunStatus
from crew.engine.state import NodeState


def build_summary(
    *,
    run: Any,
    status: RunStatus,
    states: Mapping[str, NodeState],
    sinks: Sequence[str],
    runs_root: Path,
    ended_at: datetime,
    error: str | None = None,
) -> dict[str, Any]:
    """`error` is the run's error (`budget_exceeded`, the failed nodes...), None on success."""
    ordered = sorted(states.values(), key=lambda s: s.position)
    counts = {status.value: 0 for status in NodeStatus}
    for state in ordered:
        counts[state.status.value] += 1
    artifacts = [str(runs_root / path) for s in ordered if (path := s.output_path)]
    final = [
        str(runs_root / path)
        for key in sinks
        if (path := states[key].output_path) and states[key].status == NodeStatus.COMPLETED
    ]
    started = run.started_at or run.created_at
    return {
        "run_id": run.id,
        "status": status.value,
        "title": run.title,
        "nodes": {
            "total": len(ordered),
            "completed": counts["completed"],
            "failed": counts["failed"],
            "skipped": counts["skipped"],
        },
        "artifacts": artifacts,
        "final": final,
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "cost_usd": None if run.cost_unknown else round(run.cost_usd, 8),
        "duration_ms": round((ended_at - started).total_seconds() * 1000, 1),
        "error": error,
    }
