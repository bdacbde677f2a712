"""Executes one run's DAG: scheduling, retries, timeouts, failure propagation, resume.

Nodes start as soon as their dependencies are completed, up to `max_concurrency` at
once, ties broken by plan order. Every state change is committed (through the write
queue, together with its event) before the node takes its next step, so another
process can take over from the database alone after a crash.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from typing import Any

from crew.domain.clock import utcnow
from crew.domain.errors import (
    BudgetExceededError,
    CrewError,
    LeaseLostError,
    NoProviderAnsweredError,
    ProviderError,
)
from crew.domain.events import EventLevel, EventType
from crew.domain.plan import NodeType
from crew.domain.status import NodeStatus, ResumeReason, RunStatus
from crew.engine.backoff import retry_delay
from crew.engine.budget import RunBudgetExceeded
from crew.engine.lifecycle import RunLifecycle
from crew.engine.shared_budget import SharedRunBudget
from crew.engine.state import NodeState
from crew.observability import context

log = logging.getLogger("crew.engine")


class RunExecutor(RunLifecycle):
    """Runs (or resumes) one run that this process has claimed."""

    async def execute(
        self,
        *,
        resume_reason: ResumeReason | None,
        supervisor: tuple[Any, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Run to the end; returns the run summary. `resume_reason` None: a first start.

        A cancellation from outside (Ctrl-C, SIGTERM of `crew run`) leaves the run
        `interrupted` and propagates; a cancel request ends it `canceled` and returns;
        after `drain()` (an executor shutting down) the run goes back to the queue.
        """
        self._main_task = asyncio.current_task()
        context.run_id.set(self.run.id)  # log lines and error reports name the run
        async with self.queue:
            heartbeat = asyncio.create_task(self._heartbeat(), name="crew-heartbeat")
            try:
                if resume_reason is not None:
                    await self._begin_resume(resume_reason)
                else:
                    await self._begin_start(supervisor)
                if resume_reason != ResumeReason.MANUAL and self.run.cancel_requested_at:
                    self.request_cancel()  # asked for while the run waited for us
                if self.options.dry_run:
                    await self._skip_all_for_dry_run()
                else:
                    await self._schedule()
                if self._draining and self._unfinished():
                    await self._release_to_queue()
                    return await self._summary(RunStatus.QUEUED)
                return await self._finish()
            except asyncio.CancelledError:
                if self._ownership_lost:
                    if self._main_task is not None:
                        self._main_task.uncancel()
                    await asyncio.shield(self._abandon())
                    raise LeaseLostError(
                        f"run {self.run.id} was taken over by another executor (this one "
                        "lost its lease); this process stopped executing it"
                    ) from None
                if self._draining:
                    if self._main_task is not None:
                        self._main_task.uncancel()
                    await asyncio.shield(self._release_to_queue())
                    return await self._summary(RunStatus.QUEUED)
                if not self._cancel_requested:
                    await asyncio.shield(self._stop(RunStatus.INTERRUPTED))
                    raise
                if self._main_task is not None:
                    self._main_task.uncancel()
                await asyncio.shield(self._stop(RunStatus.CANCELED))
                return await self._summary(RunStatus.CANCELED)
            except LeaseLostError:
                # A fenced write refused before the main task was told: same as above.
                self._ownership_lost = True
                await asyncio.shield(self._abandon())
                raise
            finally:
                heartbeat.cancel()
                await asyncio.gather(heartbeat, return_exceptions=True)
                if isinstance(self.budget, SharedRunBudget):
                    await self.budget.aclose()

    def release_now(self) -> None:
        """The shutdown grace period is over: stop the nodes in flight and give the run
        back to the queue (their calls are made again by the next executor)."""
        self._draining = True
        if self._main_task is not None and not self._releasing:
            self._main_task.cancel()

    def _unfinished(self) -> bool:
        return any(
            s.status in (NodeStatus.PENDING, NodeStatus.RUNNING) for s in self.states.values()
        )

    async def _budget_refused(self, state: NodeState, error: BudgetExceededError) -> None:
        """A node's call was refused: BUDGET_EXCEEDED (first time), the node is skipped."""
        state.status = NodeStatus.SKIPPED
        # the budget says whether a node already reported it (an overshoot: node_work.py)
        if not self._budget_reported and (self.budget is None or self.budget.claim_report()):
            self._budget_reported = True
            details = error.payload() if isinstance(error, RunBudgetExceeded) else {}
            await self.journal.commit(
                self.journal.event(
                    EventType.BUDGET_EXCEEDED,
                    f"budget exceeded at node {state.key}: {error.message}; no new LLM call starts",
                    level=EventLevel.ERROR,
                    node_id=state.node_id,
                    node_key=state.key,
                    **details,
                )
            )
        await self._skip([state], "budget exceeded")

    async def _schedule(self) -> None:
        self._waiting = {key: len(set(state.spec.deps)) for key, state in self.states.items()}
        self._ready = [
            (state.position, key) for key, state in self.states.items() if not self._waiting[key]
        ]
        heapq.heapify(self._ready)
        self._fill_slots()
        while self._running:
            done, _ = await asyncio.wait(set(self._running), return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: self.states[self._running[t]].position):
                key = self._running.pop(task)
                self._calling.discard(key)
                if task.result():
                    self._release_dependents(key)
                elif self.states[key].status != NodeStatus.SKIPPED:  # skipped: budget
                    await self._skip_descendants(key)
            self._fill_slots()
        if self._budget_spent():
            pending = [s for s in self.states.values() if s.status == NodeStatus.PENDING]
            if pending:
                await self._skip(sorted(pending, key=lambda s: s.position), "budget exceeded")

    def _fill_slots(self) -> None:
        """Start ready nodes, in plan order, while a slot is free and the budget allows."""
        limit = max(1, self.options.max_concurrency)
        while (
            self._ready
            and len(self._calling) < limit
            and not self._budget_spent()
            and not self._draining
            and not self._cancel_requested
        ):
            _, key = heapq.heappop(self._ready)
            state = self.states[key]
            if self.work.can_reuse(state, self.options.rerun):
                self._release_dependents(key)
                continue
            task = asyncio.create_task(self._run_node(state), name=f"crew-node-{key}")
            self._running[task] = key
            self._calling.add(key)

    def _free_slot(self, key: str) -> None:
        """A node's LLM calls have answered: its slot goes to the next ready node now,
        not once the scheduler wakes up behind every other task's work."""
        if key in self._calling:
            self._calling.discard(key)
            self._fill_slots()

    def _release_dependents(self, key: str) -> None:
        for child in self.dependents[key]:
            self._waiting[child] -= 1
            if self._waiting[child] == 0:
                heapq.heappush(self._ready, (self.states[child].position, child))

    async def _run_node(self, state: NodeState) -> bool:
        """Execute one node with retries; True when it completed."""
        context.node_key.set(state.key)  # this task's own context: only its lines
        attempt = 0
        while True:
            attempt += 1
            failure = await self._attempt(state, attempt)
            if failure is None:
                return True
            if isinstance(failure, BudgetExceededError):
                await self._budget_refused(state, failure)
                return False
            if isinstance(failure, TimeoutError):
                error: Exception = ProviderError(
                    f"node timed out after {self.options.node_timeout_s:g}s",
                    provider="engine",
                    retryable=True,
                )
            elif isinstance(failure, ProviderError):
                error = failure
            elif isinstance(failure, CrewError):
                await self._mark_failed(state, str(failure))
                return False
            else:  # a bug must fail the node, not the whole run
                log.error("node %s failed unexpectedly", state.key, exc_info=failure)
                await self._mark_failed(state, f"internal error: {failure!r}")
                return False
            retryable = isinstance(error, ProviderError) and error.retryable
            if not retryable or attempt > self.options.retries:
                if isinstance(error, NoProviderAnsweredError):
                    self._unavailable.add(state.key)
                await self._mark_failed(state, str(error))
                return False
            delay = retry_delay(self.options.retry_base_delay, attempt, self.rng)
            if isinstance(error, ProviderError) and error.retry_after_s:
                delay = max(delay, error.retry_after_s)
            await self.journal.commit(
                self.journal.event(
                    EventType.NODE_RETRYING,
                    f"node {state.key} attempt {attempt} failed ({error}); "
                    f"retrying in {delay:.2f}s",
                    level=EventLevel.WARNING,
                    node_id=state.node_id,
                    node_key=state.key,
                    attempt=attempt,
                    delay_s=round(delay, 3),
                    error=str(error),
                )
            )
            await asyncio.sleep(delay)

    async def _attempt(self, state: NodeState, attempt: int) -> Exception | None:
        """One attempt at the node; the exception it ended with, None if it completed.

        The start is queued first, so it commits before anything recorded about this
        attempt, but its commit overlaps the LLM call instead of delaying it: after a
        crash a node left `pending` or `running` is run again alike, so the call gains
        nothing from waiting. The timeout covers the node's LLM work (NodeWork applies
        it); storing an answer that arrived in time is never cut short.
        """
        started = self._mark_started(state, attempt)
        try:
            await self.work.perform(
                state, started=started, release=lambda: self._free_slot(state.key)
            )
        except Exception as failure:
            await started  # on record before how the attempt ended
            return failure
        return None

    def _mark_started(self, state: NodeState, attempt: int) -> asyncio.Task[Any]:
        """Queue the node's start (status, attempts, NODE_STARTED); returns its commit."""
        state.status = NodeStatus.RUNNING
        state.attempts += 1
        now = utcnow()
        columns: dict[str, Any] = {
            "status": NodeStatus.RUNNING.value,
            "attempts": state.attempts,
            "error": None,
            "ended_at": None,
        }
        if attempt == 1:
            columns["started_at"] = now
        node_id = state.node_id

        async def apply(writer: Any) -> None:
            await writer.update_node(node_id, **columns)

        events = []
        if attempt == 1:
            events.append(
                self.journal.event(
                    EventType.NODE_STARTED,
                    f"node {state.key} started ({state.role or state.spec.type.value})",
                    node_id=state.node_id,
                    node_key=state.key,
                    role=state.role,
                    type=state.spec.type.value,
                    attempt=state.attempts,
                )
            )
        return self.journal.commit_soon(*events, apply=apply)

    async def _mark_failed(self, state: NodeState, error: str) -> None:
        state.status = NodeStatus.FAILED
        now = utcnow()
        node_id = state.node_id

        async def apply(writer: Any) -> None:
            await writer.update_node(
                node_id, status=NodeStatus.FAILED.value, ended_at=now, error=error
            )

        await self.journal.commit(
            self.journal.event(
                EventType.NODE_FAILED,
                f"node {state.key} failed: {error}",
                level=EventLevel.ERROR,
                node_id=state.node_id,
                node_key=state.key,
                role=state.role,
                attempts=state.attempts,
                error=error,
            ),
            apply=apply,
        )

    async def _skip_descendants(self, failed_key: str) -> None:
        """Every node depending on `failed_key`, directly or not, is skipped with the reason."""
        to_skip: list[NodeState] = []
        stack = list(self.dependents[failed_key])
        seen: set[str] = set()
        while stack:
            key = stack.pop()
            if key in seen:
                continue
            seen.add(key)
            state = self.states[key]
            if state.status in (NodeStatus.PENDING, NodeStatus.COMPLETED):
                # a completed node left from an earlier attempt is stale now: its input failed
                to_skip.append(state)
            stack.extend(self.dependents[key])
        if not to_skip:
            return
        to_skip.sort(key=lambda s: s.position)
        reason = f"dependency {failed_key} failed"
        await self._skip(to_skip, reason)

    async def _skip_all_for_dry_run(self) -> None:
        states = sorted(self.states.values(), key=lambda s: s.position)
        await self._skip(states, "dry run")

    async def _skip(self, states: list[NodeState], reason: str) -> None:
        now = utcnow()
        for state in states:
            state.status = NodeStatus.SKIPPED
        ids = [s.node_id for s in states]

        async def apply(writer: Any) -> None:
            for node_id in ids:
                await writer.update_node(
                    node_id, status=NodeStatus.SKIPPED.value, ended_at=now, error=reason
                )

        events = [
            self.journal.event(
                EventType.NODE_SKIPPED,
                f"node {s.key} skipped: {reason}",
                level=EventLevel.WARNING if reason != "dry run" else EventLevel.INFO,
                node_id=s.node_id,
                node_key=s.key,
                reason=reason,
            )
            for s in states
        ]
        await self.journal.commit(*events, apply=apply)


def is_manage(state: NodeState) -> bool:
    return state.spec.type == NodeType.MANAGE
