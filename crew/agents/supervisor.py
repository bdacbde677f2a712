"""The supervisor: turns a goal into a validated plan, repairing bad answers.

A bad answer is not retried blindly: the answer goes back to the model with the exact
list of problems (JSON syntax, missing fields, unknown deps, the cycle), up to
SUPERVISOR_MAX_ATTEMPTS. The plan is kept as the model wrote it — a DAG with its
types and roles — never flattened into a chain.

The plan is asked for with its JSON Schema (crew/agents/schemas.py), which servers that
enforce one turn into a grammar. An answer cut off at max_tokens ends the planning at
once with the setting to raise (repairing it would be cut off the same way); a model
that never produces a valid plan is a ModelAnswerError (exit 4), not invalid input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from crew.agents.answers import ModelAnswerError, log_raw_answer, truncated, truncation_problem
from crew.agents.goal import Goal
from crew.agents.json_extract import JSONExtractError, extract_json_object
from crew.agents.prompts import bullets, check_language, render, text_or_none
from crew.agents.schemas import plan_schema
from crew.domain.errors import PlanValidationError
from crew.domain.plan import LLMSpec, Plan, parse_plan
from crew.llm.base import Message
from crew.llm.client import CallResult, LLMClient
from crew.llm.offline import context_block
from crew.settings import Settings

__all__ = ["Goal", "Supervisor", "SupervisorResult", "supervisor_messages"]


@dataclass(frozen=True, slots=True)
class SupervisorResult:
    plan: Plan
    calls: list[CallResult] = field(default_factory=list)
    attempts: int = 1


def supervisor_messages(goal: Goal, language: str) -> list[Message]:
    """The opening system and user messages for planning `goal`."""
    context = context_block("plan", {"language": language, "goal": goal.to_dict()})
    user = render(
        language,
        "supervisor_user",
        title=goal.title,
        description=text_or_none(goal.description, language),
        acceptance=bullets(goal.acceptance, language),
        context=context,
    )
    return [
        Message("system", render(language, "supervisor_system")),
        Message("user", user),
    ]


class Supervisor:
    def __init__(self, client: LLMClient, settings: Settings, language: str | None = None):
        self.client = client
        self.settings = settings
        self.language = check_language(language or settings.crew_language)

    async def plan(self, goal: Goal, llm_layers: Sequence[LLMSpec | None] = ()) -> SupervisorResult:
        """Ask for a plan until one validates; raise PlanValidationError with every reason."""
        messages = supervisor_messages(goal, self.language)
        calls: list[CallResult] = []
        reasons: list[str] = []
        attempts = max(1, self.settings.supervisor_max_attempts)
        schema = plan_schema()
        for attempt in range(1, attempts + 1):
            call = await self.client.call(
                "supervisor",
                "Supervisor",
                messages,
                json_schema=schema,
                schema_name="plan",
                llm_layers=llm_layers,
            )
            calls.append(call)
            text = call.response.text
            try:
                plan = plan_from_answer(text, goal)
            except PlanValidationError as error:
                problems = error.problems or [error.message]
            else:
                return SupervisorResult(plan=plan, calls=calls, attempts=attempt)
            log_raw_answer("supervisor", attempt, call)
            if truncated(call):
                raise ModelAnswerError(
                    "the supervisor's plan was cut off",
                    problems=[
                        *reasons,
                        f"attempt {attempt}: {truncation_problem(call, 'supervisor')}",
                    ],
                )
            reasons.extend(f"attempt {attempt}: {problem}" for problem in problems)
            messages = [
                *messages,
                Message("assistant", text),
                Message(
                    "user",
                    render(
                        self.language,
                        "supervisor_repair",
                        problems=bullets(problems, self.language),
                    ),
                ),
            ]
        raise ModelAnswerError(
            f"the supervisor's model did not produce a valid plan in {attempts} attempt(s)",
            problems=reasons,
        )


def plan_from_answer(text: str, goal: Goal) -> Plan:
    """Extract and validate a plan; the goal's title, description and acceptance fill in.

    Unknown keys such as the prototype's `decompose` flag are ignored, and a dependency
    named twice is one dependency (a grammar-constrained answer cannot rule that out).
    """
    try:
        data = extract_json_object(text)
    except JSONExtractError as error:
        raise PlanValidationError("invalid plan", problems=[str(error)]) from None
    plan = parse_plan(_one_of_each_dep(data), default_title=goal.title)
    return Plan(
        title=plan.title,
        nodes=plan.nodes,
        description=goal.description or plan.description,
        acceptance=goal.acceptance or plan.acceptance,
    )


def _one_of_each_dep(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with each node's `deps` listing every dependency once, in order."""
    nodes = data.get("plan")
    if not isinstance(nodes, list):
        return data
    cleaned: list[object] = []
    for node in nodes:
        deps = node.get("deps") if isinstance(node, dict) else None
        if isinstance(deps, list) and all(isinstance(d, str | int) for d in deps):
            node = {**node, "deps": list(dict.fromkeys(deps))}
        cleaned.append(node)
    return {**data, "plan": cleaned}
