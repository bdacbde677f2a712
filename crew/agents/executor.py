"""Executors: the prompt for a node, built from the goal, the node and its inputs.

The prompt carries everything the node's spec says (title, acceptance, notes, risks,
assumptions) plus the outputs of its direct dependencies, each cut to a bound with the
cut marked, so a long upstream artifact cannot crowd out the rest of the prompt.
Synthesis nodes use the same prompt with an instruction to produce the deliverable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from crew.agents.goal import Goal
from crew.agents.prompts import bullets, check_language, render, text_or_none
from crew.agents.roles import RoleSpec
from crew.domain.plan import LLMSpec, NodeType, PlanNode
from crew.llm.base import Message
from crew.llm.client import CallResult, LLMClient
from crew.llm.offline import context_block

DEFAULT_MAX_CHARS_PER_DEPENDENCY = 6000


@dataclass(frozen=True, slots=True)
class DependencyOutput:
    key: str
    title: str
    text: str


def truncate(text: str, limit: int, language: str) -> tuple[str, int]:
    """`text` cut to `limit` characters with a marker naming how much was cut."""
    if limit < 0 or len(text) <= limit:
        return text, 0
    cut = len(text) - limit
    return text[:limit].rstrip() + "\n" + render(language, "truncated", count=cut), cut


def build_messages(
    *,
    goal: Goal,
    node: PlanNode,
    role: RoleSpec,
    dependency_outputs: Sequence[DependencyOutput],
    language: str,
    max_chars_per_dependency: int = DEFAULT_MAX_CHARS_PER_DEPENDENCY,
) -> tuple[Message, ...]:
    """The system and user messages for executing `node` as `role`."""
    language = check_language(language)
    inputs: list[str] = []
    summary: list[dict[str, object]] = []
    for output in dependency_outputs:
        text, cut = truncate(output.text, max_chars_per_dependency, language)
        inputs.append(render(language, "input", key=output.key, title=output.title, text=text))
        summary.append({"key": output.key, "title": output.title, "truncated": cut})
    synthesis = node.type is NodeType.SYNTHESIS
    goal_text = render(
        language,
        "goal",
        title=goal.title,
        description=text_or_none(goal.description, language),
        acceptance=bullets(goal.acceptance, language),
    )
    context = context_block(
        "execute",
        {
            "language": language,
            "goal": goal.to_dict(),
            "node": {
                "id": node.id,
                "title": node.title,
                "type": node.type.value,
                "acceptance": list(node.acceptance),
            },
            "role": role.name,
            "inputs": summary,
        },
    )
    user = render(
        language,
        "executor_user",
        goal=goal_text,
        title=node.title,
        key=node.id,
        instruction=render(
            language, "executor_instruction_synthesis" if synthesis else "executor_instruction_task"
        ),
        acceptance=bullets(node.acceptance, language),
        notes=bullets(node.notes, language),
        risks=bullets(node.risks, language),
        assumptions=bullets(node.assumptions, language),
        inputs="\n\n".join(inputs) if inputs else render(language, "empty"),
        context=context,
    )
    system = render(language, f"executor_system_{role.family}", role=role.name)
    return Message("system", system), Message("user", user)


async def execute(
    client: LLMClient,
    *,
    goal: Goal,
    node: PlanNode,
    role: RoleSpec,
    dependency_outputs: Sequence[DependencyOutput],
    language: str,
    llm_layers: Sequence[LLMSpec | None] = (),
    max_chars_per_dependency: int = DEFAULT_MAX_CHARS_PER_DEPENDENCY,
) -> CallResult:
    """One executor call; the answer text is the node's markdown artifact."""
    messages = build_messages(
        goal=goal,
        node=node,
        role=role,
        dependency_outputs=dependency_outputs,
        language=language,
        max_chars_per_dependency=max_chars_per_dependency,
    )
    return await client.call("executor", role.name, messages, llm_layers=llm_layers)
