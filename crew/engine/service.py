"""Entry points shared by `crew run` and `crew serve`: create, execute, resume a run.

The CLI and the API call these and nothing deeper, so both behave the same way: a run
is created (validated plan, rows, plan.json) and then executed by whichever process
claims it. Claiming is an atomic update on the run row, which is what keeps two
processes from executing the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from crew.agents.roles import resolve_role
from crew.domain.clock import utcnow
from crew.domain.errors import (
    ConflictError,
    CrewError,
    InvalidInputError,
    LeaseLostError,
    NotFoundError,
    UnavailableError,
)
from crew.domain.events import EventLevel, EventType
from crew.domain.plan import NodeType, Plan, is_valid_key, parse_plan
from crew.domain.status import EndReason, NodeStatus, ResumeReason, RunStatus
from crew.engine.files import RunFiles
from crew.engine.gc_policy import freeze_long_lived_objects
from crew.engine.journal import EventListener
from crew.engine.node_work import render_manager_answer
from crew.engine.options import RunOptions
from crew.engine.runner import RunExecutor
from crew.engine.state import NodeState
from crew.engine.store import EngineStore
from crew.engine.summary import build_summary
from crew.engine.supervisor_record import record_supervisor_calls, stored_supervisor_sidecar
from crew.llm.client import CallResult, LLMClient
from crew.settings import Settings
from crew.store.leases import Fence
from crew.store.records import Claim

log = logging.getLogger("crew.engine")

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
    repo: EngineStore,
    settings: Settings,
    plan: Plan,
    *,
    options: RunOptions,
    run_id: str | None = None,
    request_id: str | None = None,
    owner: str | None = None,
    supervisor: SupervisorCalls | None = None,
    notify: bool = True,
) -> str:
    """Store a new `queued` run with its nodes and write its plan.json; returns the id.

    With `owner`, the new run is already leased to that process (a foreground `crew
    run` about to execute it), so no worker takes it in between. The supervisor's calls
    that produced the plan are stored with the run: whoever executes it reports them.
    """
    from crew.store.records import NewNode

    if run_id is None:
        run_id = str(uuid.uuid4())
    check_run_id(run_id)
    unknown = [key for key in options.rerun if key not in {n.id for n in plan.nodes}]
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
    now = utcnow()
    await repo.create_run(
        run_id=run_id,
        title=plan.title,
        status=RunStatus.QUEUED.value,
        options=options.to_json(),
        task_spec=plan.to_dict(),
        request_id=request_id,
        nodes=nodes,
        owner=owner,
        lease_expires_at=lease_until(settings, now) if owner else None,
    )
    files = RunFiles(settings.runs_root, run_id)
    files.write_json(files.plan(), plan.to_dict())
    if supervisor is not None and supervisor.calls:
        await record_supervisor_calls(
            repo, files, supervisor.calls, prompt_max_chars=settings.sidecar_prompt_max_chars
        )
    if owner is None and notify:
        await repo.notify_run_queued(run_id)
    return run_id


RESUMABLE_BY_REQUEST = (
    RunStatus.FAILED.value,
    RunStatus.INTERRUPTED.value,
    RunStatus.CANCELED.value,
)


async def requeue_for_resume(repo: EngineStore, run_id: str) -> None:
    """Queue a failed, interrupted or canceled run again (a resume asked for through
    the API); the executor that claims it resumes it (RUN_RESUMED, reason `manual`)."""
    if not await repo.update_run(
        run_id,
        when_status=RESUMABLE_BY_REQUEST,
        status=RunStatus.QUEUED.value,
        owner=None,
        lease_expires_at=None,
        error_code=None,
        cancel_requested_at=None,
    ):
        run = await repo.get_run(run_id)
        if run is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        raise ConflictError(
            f"run {run_id} is {run.status}; only failed, interrupted or canceled runs "
            "can be resumed"
        )
    await repo.notify_run_queued(run_id)


def lease_until(settings: Settings, now: datetime) -> datetime:
    return now + timedelta(seconds=settings.run_lease_s)


def owner_alive(owner: str | None) -> bool | None:
    """Whether the process named by an owner id is alive: None when it cannot be told
    (another host), so only the lease's expiry decides."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it is just not ours
        return True
    return True


