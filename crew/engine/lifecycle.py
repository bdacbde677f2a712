"""A run's lifecycle around its scheduling: start or resume, heartbeat, finish, stop.

These are the run-level transitions (RUN_STARTED/PLAN_CREATED or RUN_RESUMED at the
beginning; RUN_COMPLETED/FAILED, RUN_CANCELED or RUN_INTERRUPTED at the end) and the
run-level state they share with the scheduler in runner.py: ownership, cancel
requests, the budget.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from crew.domain.clock import utcnow
from crew.domain.errors import LeaseLostError
from crew.domain.events import EventLevel, EventType
from crew.domain.plan import Plan
from crew.domain.status import EndReason, NodeStatus, ResumeReason, RunStatus
from crew.engine.budget import RunBudget
from crew.engine.files import RunFiles, WrittenFile, artifact_row, to_json_text
from crew.engine.journal import EventListener, Journal
from crew.engine.node_work import NodeWork
from crew.engine.options import RunOptions
from crew.engine.shared_budget import SharedRunBudget
from crew.engine.state import NodeState
from crew.engine.store import EngineStore
from crew.engine.summary import build_summary
from crew.engine.write_queue import WriteQueue
from crew.llm.client import LLMClient
from crew.settings import Settings
from crew.store.leases import Fence
from crew.store.records import Claim

log = logging.getLogger("crew.engine")

DEFAULT_LEASE_S = 15.0
"""How long a claim lasts without renewal (RUN_LEASE_S); the owner renews it three
times per lease, so one late renewal does not lose the run."""


class RunLifecycle:
    """Run-level state and transitions; RunExecutor adds the scheduling."""

    def __init__(
        self,
        *,
        repo: EngineStore,
        settings: Settings,
        client: LLMClient,
        run: Any,
        plan: Plan,
        states: dict[str, NodeState],
        options: RunOptions,
        claim: Claim,
        files: RunFiles,
        listeners: Sequence[EventListener] = (),
        lease_s: float = DEFAULT_LEASE_S,
        heartbeat_interval_s: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.repo = repo
        self.run = run
        self.plan = plan
        self.states = states
        self.options = options
        self.claim = claim
        self.owner = claim.owner
        self.fence = Fence(claim.run_id, claim.owner, claim.generation)
        self.files = files
        self.listeners = listeners
        self.lease_s = lease_s
        self.heartbeat_interval_s = heartbeat_interval_s or lease_s / 3
        self.rng = rng or random.Random()
        self.dependents = plan.dependents()
        # Every write of this executor is fenced on its lease: once another executor
        # holds the run, nothing more of ours commits.
        self.queue = WriteQueue(repo, fence=self.fence, on_lease_lost=self._lease_lost)
        self.journal = Journal(
            run_id=run.id, request_id=run.request_id, queue=self.queue, listeners=listeners
        )
        # Every LLM call of this run goes through the run's budget (when it has one),
        # starting from what the run has spent so far (the supervisor's calls included:
        # they were stored with the run), and shared through the run row.
        self.budget: RunBudget | None = SharedRunBudget.for_claimed_run(
            repo,
            self.fence,
            max_cost_usd=options.max_cost_usd,
            max_tokens=options.max_tokens,
            run=run,
        )
        self.work = NodeWork(
            settings=settings,
            client=client.with_budget(self.budget) if self.budget is not None else client,
            plan=plan,
            files=files,
            options=options,
            run_id=run.id,
            states=states,
            journal=self.journal,
        )
        self._running: dict[asyncio.Task[bool], str] = {}
        # Nodes holding a concurrency slot: from their start until their LLM call has
        # answered. Writing a node's files and rows happens outside the slot, so the
        # next node's call starts while the previous one is still being stored.
        self._calling: set[str] = set()
        self._waiting: dict[str, int] = {}
        """Per node, how many of its dependencies have not completed yet."""
        self._ready: list[tuple[int, str]] = []
        """Heap of (plan position, key) of the nodes whose dependencies have completed."""
        self._main_task: asyncio.Task[Any] | None = None
        self._cancel_requested = False
        self._ownership_lost = False
        self._draining = False
        """Set by `drain()`: no new node starts; the run goes back to the queue."""
        self._releasing = False
        """Set once this process starts recording the run's end (and releasing it)."""
        self._budget_reported = False
        self._unavailable: set[str] = set()
        """Nodes that failed because no LLM provider could answer (exit 4, not 1)."""

    def _lease_lost(self, error: Exception) -> None:
        """A fenced write found another owner: stop at once, writing nothing more."""
        if self._ownership_lost:
            return
        log.warning("%s; this process stops executing the run", error)
        self._ownership_lost = True
        if self._main_task is not None:
            self._main_task.cancel()

    def request_cancel(self) -> None:
        """Stop the run as `canceled` (a user asked), not `interrupted` (a process stopped)."""
        if self._cancel_requested:
            return
        self._cancel_requested = True
        if self._main_task is not None:
            self._main_task.cancel()

    def _budget_spent(self) -> bool:
        return self.budget is not None and self.budget.exceeded is not None

    async def _begin_start(self, supervisor: tuple[Any, dict[str, Any]] | None) -> None:
        """First start: RUN_STARTED, PLAN_CREATED, then the supervisor's call if any.

        The supervisor's sidecar and usage were stored with the run when it was created
        (crew/engine/supervisor_record.py); this reports them.
        """
        journal = self.journal
        ordered = sorted(self.states.values(), key=lambda s: s.position)
        events = [
            journal.event(
                EventType.RUN_STARTED,
                f"run started: {self.run.title}",
                title=self.run.title,
                nodes_total=len(ordered),
                dry_run=self.options.dry_run,
                max_concurrency=self.options.max_concurrency,
                owner=self.owner,
            ),
            journal.event(
                EventType.PLAN_CREATED,
                f"plan with {len(ordered)} node(s)"
                + (" from the supervisor" if supervisor else ""),
                source="supervisor" if supervisor else "file",
                nodes=[
                    {
                        "key": s.key,
                        "title": s.spec.title,
                        "type": s.spec.type.value,
                        "role": s.role,
                        "deps": list(s.spec.deps),
                    }
                    for s in ordered
                ],
            ),
        ]
        if supervisor is not None:
            artifact, sidecar = supervisor
            provider, model = sidecar.get("provider"), sidecar.get("model")
            events.append(
                journal.event(
                    EventType.LLM_CALL,
                    f"{provider}/{model} planned the run",
                    role="Supervisor",
                    provider=provider,
                    model=model,
                    response_model=sidecar.get("response_model"),
                    input_tokens=sidecar.get("input_tokens", 0),
                    output_tokens=sidecar.get("output_tokens", 0),
                    cost_usd=sidecar.get("cost_usd"),
                    attempts=sidecar.get("attempts", 1),
                    finish_reason=sidecar.get("finish_reason"),
                    usage_estimated=sidecar.get("usage_estimated", False),
                )
            )
            events.append(
                journal.event(
                    EventType.ARTIFACT_CREATED,
                    f"supervisor wrote {artifact.path}",
                    artifact_type="sidecar",
                    path=artifact.path,
                    size=artifact.size,
                    sha256=artifact.sha256,
                )
            )
        now = utcnow()
        run_id = self.run.id

        async def apply(writer: Any) -> None:
            # cancel_requested_at stays: a cancel asked for between the claim and this
            # start is honoured at the first heartbeat.
            await writer.update_run(
                run_id, status=RunStatus.RUNNING.value, started_at=now, ended_at=None, error=None
            )

        await journal.commit(*events, apply=apply)

    async def _begin_resume(self, reason: ResumeReason = ResumeReason.MANUAL) -> None:
        """Resume: nodes that did not complete go back to `pending`; completed ones are
        re-checked against their checksum when they come up in the schedule.

        A run taken over automatically (its owner's lease expired, or the owner gave it
        back on shutdown) keeps a cancel request made meanwhile; a person resuming it
        by hand clears it.
        """
        reset = [
            s
            for s in sorted(self.states.values(), key=lambda s: s.position)
            if s.status != NodeStatus.COMPLETED
        ]
        for state in reset:
            state.status = NodeStatus.PENDING
        ids = [s.node_id for s in reset]
        run_id = self.run.id
        # The options this resume executes with (flags may have changed them) are stored,
        # so a later resume keeps them; one-off re-runs (--override) are not.
        stored_options = {**self.options.to_json(), "rerun": []}
        event = self.journal.event(
            EventType.RUN_RESUMED,
            f"run resumed: {len(reset)} node(s) to run, "
            f"{len(self.states) - len(reset)} completed node(s) to re-check",
            reset_nodes=[s.key for s in reset],
            rerun=list(self.options.rerun),
            reason=reason.value,
            previous_owner=self.claim.previous_owner,
            recoveries=self.claim.recoveries,
        )
        columns: dict[str, Any] = {
            "status": RunStatus.RUNNING.value,
            "ended_at": None,
            "error": None,
            "error_code": None,
            "options": stored_options,
        }
        if reason == ResumeReason.MANUAL:
            columns["cancel_requested_at"] = None

        async def apply(writer: Any) -> None:
            await writer.update_run(run_id, **columns)
            for node_id in ids:
                await writer.update_node(
                    node_id, status=NodeStatus.PENDING.value, ended_at=None, error=None
                )

        await self.journal.commit(event, apply=apply)

    async def _finish(self) -> dict[str, Any]:
        self._releasing = True
        failed = sorted(s.key for s in self.states.values() if s.status == NodeStatus.FAILED)
        budget_hit = self._budget_spent()
        status = RunStatus.FAILED if failed or budget_hit else RunStatus.COMPLETED
        error = f"{len(failed)} node(s) failed: {', '.join(failed)}" if failed else None
        reason = EndReason.NODE_FAILED if failed else EndReason.COMPLETED
        if budget_hit:
            error, reason = "budget_exceeded", EndReason.BUDGET_EXCEEDED
        elif failed and set(failed) <= self._unavailable:
            reason = EndReason.PROVIDER_UNAVAILABLE
        error_code = None if reason == EndReason.COMPLETED else reason.value
        now = utcnow()
        summary, written = await self._write_summary(status, now, error, error_code)
        event_type = EventType.RUN_FAILED if status == RunStatus.FAILED else EventType.RUN_COMPLETED
        level = EventLevel.ERROR if status == RunStatus.FAILED else EventLevel.INFO
        message = f"run {status.value}" + (f": {error}" if error else "")
        event = self.journal.event(
            event_type,
            message,
            level=level,
            status=status.value,
            nodes=summary["nodes"],
            input_tokens=summary["input_tokens"],
            output_tokens=summary["output_tokens"],
            cost_usd=summary["cost_usd"],
            duration_ms=summary["duration_ms"],
            error=error,
        )
        run_id = self.run.id
        owner = self.owner

        async def apply(writer: Any) -> None:
            await writer.add_artifacts([artifact_row(run_id, None, "summary", written)])
            await writer.update_run(
                run_id, status=status.value, ended_at=now, error=error, error_code=error_code
            )
            await writer.release_run(run_id, owner)

        await self.journal.commit(event, apply=apply)
        await self.files.write_prepared([written])  # after the fenced commit
        return summary

    async def _write_summary(
        self,
        status: RunStatus,
        ended_at: datetime,
        error: str | None = None,
        error_code: str | None = None,
    ) -> tuple[dict[str, Any], WrittenFile]:
        # Outside the fenced queue, so a run whose lease was lost must not write the
        # file either: its new owner writes its own.
        if self._ownership_lost:
            raise LeaseLostError(f"run {self.run.id}: lease lost; summary left to the new owner")
        run = await self.repo.get_run_progress(self.run.id)
        sidecars = await self.repo.list_artifacts(run_id=self.run.id, type="sidecar")
        summary = build_summary(
            run=run,
            status=status,
            states=self.states,
            sinks=self.plan.sinks(),
            runs_root=self.files.runs_root,
            ended_at=ended_at,
            error=error,
            sidecars=[a.content for a in sidecars if a.content],
        )
        summary["error_code"] = error_code
        return summary, self.files.prepare(self.files.summary(), to_json_text(summary))

    async def _summary(self, status: RunStatus) -> dict[str, Any]:
        """The summary of a run that stopped early (also written to summary.json)."""
        code = status.value if status in (RunStatus.CANCELED, RunStatus.INTERRUPTED) else None
        summary, written = await self._write_summary(status, utcnow(), error_code=code)
        if status != RunStatus.QUEUED:  # a released run is another executor's to describe
            await self.files.write_prepared([written])
        return summary

    async def _stop(self, status: RunStatus) -> None:
        """Stop in-flight nodes and leave the run `interrupted` (resumable) or `canceled`."""
        in_flight = await self._cut_in_flight()
        canceled = status == RunStatus.CANCELED
        stopped = in_flight + (
            [s for s in self.states.values() if s.status == NodeStatus.PENDING] if canceled else []
        )
        for state in stopped:
            state.status = NodeStatus.CANCELED
        now = utcnow()
        run_id, owner = self.run.id, self.owner
        reason = "canceled" if canceled else "interrupted"
        if canceled:
            event = self.journal.event(
                EventType.RUN_CANCELED,
                "run canceled",
                level=EventLevel.WARNING,
                canceled_nodes=[s.key for s in stopped],
            )
        else:
            event = self.journal.event(
                EventType.RUN_INTERRUPTED,
                f"run interrupted; resume it with `crew run --resume {run_id}`",
                level=EventLevel.WARNING,
                canceled_nodes=[s.key for s in stopped],
            )
        ids = [s.node_id for s in stopped]

        async def apply(writer: Any) -> None:
            for node_id in ids:
                await writer.update_node(
                    node_id, status=NodeStatus.CANCELED.value, ended_at=now, error=reason
                )
            await writer.update_run(
                run_id,
                status=status.value,
                ended_at=now,
                error=reason,
                error_code=reason,
                cancel_requested_at=None,
            )
            await writer.release_run(run_id, owner)

        await self.journal.commit(event, apply=apply)

    async def _cut_in_flight(self) -> list[NodeState]:
        """Start recording the run's end: stop the nodes in flight; those that did not
        complete (see `_still_unfinished`)."""
        self._releasing = True
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        in_flight = await self._still_unfinished([self.states[k] for k in self._running.values()])
        self._running.clear()
        return in_flight

    async def _still_unfinished(self, states: list[NodeState]) -> list[NodeState]:
        """The cancelled nodes that did not complete.

        A node cancelled while its completion was queued still gets committed (the
        queue runs what it was given); it must not then be relabelled `canceled`, or a
        resume would run it again. Wait for what is queued, then ask the database.
        """
        if not states:
            return []

        async def barrier(writer: Any) -> None:
            return None

        await self.journal.queue.submit(barrier)
        done = {n.id for n in await self.repo.list_nodes(self.run.id) if n.status == "completed"}
        for state in states:
            if state.node_id in done:
                state.status = NodeStatus.COMPLETED
        return [s for s in states if s.node_id not in done]

    async def _abandon(self) -> None:
        """Stop in-flight nodes without recording anything: the run is not ours any more."""
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()

    async def _heartbeat(self) -> None:
        """Renew the lease, and notice a cancel request made elsewhere.

        Its own short transaction, outside the write queue: a slow group commit must
        not delay the renewal that keeps other executors from taking the run over.
        """
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            now = utcnow()
            held, cancel_requested_at = await self.repo.renew_lease(
                self.fence, now, now + timedelta(seconds=self.lease_s)
            )
            if not held:
                if self._releasing:  # our own release, not a takeover
                    return
                # Someone else holds the run now: going on would execute it twice.
                self._lease_lost(
                    LeaseLostError(f"run {self.run.id}: another executor took the run over")
                )
                return
            if cancel_requested_at is not None:
                self.request_cancel()

    def drain(self) -> None:
        """Shutting down: start no new node; the run goes back to the queue once the
        nodes in flight are done (or cut short by the caller's grace period)."""
        self._draining = True

    async def _release_to_queue(self) -> None:
        """Give the run back: unfinished nodes `pending`, the run `queued`, no owner.

        What a deploy does to a run: nothing is lost and nobody has to resume it; the
        next executor to claim it continues from the completed nodes.
        """
        in_flight = await self._cut_in_flight()
        for state in in_flight:
            state.status = NodeStatus.PENDING
        ids = [s.node_id for s in self.states.values() if s.status == NodeStatus.RUNNING]
        ids += [s.node_id for s in in_flight]
        run_id, owner = self.run.id, self.owner
        event = self.journal.event(
            EventType.RUN_RELEASED,
            f"run released by {owner} (shutting down); another executor continues it",
            level=EventLevel.WARNING,
            owner=owner,
            unfinished_nodes=[s.key for s in in_flight],
        )

        async def apply(writer: Any) -> None:
            for node_id in ids:
                await writer.update_node(node_id, status=NodeStatus.PENDING.value, ended_at=None)
            await writer.update_run(run_id, status=RunStatus.QUEUED.value)
            await writer.release_run(run_id, owner)

        await self.journal.commit(event, apply=apply)
        await self.repo.notify_run_queued(run_id)

    # -- scheduling ------------------------------------------------------------------
