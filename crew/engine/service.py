"""Entry points shared by `crew run` and `crew serve`: create, execute, resume a run.

The CLI and the API call these and nothing deeper, so both behave the same way: a run
is created (validated plan, rows, plan.json) and then executed by whichever process
claims it. Claiming is an atomic update on the run row, which is what keeps two
processes from executing the same run.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from crew.agents.roles import resolve_role
from crew.domain.errors import ConflictError, InvalidInputError, NotFoundError
from crew.domain.events import EventLevel, EventType
from crew.domain.plan import NodeType, Plan, is_valid_key, parse_plan
from crew.domain.status import NodeStatus, RunStatus
from crew.engine.files import RunFiles
from crew.engine.gc_policy import freeze_long_lived_objects
from crew.engine.journal import EventListener
from crew.engine.lifecycle import HEARTBEAT_INTERVAL_S, HEARTBEAT_STALE_S
from crew.engine.node_work import NodeWork, render_manager_answer
from crew.engine.options import RunOptions
from crew.engine.runner import RunExecutor
from crew.engine.state import NodeState
from crew.engine.summary import build_summary
from crew.llm.client import CallResult, LLMClient
from crew.settings import Settings

MAIN_ARTIFACT_TYPES = ("markdown", "manager")

_LOCAL_EXECUTORS: dict[str, RunExecutor] = {}
"""Runs this process is executing: a cancel request reaches them at once, not at the
next heartbeat."""


@dataclass(slots=True)
class RunOutcome:
    run_id: str
    status: RunStatus
    summary: dict[str, Any]
    already_completed: bool = False


@dataclass(slots=True)
class SupervisorCalls:
    """The supervisor's calls that produced the plan, recorded when the run starts."""

    calls: list[CallResult] = field(default_factory=list)


