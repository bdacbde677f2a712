"""The manager: assigns an agent role to each node that depends on a manage node.

Answers use the prototype's format, `{"assignments": [{"node_id", "agent", "tooling"}],
"quality_checks": [...], "integration_notes": "..."}`. An answer that names unknown
nodes, misses some, or has no quality check goes back to the model with the problems
listed (same repair loop as the supervisor), then fails with ModelAnswerError. The
answer is asked for with its JSON Schema (crew/agents/schemas.py); one cut off at
max_tokens fails at once, naming MANAGER_MAX_TOKENS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from crew.agents.answers import ModelAnswerError, log_raw_answer, truncated, truncation_problem
from crew.agents.goal import Goal
from crew.agents.json_extract import JSONExtractError, extract_json_object
from crew.agents.prompts import bullets, check_language, render
from crew.agents.roles import resolve_role
from crew.agents.schemas import manager_schema
from crew.domain.plan import LLMSpec, NodeType, PlanNode
from crew.llm.base import Message
from crew.llm.client import CallResult, LLMClient
from crew.llm.offline import context_block

MAX_ROLE_NAME = 64


@dataclass(frozen=True, slots=True)
class ManagerResult:
    assignments: dict[str, str]
    """Node key -> role name (built-in names in canonical spelling)."""
    answer: dict[str, Any]
    """The validated answer, as saved in `manager_<key>.json`."""
    calls: list[CallResult] = field(default_factory=list)
    attempts: int = 1


def manager_messages(
    goal: Goal, manage_node: PlanNode, dependents: Sequence[PlanNode], language: str
) -> list[Message]:
    nodes = [
        {
            "id": node.id,
            "title": node.title,
            "type": node.type.value,
            "suggested_agent_role": node.suggested_agent_role,
            "acceptance": list(node.acceptance),
        }
        for node in dependents
    ]
    listing = [
        f"{node.id}: {node.title}"
        + (f" (suggested: {node.suggested_agent_role})" if node.suggested_agent_role else "")
        for node in dependents
    ]
    context = context_block(
        "assign",
        {
            "language": language,
            "goal": goal.to_dict(),
            "manage_node": {"id": manage_node.id, "title": manage_node.title},
            "nodes": nodes,
        },
    )
    user = render(
        language,
        "manager_user",
        goal_title=goal.title,
        manage_title=manage_node.title,
        manage_id=manage_node.id,
        nodes=bullets(listing, language),
        context=context,
    )
    return [Message("system", render(language, "manager_system")), Message("user", user)]


async def assign(
    client: LLMClient,
    *,
    goal: Goal,
    manage_node: PlanNode,
    dependents: Sequence[PlanNode],
    language: str,
    llm_layers: Sequence[LLMSpec | None] = (),
) -> ManagerResult:
    """Ask the manager for assignments until one validates."""
    language = check_language(language)
    agent = resolve_role(manage_node.suggested_agent_role, NodeType.MANAGE).name
    expected = [node.id for node in dependents]
    messages = manager_messages(goal, manage_node, dependents, language)
    calls: list[CallResult] = []
    reasons: list[str] = []
    attempts = max(1, client.settings.supervisor_max_attempts)
    schema = manager_schema(expected)
    for attempt in range(1, attempts + 1):
        call = await client.call(
            "manager",
            agent,
            messages,
            json_schema=schema,
            schema_name="assignments",
            llm_layers=llm_layers,
        )
        calls.append(call)
        text = call.response.text
        try:
            answer = extract_json_object(text)
        except JSONExtractError as error:
            problems = [str(error)]
        else:
            assignments, problems = validate_answer(answer, expected)
            if not problems:
                return ManagerResult(assignments, answer, calls, attempt)
        log_raw_answer("manager", attempt, call)
        if truncated(call):
            raise ModelAnswerError(
                f"manager node {manage_node.id!r}: the answer was cut off",
                problems=[*reasons, f"attempt {attempt}: {truncation_problem(call, 'manager')}"],
            )
        reasons.extend(f"attempt {attempt}: {problem}" for problem in problems)
        repair = render(
            language,
            "manager_repair",
            problems=bullets(problems, language),
            expected=", ".join(expected) or "-",
        )
        messages = [*messages, Message("assistant", text), Message("user", repair)]
    raise ModelAnswerError(
        f"manager node {manage_node.id!r}: no valid assignments in {attempts} attempt(s)",
        problems=reasons,
    )


def validate_answer(
    answer: dict[str, Any], expected: Sequence[str]
) -> tuple[dict[str, str], list[str]]:
    """Assignments (node key -> role) and every problem found in `answer`."""
    problems: list[str] = []
    assignments: dict[str, str] = {}
    raw = answer.get("assignments")
    if not isinstance(raw, list):
        problems.append("'assignments' must be a list of objects")
        raw = []
    wanted = set(expected)
    for position, item in enumerate(raw, start=1):
        if not isinstance(item, dict):
            problems.append(f"assignment #{position} must be an object")
            continue
        node_id = item.get("node_id")
        role = item.get("agent")
        if not isinstance(node_id, str) or not node_id:
            problems.append(f"assignment #{position}: missing string 'node_id'")
            continue
        if node_id not in wanted:
            problems.append(f"assignment #{position}: unknown node id {node_id!r}")
            continue
        if node_id in assignments:
            problems.append(f"node {node_id!r} is assigned more than once")
            continue
        if not isinstance(role, str) or not role.strip() or len(role.strip()) > MAX_ROLE_NAME:
            problems.append(
                f"node {node_id!r}: 'agent' must be a role name of 1 to {MAX_ROLE_NAME} characters"
            )
            continue
        tooling = item.get("tooling")
        if tooling is not None and not isinstance(tooling, list | str):
            problems.append(f"node {node_id!r}: 'tooling' must be a list of strings")
        assignments[node_id] = resolve_role(role).name
    missing = [key for key in expected if key not in assignments]
    if missing:
        problems.append("missing assignments for node(s): " + ", ".join(missing))
    checks = answer.get("quality_checks")
    if not isinstance(checks, list) or not any(
        isinstance(check, str) and check.strip() for check in checks
    ):
        problems.append("'quality_checks' must list at least one quality check")
    notes = answer.get("integration_notes")
    if notes is not None and not isinstance(notes, str):
        problems.append("'integration_notes' must be a string")
    return assignments, problems
