"""What a node attempt that failed had spent, recorded; and budget overshoot reported.

A node attempt may fail after its calls reached a server: a manager whose answers never
validated, a provider that died between a manager's calls, a prompt the server refused
as too long. Those calls were paid for. Before the failure goes on to the scheduler,
`record_failed_attempt` writes a sidecar listing them (every try, with HTTP statuses and
server messages), keeps it in the database as the node's artifact (content included),
emits an LLM_CALL per answered call and adds their usage to the node and the run — so a
run's totals are always the sum of its calls, whatever failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from typing import Any, Protocol

from crew.domain.events import EventLevel, EventType
from crew.engine.budget import RunBudget
from crew.engine.files import RunFiles, WrittenFile, artifact_row, to_json_text
from crew.engine.journal import EngineEvent, Journal
from crew.engine.sidecar import build_sidecar, usage_of
from crew.engine.state import NodeState
from crew.llm import ledger
from crew.llm.client import CallResult, LLMClient
from crew.settings import Settings


class AttemptRecorder(Protocol):
    """What recording a failed attempt needs of the node work (crew/engine/node_work.py)."""

    run_id: str
    settings: Settings
    files: RunFiles
    client: LLMClient
    journal: Journal

    def role_kind(self, state: NodeState) -> str: ...

    def llm_event(self, state: NodeState, call: CallResult) -> EngineEvent: ...

    def artifact_event(
        self, state: NodeState, written: WrittenFile, kind: str, note: str = ""
    ) -> EngineEvent: ...

    def count_calls(self, calls: Iterable[CallResult]) -> None: ...


async def record_failed_attempt(
    work: AttemptRecorder,
    state: NodeState,
    started: Awaitable[Any],
    book: ledger.CallLedger,
    failure: Exception,
) -> None:
    """Record what the failed attempt `book` holds (see the module docstring)."""
    journal = work.journal
    calls = list(book.answered)
    error = str(failure) or type(failure).__name__
    payload = build_sidecar(
        run_id=work.run_id,
        node_key=state.key,
        role=state.role or work.role_kind(state),
        operation="chat",
        calls=calls,
        prompt_max_chars=work.settings.sidecar_prompt_max_chars,
        error=error,
        failed=book.failed,
    )
    text = to_json_text(payload)
    path = work.files.node_folder(state.key) / (
        f"failed_{state.key}_attempt{state.attempts}.llm.json"
    )
    written = work.files.prepare(path, text)
    input_tokens, output_tokens, cost = usage_of(calls)
    events = [work.llm_event(state, call) for call in calls]
    events.extend(overshoot_events(journal, work.client, state))
    events.append(
        work.artifact_event(state, written, "sidecar", f" (failed attempt {state.attempts})")
    )
    run_id, node_id = work.run_id, state.node_id
    row = artifact_row(run_id, node_id, "sidecar", written, content=text, summary=error[:280])

    async def apply(writer: Any) -> None:
        await writer.add_artifacts([row])
        if calls:
            await writer.add_run_usage(run_id, input_tokens, output_tokens, cost)
            # no other column: finish_node only adds this usage to the node's
            await writer.finish_node(
                node_id, input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost
            )

    await started
    await journal.commit(*events, apply=apply)
    await work.files.write_prepared([written])  # after the fenced commit, as node_work does
    work.count_calls(calls)


def overshoot_events(journal: Journal, client: LLMClient, state: NodeState) -> list[EngineEvent]:
    """BUDGET_EXCEEDED, once per run, when this node's reported usage passed a limit."""
    budget = client.budget
    if not isinstance(budget, RunBudget) or budget.exceeded is None:
        return []
    if not budget.claim_report():
        return []
    exceeded = budget.exceeded
    return [
        journal.event(
            EventType.BUDGET_EXCEEDED,
            f"budget exceeded at node {state.key}: {exceeded.message}",
            level=EventLevel.ERROR,
            node_id=state.node_id,
            node_key=state.key,
            **exceeded.payload(),
        )
    ]
