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
from datetime import UTC, datetime
from typing import Any

from crew.domain.events import EventLevel, EventType
from crew.domain.plan import Plan
from crew.domain.status import NodeStatus, RunStatus
from crew.engine.budget import RunBudget
from crew.engine.files import RunFiles, WrittenFile, artifact_row
from crew.engine.journal import EventListener, Journal
from crew.engine.node_work import NodeWork
from crew.engine.options import RunOptions
from crew.engine.sidecar import build_sidecar, usage_of
from crew.engine.state import NodeState
from crew.engine.summary import build_summary
from crew.llm.client import CallResult

log = logging.getLogger("crew.engine")

HEARTBEAT_INTERVAL_S = 5.0
"""How often the executing process proves it is alive; readers call a run stale after
HEARTBEAT_STALE_S without a beat."""
HEARTBEAT_STALE_S = 15.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunLifecycle:
    """Run-level state and transitions; RunExecutor adds the scheduling."""

    def __init__(
        self,
        *,
        repo: Any,
        work: NodeWork,
        run: Any,
        plan: Plan,
        states: dict[str, NodeState],
        options: RunOptions,
        owner: str,
        files: RunFiles,
        listeners: Sequence[EventListener] = (),
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        rng: random.Random | None = None,
    ) -> None:
        self.repo = repo
        self.work = work
        self.run = run
        self.plan = plan
        self.states = states
        self.options = options
        self.owner = owner
        self.files = files
        self.listeners = listeners
        self.heartbeat_interval_s = heartbeat_interval_s
        self.rng = rng or random.Random()
        self.dependents = plan.dependents()
        self.journal: Journal | None = None
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
        self._releasing = False
        """Set once this process starts recording the run's end (and releasing it)."""
        self.budget: RunBudget | None = None
        self._budget_reported = False
        self._unavailable: set[str] = set()
        """Nodes that failed because no LLM provider could answer (exit 4, not 1)."""

    def request_cancel(self) -> None:
        """Stop the run as `canceled` (a user asked), not `interrupted` (a process stopped)."""
        if self._cancel_requested:
            return
        self._cancel_requested = True
        if self._main_task is not None:
            self._main_task.cancel()

    def _install_budget(self, resumed: bool, supervisor_calls: Sequence[CallResult]) -> None:
        """Every LLM call of this run goes through the run's budget (when it has one),
        starting from what the run has spent so far."""
        self.budget = RunBudget.for_run(
            max_cost_usd=self.options.max_cost_usd,
            max_tokens=self.options.max_tokens,
            run=self.run,
            calls=() if resumed else supervisor_calls,
        )
        if self.budget is not None:
            self.work.client = self.work.client.with_budget(self.budget)

    def _budget_spent(self) -> bool:
        return self.budget is not None and self.budget.exceeded is not None

    async def _begin_start(self, supervisor_calls: Sequence[CallResult]) -> None:
        """First start: RUN_STARTED, PLAN_CREATED, then the supervisor's call if any."""
        assert self.journal is not None
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
            ),
            journal.event(
                EventType.PLAN_CREATED,
                f"plan with {len(ordered)} node(s)"
                + (" from the supervisor" if supervisor_calls else ""),
                source="supervisor" if supervisor_calls else "file",
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
        sidecar = None
        if supervisor_calls:
            calls = list(supervisor_calls)
            sidecar = self.files.write_json(
                self.files.supervisor_sidecar(),
                build_sidecar(
                    run_id=self.run.id,
                    node_key=None,
                    role="Supervisor",
                    operation="chat",
                    calls=calls,
                    prompt_max_chars=self.work.settings.sidecar_prompt_max_chars,
                ),
            )
            last = calls[-1]
            events.append(
                journal.event(
                    EventType.LLM_CALL,
                    f"{last.provider}/{last.model} planned the run ({len(calls)} call(s))",
                    role="Supervisor",
                    provider=last.provider,
                    model=last.model,
                    response_model=last.response.model,
                    input_tokens=sum(c.response.input_tokens for c in calls),
                    output_tokens=sum(c.response.output_tokens for c in calls),
                    cost_usd=usage_of(calls)[2],
                    attempts=sum(c.attempts for c in calls),
                )
            )
            events.append(
                journal.event(
                    EventType.ARTIFACT_CREATED,
                    f"supervisor wrote {sidecar.relative}",
                    artifact_type="sidecar",
                    path=sidecar.relative,
                    size=sidecar.size,
                    sha256=sidecar.sha256,
                )
            )
        now = utcnow()
        run_id = self.run.id
        usage = usage_of(supervisor_calls) if supervisor_calls else None

        async def apply(writer: Any) -> None:
            await writer.update_run(
                run_id,
                status=RunStatus.RUNNING.value,
                started_at=now,
                ended_at=None,
                error=None,
                cancel_requested_at=None,
            )
            if sidecar is not None and usage is not None:
                await writer.add_artifacts([artifact_row(run_id, None, "sidecar", sidecar)])
                await writer.add_run_usage(run_id, *usage)

        await journal.commit(*events, apply=apply)

    async def _begin_resume(self) -> None:
        """Resume: nodes that did not complete go back to `pending`; completed ones are
        re-checked against their checksum when they come up in the schedule."""
        assert self.journal is not None
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
        # so a later resume keeps them; one-off overrides are not.
        stored_options = {**self.options.to_json(), "overrides": []}
        event = self.journal.event(
            EventType.RUN_RESUMED,
            f"run resumed: {len(reset)} node(s) to run, "
            f"{len(self.states) - len(reset)} completed node(s) to re-check",
            reset_nodes=[s.key for s in reset],
            overrides=list(self.options.overrides),
        )

        async def apply(writer: Any) -> None:
            await writer.update_run(
                run_id,
                status=RunStatus.RUNNING.value,
                ended_at=None,
                error=None,
                cancel_requested_at=None,
                options=stored_options,
            )
            for node_id in ids:
                await writer.update_node(
                    node_id, status=NodeStatus.PENDING.value, ended_at=None, error=None
                )

        await self.journal.commit(event, apply=apply)

    async def _finish(self) -> dict[str, Any]:
        assert self.journal is not None
        self._releasing = True
        failed = sorted(s.key for s in self.states.values() if s.status == NodeStatus.FAILED)
        budget_hit = self._budget_spent()
        status = RunStatus.FAILED if failed or budget_hit else RunStatus.COMPLETED
        error = f"{len(failed)} node(s) failed: {', '.join(failed)}" if failed else None
        error_code = "node_failed" if failed else None
        if budget_hit:
            error, error_code = "budget_exceeded", "budget_exceeded"
        elif failed and set(failed) <= self._unavailable:
            error_code = "provider_unavailable"
        now = utcnow()
        summary, written = await self._write_summary(status, now, error)
        summary["error_code"] = error_code
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
            await writer.update_run(run_id, status=status.value, ended_at=now, error=error)
            await writer.release_run(run_id, owner)

        await self.journal.commit(event, apply=apply)
        return summary

    async def _write_summary(
        self, status: RunStatus, ended_at: datetime, error: str | None = None
    ) -> tuple[dict[str, Any], WrittenFile]:
        run = await self.repo.get_run_progress(self.run.id)
        summary = build_summary(
            run=run,
            status=status,
            states=self.states,
            sinks=self.plan.sinks(),
            runs_root=self.files.runs_root,
            ended_at=ended_at,
            error=error,
        )
        return summary, self.files.write_json(self.files.summary(), summary)

    async def _summary(self, status: RunStatus) -> dict[str, Any]:
        """The summary of a run that stopped early (also written to summary.json)."""
        summary, _ = await self._write_summary(status, utcnow())
        return summary

    async def _stop(self, status: RunStatus) -> None:
        """Stop in-flight nodes and leave the run `interrupted` (resumable) or `canceled`."""
        assert self.journal is not None
        self._releasing = True
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        in_flight = await self._still_unfinished([self.states[k] for k in self._running.values()])
        self._running.clear()
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
                run_id, status=status.value, ended_at=now, error=reason, cancel_requested_at=None
            )
            await writer.release_run(run_id, owner)

        await self.journal.commit(event, apply=apply)

    async def _still_unfinished(self, states: list[NodeState]) -> list[NodeState]:
        """The cancelled nodes that did not complete.

        A node cancelled while its completion was queued still gets committed (the
        queue runs what it was given); it must not then be relabelled `canceled`, or a
        resume would run it again. Wait for what is queued, then ask the database.
        """
        if not states:
            return []
        assert self.journal is not None

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
        """Prove this process is alive, and notice a cancel request made elsewhere.

        Its own short transaction, outside the write queue: a slow group commit must
        not delay the beat that tells readers this run is still alive.
        """
        run_id, owner = self.run.id, self.owner
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            if not await self.repo.heartbeat(run_id, owner, utcnow()):
                if self._releasing:  # our own release, not a takeover
                    return
                # Someone else owns the run now: going on would execute it twice.
                log.warning("run %s: another process took this run over; stopping", run_id)
                self._ownership_lost = True
                if self._main_task is not None:
                    self._main_task.cancel()
                return
            run = await self.repo.get_run_progress(run_id)
            if run is not None and run.cancel_requested_at is not None:
                self.request_cancel()

    # -- scheduling ------------------------------------------------------------------
