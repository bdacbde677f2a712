"""The run summary: `summary.json`, the `crew run --json` object, the API's run totals.

It says which providers answered the run's calls, and how many calls a fallback
answered: a run answered partly by another provider than the one configured is a
different run, and the summary must not hide it. The counts come from the run's
sidecars (every answered call is in one, failed attempts and the supervisor included),
so a resumed run counts its earlier sessions too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from crew.domain.errors import CrewError
from crew.domain.status import NodeStatus, RunStatus
from crew.engine.state import NodeState
from crew.llm.ledger import CallLedger


def build_summary(
    *,
    run: Any,
    status: RunStatus,
    states: Mapping[str, NodeState],
    sinks: Sequence[str],
    runs_root: Path,
    ended_at: datetime,
    error: str | None = None,
    sidecars: Iterable[str] | None = None,
) -> dict[str, Any]:
    """`error` is the run's error (`budget_exceeded`, the failed nodes...), None on success.

    `sidecars`: the contents of the run's sidecars, from the database (the truth, on any
    machine); without them, the sidecar files under `runs_root` are read.
    """
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
        **(
            provider_counts(runs_root / run.id)
            if sidecars is None
            else provider_counts_of(sidecars)
        ),
    }


def provider_counts(folder: Path) -> dict[str, Any]:
    """`providers` (answered calls per provider) and `fallback_calls` (how many of them a
    fallback provider answered), from the sidecars under a run's folder."""
    texts = []
    for path in sorted(folder.rglob("*.llm.json")):
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except OSError:
            continue  # a sidecar being replaced: the counts stay a lower bound
    return provider_counts_of(texts)


def provider_counts_of(sidecars: Iterable[str]) -> dict[str, Any]:
    """provider_counts over sidecar texts (files, or the artifact rows' content)."""
    providers: dict[str, int] = {}
    fallback = 0
    for text in sidecars:
        try:
            sidecar = json.loads(text)
        except ValueError:
            continue
        if not isinstance(sidecar, dict):
            continue
        counts = sidecar.get("providers")
        if not isinstance(counts, dict):  # written before sidecars had counts
            provider = sidecar.get("provider")
            counts = {provider: sidecar.get("calls", 1)} if isinstance(provider, str) else {}
        for name, count in counts.items():
            if isinstance(count, int):
                providers[name] = providers.get(name, 0) + count
        answered_by_fallback = sidecar.get("fallback_calls")
        if isinstance(answered_by_fallback, int):
            fallback += answered_by_fallback
        elif sidecar.get("fallback_from"):
            fallback += 1
    return {"providers": providers, "fallback_calls": fallback}


def failure_summary(
    error: CrewError, run_id: str | None, spent: CallLedger | None = None
) -> dict[str, Any]:
    """The `crew run --json` object of a run that ended without a summary: planning that
    failed (no run exists: `run_id` is None), or an interruption (exit 130).

    `spent` holds the supervisor's calls, so a failed planning still shows what it
    cost.
    """
    interrupted = error.exit_code == 130
    summary: dict[str, Any] = {
        "run_id": run_id,
        "status": "interrupted" if interrupted else "failed",
        "error": error.message,
        "error_code": error.code,
        "exit_code": error.exit_code,
    }
    if error.problems:
        summary["problems"] = list(error.problems)
    if spent is not None and spent.answered:
        input_tokens, output_tokens, cost = spent.usage()
        summary["supervisor"] = {
            "calls": len(spent.answered),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": None if cost is None else round(cost, 8),
        }
    return summary