async def claim_by_id(repo: EngineStore, settings: Settings, run: Any, owner: str) -> Claim:
    """Claim one run for this process, or say who holds it and until when.

    A holder on this host whose process is gone does not make anyone wait for its lease
    to run out: the run is taken from it at once.
    """
    now = utcnow()
    until = lease_until(settings, now)
    claim: Claim | None = await repo.claim_run(run.id, owner, now, until, when_status=run.status)
    if claim is not None:
        return claim
    current = await repo.get_run(run.id)
    if current is None:
        raise NotFoundError(f"no run with id {run.id!r}")
    if current.status != run.status:
        raise ConflictError(f"run {run.id} became {current.status} meanwhile; nothing to do")
    alive = owner_alive(current.owner)
    if alive is False and current.owner:
        claim = await repo.claim_run(
            run.id,
            owner,
            now,
            until,
            dead_owner=(current.owner, current.lease_generation),
            when_status=run.status,
        )
        if claim is not None:
            return claim
        current = await repo.get_run(run.id) or current
    expires = current.lease_expires_at
    when = (
        f"its lease runs out at {expires.isoformat(timespec='seconds')}"
        if expires is not None
        else "its lease has no expiry"
    )
    state = {True: "alive", None: "on another host", False: "no longer running"}[
        owner_alive(current.owner)
    ]
    raise ConflictError(
        f"run {run.id} is held by {current.owner} ({state}); {when}, and then a worker "
        "or `crew run --resume` can continue it"
    )


def resume_reason_of(run: Any, claim: Claim, *, manual: bool) -> ResumeReason | None:
    """How this execution continues the run; None for its first start."""
    if run.status == RunStatus.QUEUED.value and run.started_at is None:
        return None
    if manual:
        return ResumeReason.MANUAL
    if claim.previous_status == RunStatus.RUNNING.value:
        # Its owner's lease ran out: another executor, or the same one after a stall
        # (that one is not counted as a recovery).
        return ResumeReason.LEASE_EXPIRED
    # Queued again: given back by an executor that shut down (still unfinished), or a
    # resume asked for through the API (the run had ended).
    return ResumeReason.RELEASED if run.ended_at is None else ResumeReason.MANUAL


async def execute_run(
    repo: EngineStore,
    settings: Settings,
    client: LLMClient,
    run_id: str,
    *,
    resume: bool = False,
    rerun: Sequence[str] = (),
    option_changes: dict[str, Any] | None = None,
    listeners: Sequence[EventListener] = (),
    heartbeat_interval_s: float | None = None,
    owner: str | None = None,
) -> RunOutcome:
    """Claim the run by id and execute it to the end (or to an interruption)."""
    run = await repo.get_run(run_id)
    if run is None:
        raise InvalidInputError(f"no run with id {run_id!r}")
    if not resume and run.status != RunStatus.QUEUED.value:
        raise ConflictError(f"run {run.id} is {run.status}, not queued; resume it instead")
    if resume and run.status == RunStatus.COMPLETED.value and not rerun:
        summary = await run_summary(repo, settings, run.id)
        return RunOutcome(run.id, RunStatus.COMPLETED, summary, already_completed=True)
    keys = {str(node.get("id")) for node in run.task_spec.get("plan", []) if isinstance(node, dict)}
    unknown = [key for key in rerun if key not in keys]
    if unknown:  # the user's flags: refused before the run is touched
        raise InvalidInputError(f"--override names unknown node(s): {', '.join(unknown)}")
    owner = owner or new_owner()
    claim = await claim_by_id(repo, settings, run, owner)
    return await execute_claimed(
        repo,
        settings,
        client,
        claim,
        manual=resume,
        rerun=rerun,
        option_changes=option_changes,
        listeners=listeners,
        heartbeat_interval_s=heartbeat_interval_s,
    )