def new_owner() -> str:
    """Who executes a run: enough to find the process (host, pid) and tell restarts apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def initial_role(plan: Plan, key: str) -> str | None:
    """The role a node starts with; nodes under a manage node wait for its assignment."""
    node = plan.node(key)
    managed = any(plan.node(dep).type == NodeType.MANAGE for dep in node.deps)
    if managed and not node.suggested_agent_role:
        return None
    return resolve_role(node.suggested_agent_role, node.type).name


def check_run_id(run_id: str) -> None:
    """Refuse a user-chosen run id outside the node-key charset (it names a folder)."""
    if not is_valid_key(run_id):
        raise InvalidInputError(
            f"invalid run id {run_id!r}: use letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit, at most 64 characters)"
        )


async def create_run(
    repo: Any,
    settings: Settings,
    plan: Plan,
    *,
    options: RunOptions,
    run_id: str | None = None,
    request_id: str | None = None,
) -> str:
    """Store a new `queued` run with its nodes and write its plan.json; returns the id."""
    from crew.store.records import NewNode

    if run_id is None:
        run_id = str(uuid.uuid4())
    check_run_id(run_id)
    unknown = [key for key in options.overrides if key not in {n.id for n in plan.nodes}]
    if unknown:
        raise InvalidInputError(f"--override names unknown node(s): {', '.join(unknown)}")
    nodes = [
        NewNode(
            key=node.id,
            position=position,
            title=node.title,
            type=node.type.value,
            role=initial_role(plan, node.id),
            deps=list(node.deps),
            spec=node.to_dict(),
            status=NodeStatus.PENDING.value,
        )
        for position, node in enumerate(plan.nodes)
    ]
    await repo.create_run(
        run_id=run_id,
        title=plan.title,
        status=RunStatus.QUEUED.value,
        options=options.to_json(),
        task_spec=plan.to_dict(),
        request_id=request_id,
        nodes=nodes,
    )
    RunFiles(settings.runs_root, run_id).write_json(
        RunFiles(settings.runs_root, run_id).plan(), plan.to_dict()
    )
    return run_id


async def interrupt_stale_runs(repo: Any, now: datetime | None = None) -> list[str]:
    """Mark runs whose executing process stopped beating as `interrupted`.

    Any reader may call this; the conditional update makes sure only one of them wins
    per run and emits its RUN_INTERRUPTED event.
    """
    now = now or utcnow()
    stale_before = now - timedelta(seconds=HEARTBEAT_STALE_S)
    async with repo.batch() as writer:
        run_ids: list[str] = await writer.interrupt_stale_runs(stale_before, now)
        for run_id in run_ids:
            run = await writer.get_run(run_id)
            payload: dict[str, Any] = {"run_id": run_id, "reason": "heartbeat lost"}
            if run is not None and run.request_id:
                payload["request_id"] = run.request_id
            await writer.add_event(
                run_id=run_id,
                type=EventType.RUN_INTERRUPTED.value,
                level=EventLevel.WARNING.value,
                message="run interrupted: its process stopped (no heartbeat for "
                f"{HEARTBEAT_STALE_S:g}s); resume it with `crew run --resume {run_id}`",
                payload=payload,
                request_id=run.request_id if run is not None else None,
                timestamp=now,
            )
    return run_ids


async def execute_run(
    repo: Any,
    settings: Settings,
    client: LLMClient,
    run_id: str,
    *,
    resume: bool = False,
    overrides: Sequence[str] = (),
    option_changes: dict[str, Any] | None = None,
    supervisor: SupervisorCalls | None = None,
    listeners: Sequence[EventListener] = (),
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
) -> RunOutcome:
    """Claim the run and execute it to the end (or to an interruption)."""
    await interrupt_stale_runs(repo)
    run = await repo.get_run(run_id)
    if run is None:
        raise InvalidInputError(f"no run with id {run_id!r}")
    options = RunOptions.from_json(run.options)
    changes = dict(option_changes or {})
    if overrides:
        changes["overrides"] = tuple(overrides)
    if "llm" in changes:  # per role kind: changing the executor keeps a manager override
        changes["llm"] = {**options.llm, **changes["llm"]}
    if changes:
        options = RunOptions.from_json({**options.to_json(), **changes})
    plan = parse_plan(run.task_spec)
    unknown = [key for key in overrides if key not in {n.id for n in plan.nodes}]
    if unknown:
        raise InvalidInputError(f"--override names unknown node(s): {', '.join(unknown)}")
    if not resume and run.status != RunStatus.QUEUED.value:
        raise ConflictError(f"run {run.id} is {run.status}, not queued; resume it instead")
    if resume and run.status == RunStatus.COMPLETED.value and not overrides:
        summary = await run_summary(repo, settings, run.id)
        return RunOutcome(run.id, RunStatus.COMPLETED, summary, already_completed=True)

    owner = new_owner()
    now = utcnow()
    if not await repo.claim_run(run.id, owner, now, now - timedelta(seconds=HEARTBEAT_STALE_S)):
        current = await repo.get_run(run.id)
        holder = current.owner if current is not None else "another process"
        raise ConflictError(
            f"run {run.id} is already being executed by {holder}; "
            "wait for it to finish or stop that process"
        )
    try:
        files = RunFiles(settings.runs_root, run.id)
        states = await _load_states(repo, plan, run.id)
        work = NodeWork(
            settings=settings,
            client=client,
            plan=plan,
            files=files,
            options=options,
            run_id=run.id,
        )
        work.states = states
        executor = RunExecutor(
            repo=repo,
            work=work,
            run=run,
            plan=plan,
            states=states,
            options=options,
            owner=owner,
            files=files,
            listeners=listeners,
            heartbeat_interval_s=heartbeat_interval_s,
        )
    except BaseException:
        await repo.release_run(run.id, owner)
        raise
    fresh = run.status == RunStatus.QUEUED.value and run.started_at is None
    freeze_long_lived_objects()
    _LOCAL_EXECUTORS[run.id] = executor
    try:
        summary = await executor.execute(
            resumed=not fresh,
            supervisor_calls=supervisor.calls if supervisor else [],
        )
    finally:
        _LOCAL_EXECUTORS.pop(run.id, None)
    return RunOutcome(run.id, RunStatus(summary["status"]), summary)


async def request_cancel(repo: Any, run_id: str) -> RunStatus:
    """Ask a run to stop as `canceled`; returns its status after the request.

    A queued run is canceled on the spot. A running one is flagged in the database: the
    process executing it (this one, or any other through its heartbeat) stops its nodes
    and records the cancellation. A finished run cannot be canceled (ConflictError).
    """
    run = await repo.get_run(run_id)
    if run is None:
        raise NotFoundError(f"no run with id {run_id!r}")
    status = RunStatus(run.status)
    if status.is_terminal:
        raise ConflictError(f"run {run_id} is already {status.value}; nothing to cancel")
    now = utcnow()
    if status == RunStatus.QUEUED:
        async with repo.batch() as writer:
            if await writer.update_run(
                run_id,
                when_status=RunStatus.QUEUED.value,
                status=RunStatus.CANCELED.value,
                ended_at=now,
                error="canceled",
            ):
                for node in await writer.list_nodes(run_id):
                    await writer.update_node(
                        node.id, status=NodeStatus.CANCELED.value, ended_at=now, error="canceled"
                    )
                payload: dict[str, Any] = {"run_id": run_id, "canceled_nodes": []}
                if run.request_id:
                    payload["request_id"] = run.request_id
                await writer.add_event(
                    run_id=run_id,
                    type=EventType.RUN_CANCELED.value,
                    level=EventLevel.WARNING.value,
                    message="run canceled before it started",
                    payload=payload,
                    request_id=run.request_id,
                    timestamp=now,
                )
                return RunStatus.CANCELED
    await repo.update_run(run_id, cancel_requested_at=now)
    local = _LOCAL_EXECUTORS.get(run_id)
    if local is not None:
        local.request_cancel()
    return RunStatus.RUNNING


async def _load_states(repo: Any, plan: Plan, run_id: str) -> dict[str, NodeState]:
    nodes = await repo.list_nodes(run_id)
    artifacts = await repo.list_artifacts(run_id=run_id)
    latest: dict[str, Any] = {}
    for artifact in artifacts:  # oldest first: the last one of a node is its current output
        if artifact.node_id and artifact.type in MAIN_ARTIFACT_TYPES:
            latest[artifact.node_id] = artifact
    states: dict[str, NodeState] = {}
    for record in nodes:
        main = latest.get(record.id)
        output = main.content if main is not None else None
        if main is not None and main.type == "manager" and output:
            output = render_manager_answer(json.loads(output))
        states[record.key] = NodeState(
            key=record.key,
            node_id=record.id,
            position=record.position,
            spec=plan.node(record.key),
            status=NodeStatus(record.status),
            role=record.role,
            checksum=record.checksum,
            attempts=record.attempts,
            output=output,
            output_sha=main.sha256 if main is not None else None,
            output_path=main.path if main is not None else None,
        )
    return states


async def run_summary(repo: Any, settings: Settings, run_id: str) -> dict[str, Any]:
    """The summary of a run as the database has it now (any status)."""
    run = await repo.get_run(run_id)
    if run is None:
        raise InvalidInputError(f"no run with id {run_id!r}")
    plan = parse_plan(run.task_spec)
    states = await _load_states(repo, plan, run_id)
    return build_summary(
        run=run,
        status=RunStatus(run.status),
        states=states,
        sinks=plan.sinks(),
        runs_root=settings.runs_root,
        ended_at=run.ended_at or utcnow(),
        error=run.error,
    )
