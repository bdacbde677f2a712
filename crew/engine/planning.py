"""One way to turn a goal into a plan: `crew plan`, `crew run --use-supervisor` and
`POST /tasks` all call `plan_goal`.

The supervisor's calls are LLM calls like any other: with a run budget (RUN_MAX_COST_USD,
RUN_MAX_TOKENS, `--max-cost`, `options.max_cost_usd` ...) they are reserved against it
before they are sent, wherever the planning happens, and a bound on time applies where a
caller waits for the answer (an HTTP request).
"""

from __future__ import annotations

import asyncio

from crew.agents.goal import Goal
from crew.agents.supervisor import Supervisor, SupervisorResult
from crew.domain.plan import LLMSpec
from crew.engine.budget import RunBudget
from crew.llm.client import LLMClient
from crew.settings import Settings

MAX_PLANNING_S = 300.0
"""The longest an HTTP request waits for a plan, whatever the timeouts allow."""


def planning_deadline(settings: Settings) -> float:
    """Seconds a request may wait for the supervisor: every attempt its full timeout,
    capped at MAX_PLANNING_S."""
    attempts = max(1, settings.supervisor_max_attempts)
    return min(MAX_PLANNING_S, settings.llm_timeout_s * attempts)


async def plan_goal(
    client: LLMClient,
    settings: Settings,
    goal: Goal,
    *,
    supervisor_llm: LLMSpec | None = None,
    max_cost_usd: float | None = None,
    max_tokens: int | None = None,
    timeout_s: float | None = None,
) -> SupervisorResult:
    """Plan `goal` with the supervisor (validated, repaired when the model's answer was
    not a valid plan); its calls are kept within the given budget.

    Raises PlanValidationError when no valid plan came, BudgetExceededError when a call
    would pass the budget, TimeoutError past `timeout_s`.
    """
    budget = RunBudget.for_run(max_cost_usd=max_cost_usd, max_tokens=max_tokens)
    supervisor = Supervisor(client.with_budget(budget), settings)
    llm_layers = (supervisor_llm,) if supervisor_llm is not None else ()
    if timeout_s is None:
        return await supervisor.plan(goal, llm_layers=llm_layers)
    async with asyncio.timeout(timeout_s):
        return await supervisor.plan(goal, llm_layers=llm_layers)