async def execute_claimed(
    repo: EngineStore,
    settings: Settings,
    client: LLMClient,
    claim: Claim,
    *,
    manual: bool = False,
    rerun: Sequence[str] = (),
    option_changes: dict[str, Any] | None = None,
    listeners: Sequence[EventListener] = (),
    heartbeat_interval_s: float | None = None,
    on_executor: Callable[[RunExecutor], None] | None = None,
) -> RunOutcome:
    """Execute a run this process holds the lease of (see `claim_by_id`, workers).

    A run that cannot even be set up (its stored plan no longer validates, say) ends
    `failed` with `setup_failed`: handing it back to the queue would have the next
    executor claim it again at once, forever, and block the runs behind it.
    """
    run = await repo.get_run(claim.run_id)
    if run is None:
        raise NotFoundError(f"no run with id {claim.run_id!r}")
    reason = resume_reason_of(run, claim, manual=manual)
    if reason == ResumeReason.LEASE_EXPIRED and claim.recoveries > settings.run_max_recoveries:
        error = (
            f"too many recoveries: the run's executor stopped {claim.recoveries} time(s) "
            f"(RUN_MAX_RECOVERIES={settings.run_max_recoveries}); resume it by hand once "
            "the cause is fixed"
        )
        return await _fail_run(repo, settings, run, claim, error, EndReason.TOO_MANY_RECOVERIES)
    try:
        options = RunOptions.from_json(run.options)
        changes = dict(option_changes or {})
        if rerun:
            changes["rerun"] = tuple(rerun)
        if "llm" in changes:  # per role kind: changing the executor keeps a manager override
            changes["llm"] = {**options.llm, **changes["llm"]}
        if changes:
            options = RunOptions.from_json({**options.to_json(), **changes})
        plan = parse_plan(run.task_spec)
        files = RunFiles(settings.runs_root, run.id, max_bytes=settings.artifact_max_bytes)
        states, artifacts = await _load_states_and_artifacts(repo, plan, run.id)
        # This machine may lack the run's files (another RUNS_ROOT), or someone deleted
        # or changed one: the database copy is the truth.
        await asyncio.to_thread(restore_files, files, plan, artifacts)
        stored_supervisor = await stored_supervisor_sidecar(repo, files) if reason is None else None
        executor = RunExecutor(
            repo=repo,
            settings=settings,
            client=client,
            run=run,
            plan=plan,
            states=states,
            options=options,
            claim=claim,
            files=files,
            listeners=listeners,
            lease_s=settings.run_lease_s,
            heartbeat_interval_s=heartbeat_interval_s,
        )
    except (asyncio.CancelledError, UnavailableError):
        # Stopped, or the database went away for a moment: the run is fine, give it back.
        with contextlib.suppress(UnavailableError):
            await repo.release_run(claim.run_id, claim.owner, claim.generation)
        raise
    except Exception as failure:
        log.error("run %s cannot be set up: %s", run.id, failure, exc_info=True)
        await _fail_run(
            repo, settings, run, claim, f"cannot set up the run: {failure}", EndReason.SETUP_FAILED
        )
        raise
    freeze_long_lived_objects()
    _LOCAL_EXECUTORS[run.id] = executor
    if on_executor is not None:
        on_executor(executor)
    try:
        summary = await executor.execute(resume_reason=reason, supervisor=stored_supervisor)
    finally:
        _LOCAL_EXECUTORS.pop(run.id, None)
    return RunOutcome(run.id, RunStatus(summary["status"]), summary)


