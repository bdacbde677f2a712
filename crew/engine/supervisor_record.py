"""The supervisor's calls, recorded with the run they planned.

The supervisor plans before the run exists (in `crew run`, or inside `POST /tasks`),
and the run may then be executed by another process: a worker on another machine.
So its sidecar and usage are stored when the run is created, in the database (the
truth any executor can read) and as the run's local file; the executor that starts the
run reports them (LLM_CALL, ARTIFACT_CREATED) from the stored sidecar.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from crew.engine.files import RunFiles, artifact_row
from crew.engine.sidecar import build_sidecar, usage_of
from crew.engine.store import EngineStore
from crew.llm.client import CallResult

SUPERVISOR_ROLE = "Supervisor"


async def record_supervisor_calls(
    repo: EngineStore,
    files: RunFiles,
    calls: Sequence[CallResult],
    *,
    prompt_max_chars: int,
) -> None:
    """Write the supervisor's sidecar and add its usage to the (new, queued) run."""
    if not calls:
        return
    sidecar = files.write_json(
        files.supervisor_sidecar(),
        build_sidecar(
            run_id=files.run_id,
            node_key=None,
            role=SUPERVISOR_ROLE,
            operation="chat",
            calls=list(calls),
            prompt_max_chars=prompt_max_chars,
        ),
    )
    usage = usage_of(calls)
    async with repo.batch() as writer:
        await writer.add_artifacts([artifact_row(files.run_id, None, "sidecar", sidecar)])
        await writer.add_run_usage(files.run_id, *usage)


async def stored_supervisor_sidecar(
    repo: EngineStore, files: RunFiles
) -> tuple[Any, dict[str, Any]] | None:
    """The supervisor's sidecar row of a run and its decoded content; None if it had none."""
    relative = files.supervisor_sidecar().relative_to(files.runs_root).as_posix()
    for artifact in await repo.list_artifacts(run_id=files.run_id, type="sidecar"):
        if artifact.node_id is None and artifact.path == relative and artifact.content:
            try:
                return artifact, json.loads(artifact.content)
            except ValueError:
                return None
    return None
