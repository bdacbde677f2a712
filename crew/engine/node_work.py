"""What executing one node means: call the right agent, write files, record the result.

Task and synthesis nodes call an executor and produce markdown; manage nodes call the
manager, which assigns roles to the nodes that depend on them. Either way the node's
files are written first and then its artifacts, usage, role changes, status and events
are committed in one transaction: a node is never `completed` without its artifacts.

An attempt that fails after its calls reached a server (answers that never validated,
a provider that died mid-way) is recorded too, before the failure goes on to the
scheduler: a sidecar listing the calls and tries (HTTP statuses, server messages), an
LLM_CALL event per answered call, and their usage added to the node and the run. So the
run's totals are always the sum of its calls (crew/engine/accounts.py checks it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from crew.agents.executor import DependencyOutput, execute
from crew.agents.goal import Goal
from crew.agents.manager import assign
from crew.agents.prompts import TEMPLATE_VERSION
from crew.agents.roles import resolve_role
from crew.domain.clock import utcnow
from crew.domain.events import EventType
from crew.domain.plan import NodeType, Plan
from crew.domain.status import NodeStatus
from crew.engine.checksum import node_checksum
from crew.engine.failed_attempts import overshoot_events, record_failed_attempt
from crew.engine.files import RunFiles, WrittenFile, artifact_row, to_json_text
from crew.engine.journal import EngineEvent, Journal
from crew.engine.options import RunOptions
from crew.engine.sidecar import build_sidecar, llm_call_fields, usage_of
from crew.engine.state import NodeState
from crew.llm import ledger
from crew.llm.client import CallResult, LLMClient
from crew.settings import Settings


def render_manager_answer(answer: dict[str, Any]) -> str:
    """The manager's answer as text for the nodes under it: their quality bar."""
    lines = ["# Manager instructions", ""]
    checks = answer.get("quality_checks") or []
    if checks:
        lines.append("## Quality checks")
        lines.extend(f"- {check}" for check in checks)
        lines.append("")
    notes = answer.get("integration_notes")
    if notes:
        lines.extend(["## Integration notes", str(notes), ""])
    return "\n".join(lines)


def _no_op() -> None:
    return None


async def yield_to_started_nodes() -> None:
    """Let the nodes a released slot just started make their LLM calls first.

    Their first steps were queued by the release; one yield would put this node's
    storage work between them (a wave of answers would then start the next wave's
    calls one storage step apart), the second puts it behind all of them.
    """
    await asyncio.sleep(0)
    await asyncio.sleep(0)