async def _fail_run(
    repo: EngineStore,
    settings: Settings,
    run: Any,
    claim: Claim,
    error: str,
    reason: EndReason,
) -> RunOutcome:
    """End a claimed run `failed` without executing it (a poison run, an impossible
    setup): its unfinished nodes canceled, RUN_FAILED with the reason, the lease given up."""
    now = utcnow()
    payload: dict[str, Any] = {
        "run_id": run.id,
        "status": RunStatus.FAILED.value,
        "error": error,
        "error_code": reason.value,
        "recoveries": claim.recoveries,
        "previous_owner": claim.previous_owner,
    }
    if run.request_id:
        payload["request_id"] = run.request_id
    async with repo.batch() as writer:
        if not await writer.holds_lease(Fence(run.id, claim.owner, claim.generation)):
            raise LeaseLostError(f"run {run.id}: lost its lease before it could be failed")
        for node in await writer.list_nodes(run.id):
            if node.status in (NodeStatus.RUNNING.value, NodeStatus.PENDING.value):
                await writer.update_node(
                    node.id, status=NodeStatus.CANCELED.value, ended_at=now, error=reason.value
                )
        await writer.update_run(
            run.id,
            status=RunStatus.FAILED.value,
            ended_at=now,
            error=error,
            error_code=reason.value,
        )
        await writer.release_run(run.id, claim.owner, claim.generation)
        await writer.add_event(
            run_id=run.id,
            type=EventType.RUN_FAILED.value,
            level=EventLevel.ERROR.value,
            message=f"run failed: {error}",
            payload=payload,
            request_id=run.request_id,
            timestamp=now,
        )
    try:
        summary = await run_summary(repo, settings, run.id)
    except CrewError:  # a plan that no longer validates has no summary to build
        summary = {"run_id": run.id, "status": RunStatus.FAILED.value, "error": error}
        summary["error_code"] = reason.value
    return RunOutcome(run.id, RunStatus.FAILED, summary)


async def request_cancel(repo: EngineStore, run_id: str) -> RunStatus:
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
            # Only while nobody holds it: a claimed run is about to start, and is stopped
            # by its executor through the cancel request below instead.
            if await writer.cancel_unclaimed_run(run_id, now):
                canceled = []
                for node in await writer.list_nodes(run_id):
                    if node.status == NodeStatus.COMPLETED.value:
                        continue  # a run given back to the queue keeps what it did
                    canceled.append(node.key)
                    await writer.update_node(
                        node.id, status=NodeStatus.CANCELED.value, ended_at=now, error="canceled"
                    )
                payload: dict[str, Any] = {"run_id": run_id, "canceled_nodes": canceled}
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


async def _load_states(repo: EngineStore, plan: Plan, run_id: str) -> dict[str, NodeState]:
    states, _ = await _load_states_and_artifacts(repo, plan, run_id)
    return states


async def _load_states_and_artifacts(
    repo: EngineStore, plan: Plan, run_id: str
) -> tuple[dict[str, NodeState], list[Any]]:
    """Each node's state, its output taken from the database (not from a local file)."""
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
    return states, artifacts


def restore_files(files: RunFiles, plan: Plan, artifacts: Sequence[Any]) -> int:
    """Write back every file of the run whose local copy is missing or differs from the
    database's; returns how many were written. Temporary copies a killed writer left
    behind are removed (this process holds the run's lease: no other writer is live)."""
    files.remove_stale_temporaries()
    from crew.engine.files import to_json_text

    restored = int(
        files.restore(
            files.plan().relative_to(files.runs_root).as_posix(), to_json_text(plan.to_dict())
        )
    )
    for artifact in artifacts:
        if artifact.content is not None and files.restore(artifact.path, artifact.content):
            restored += 1
    return restored


async def run_summary(repo: EngineStore, settings: Settings, run_id: str) -> dict[str, Any]:
    """The summary of a run as the database has it now (any status)."""
    run = await repo.get_run(run_id)
    if run is None:
        raise InvalidInputError(f"no run with id {run_id!r}")
    plan = parse_plan(run.task_spec)
    states, artifacts = await _load_states_and_artifacts(repo, plan, run_id)
    summary = build_summary(
        run=run,
        status=RunStatus(run.status),
        states=states,
        sinks=plan.sinks(),
        runs_root=settings.runs_root,
        ended_at=run.ended_at or utcnow(),
        error=run.error,
        sidecars=[a.content for a in artifacts if a.type == "sidecar" and a.content],
    )
    summary["error_code"] = run.error_code
    return summary