class NodeWork:
    def __init__(
        self,
        *,
        settings: Settings,
        client: LLMClient,
        plan: Plan,
        files: RunFiles,
        options: RunOptions,
        run_id: str,
        states: dict[str, NodeState],
        journal: Journal,
    ) -> None:
        self.settings = settings
        self.client = client
        self.plan = plan
        self.goal = Goal.from_plan(plan)
        self.files = files
        self.options = options
        self.run_id = run_id
        self.dependents = plan.dependents()
        self.states = states
        self.journal = journal
        self._fixed_material: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.provider_calls: dict[str, int] = {}
        """Answered calls per provider in this execution (the summary shows them)."""
        self.fallback_calls = 0
        """How many of them a fallback provider answered."""

    def count_calls(self, calls: Iterable[CallResult]) -> None:
        """Count answered calls per provider, and those a fallback answered."""
        for call in calls:
            self.provider_calls[call.provider] = self.provider_calls.get(call.provider, 0) + 1
            if call.fallback_from is not None:
                self.fallback_calls += 1

    # -- resume ----------------------------------------------------------------------

    def role_kind(self, state: NodeState) -> str:
        return "manager" if state.spec.type == NodeType.MANAGE else "executor"

    def llm_fingerprint(self, state: NodeState) -> dict[str, Any]:
        kind = self.role_kind(state)
        resolved = self.client.resolve(kind, self.options.llm_layers(kind, state.spec.llm))
        return {
            "provider": resolved.provider,
            "model": resolved.model,
            "temperature": resolved.temperature,
            "max_tokens": resolved.max_tokens,
        }

    def checksum(self, state: NodeState) -> str:
        fixed = self._fixed_material.get(state.key)
        if fixed is None:  # the spec and the LLM settings do not change during a run
            fixed = self._fixed_material[state.key] = (
                state.spec.to_dict(),
                self.llm_fingerprint(state),
            )
        spec, llm = fixed
        return node_checksum(
            spec=spec,
            role=state.role,
            llm=llm,
            template_version=TEMPLATE_VERSION,
            dependency_hashes=[self.states[d].output_sha or "" for d in state.spec.deps],
        )

    def can_reuse(self, state: NodeState, rerun: Iterable[str]) -> bool:
        """A node completed earlier is kept when nothing that shaped its output changed."""
        if state.status != NodeStatus.COMPLETED or state.key in set(rerun):
            return False
        return state.output_sha is not None and state.checksum == self.checksum(state)

    # -- execution -------------------------------------------------------------------

    async def perform(
        self,
        state: NodeState,
        *,
        started: Awaitable[Any],
        release: Callable[[], None] = _no_op,
    ) -> None:
        """Execute the node; `release` is called once its LLM calls have answered.

        `started` is the commit of the node's start, running alongside the LLM call;
        the node's result is committed only after it. Calls made by an attempt that
        then fails are recorded (crew/engine/failed_attempts.py) before the failure
        propagates.
        """
        with ledger.recording() as book:
            try:
                if state.spec.type == NodeType.MANAGE:
                    await self._manage(state, started, release)
                else:
                    await self._execute(state, started, release)
            except Exception as failure:
                reached = book.answered or any(f.reached_server for f in book.failed)
                if reached and state.status != NodeStatus.COMPLETED:
                    await record_failed_attempt(self, state, started, book, failure)
                raise

    async def _execute(
        self, state: NodeState, started: Awaitable[Any], release: Callable[[], None]
    ) -> None:
        spec = state.spec
        role = resolve_role(state.role or spec.suggested_agent_role, spec.type)
        state.role = role.name
        inputs = [
            DependencyOutput(
                key=d, title=self.states[d].spec.title, text=self.states[d].output or ""
            )
            for d in spec.deps
        ]
        async with asyncio.timeout(self.options.node_timeout_s):
            call = await execute(
                self.client,
                goal=self.goal,
                node=spec,
                role=role,
                dependency_outputs=inputs,
                language=self.settings.crew_language,
                llm_layers=self.options.llm_layers("executor", spec.llm),
            )
        release()
        markdown, sidecar = await self._write_outputs(
            state,
            role.name,
            [call],
            main=(self.files.artifact(state.key), call.response.text),
            sidecar_path=self.files.artifact_sidecar(state.key),
        )
        state.output = call.response.text
        await self._complete(
            state,
            started,
            calls=[call],
            main=markdown,
            main_type="markdown",
            main_content=call.response.text,
            sidecar=sidecar,
            role_updates={},
            extra_events=[],
        )

    async def _manage(
        self, state: NodeState, started: Awaitable[Any], release: Callable[[], None]
    ) -> None:
        spec = state.spec
        role = resolve_role(state.role or spec.suggested_agent_role, spec.type)
        state.role = role.name
        children = [self.states[k] for k in self.dependents[state.key]]
        async with asyncio.timeout(self.options.node_timeout_s):
            result = await assign(
                self.client,
                goal=self.goal,
                manage_node=spec,
                dependents=[c.spec for c in children],
                language=self.settings.crew_language,
                llm_layers=self.options.llm_layers("manager", spec.llm),
            )
        release()
        answer_file, sidecar = await self._write_outputs(
            state,
            role.name,
            result.calls,
            main=(self.files.manager_answer(state.key), to_json_text(result.answer)),
            sidecar_path=self.files.manager_sidecar(state.key),
        )
        role_updates = {}
        for child in children:
            assigned = result.assignments.get(child.key)
            if assigned:
                child.role = assigned
                role_updates[child.node_id] = assigned
        state.output = render_manager_answer(result.answer)
        assigned_event = self.journal.event(
            EventType.MANAGER_ASSIGNED,
            f"manager {state.key} assigned "
            + ", ".join(f"{k}={v}" for k, v in sorted(result.assignments.items())),
            node_id=state.node_id,
            node_key=state.key,
            assignments=result.assignments,
            quality_checks=result.answer.get("quality_checks", []),
        )
        await self._complete(
            state,
            started,
            calls=result.calls,
            main=answer_file,
            main_type="manager",
            main_content=json.dumps(result.answer, ensure_ascii=False),
            sidecar=sidecar,
            role_updates=role_updates,
            extra_events=[assigned_event],
        )

    async def _write_outputs(
        self,
        state: NodeState,
        role: str,
        calls: list[CallResult],
        *,
        main: tuple[Path, str],
        sidecar_path: Path,
    ) -> tuple[WrittenFile, WrittenFile]:
        """Prepare the node's main file and its sidecar, once the nodes a released slot
        started have made their calls; they are written after their rows commit."""
        await yield_to_started_nodes()
        sidecar_payload = build_sidecar(
            run_id=self.run_id,
            node_key=state.key,
            role=role,
            operation="chat",
            calls=calls,
            prompt_max_chars=self.settings.sidecar_prompt_max_chars,
        )
        return (
            self.files.prepare(*main),
            self.files.prepare(sidecar_path, to_json_text(sidecar_payload)),
        )

    async def _complete(
        self,
        state: NodeState,
        started: Awaitable[Any],
        *,
        calls: list[CallResult],
        main: WrittenFile,
        main_type: str,
        main_content: str,
        sidecar: WrittenFile,
        role_updates: dict[str, str],
        extra_events: list[EngineEvent],
    ) -> None:
        journal = self.journal
        state.output_sha = main.sha256
        state.output_path = main.relative
        checksum = self.checksum(state)
        input_tokens, output_tokens, cost = usage_of(calls)
        now = utcnow()
        events = [self.llm_event(state, call) for call in calls]
        events.extend(overshoot_events(journal, self.client, state))
        events.extend(extra_events)
        events.append(self.artifact_event(state, main, main_type))
        events.append(self.artifact_event(state, sidecar, "sidecar"))
        events.append(
            journal.event(
                EventType.NODE_COMPLETED,
                f"node {state.key} completed",
                node_id=state.node_id,
                node_key=state.key,
                role=state.role,
                provider=calls[-1].provider,
                model=calls[-1].model,
                latency_ms=round(sum(c.response.latency_ms for c in calls), 3),
                usage={"input_tokens": input_tokens, "output_tokens": output_tokens},
                cost_usd=cost,
                attempts=state.attempts,
            )
        )
        run_id, node_id, role = self.run_id, state.node_id, state.role
        summary = main_content[:280]

        artifacts = [
            artifact_row(run_id, node_id, main_type, main, content=main_content, summary=summary),
            artifact_row(run_id, node_id, "sidecar", sidecar),
        ]

        async def apply(writer: Any) -> None:
            await writer.add_artifacts(artifacts)
            for child_id, child_role in role_updates.items():
                await writer.update_node(child_id, role=child_role)
            await writer.add_run_usage(run_id, input_tokens, output_tokens, cost)
            await writer.finish_node(
                node_id,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cost_usd=cost,
                status=NodeStatus.COMPLETED.value,
                ended_at=now,
                checksum=checksum,
                role=role,
                error=None,
            )

        await started
        await journal.commit(*events, apply=apply)
        # Only after the fenced commit: a process that lost the run writes no file.
        await self.files.write_prepared([main, sidecar])
        state.status = NodeStatus.COMPLETED
        state.checksum = checksum
        self.count_calls(calls)

    def artifact_event(
        self, state: NodeState, written: WrittenFile, kind: str, note: str = ""
    ) -> EngineEvent:
        """ARTIFACT_CREATED for a file of this node (`note` ends the message)."""
        return self.journal.event(
            EventType.ARTIFACT_CREATED,
            f"node {state.key} wrote {written.relative}{note}",
            node_id=state.node_id,
            node_key=state.key,
            artifact_type=kind,
            path=written.relative,
            size=written.size,
            sha256=written.sha256,
        )

    def llm_event(self, state: NodeState, call: CallResult) -> EngineEvent:
        return self.journal.event(
            EventType.LLM_CALL,
            f"{call.provider}/{call.model} answered node {state.key} "
            f"({call.response.input_tokens}+{call.response.output_tokens} tokens)",
            node_id=state.node_id,
            node_key=state.key,
            **llm_call_fields(call),
        )
