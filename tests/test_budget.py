"""RunBudget: reservations of a call's worst case, settlement with real usage."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crew.domain.errors import BudgetExceededError
from crew.engine.budget import RunBudget, RunBudgetExceeded, prompt_tokens_worst
from crew.llm.base import LLMRequest, LLMResponse, Message
from crew.llm.client import CallResult
from crew.llm.pricing import Price

PRICE = Price(0.001, 0.002, "table:test")


def request(max_tokens: int = 100, text: str = "x" * 300) -> LLMRequest:
    return LLMRequest(role="Writer", messages=(Message("user", text),), max_tokens=max_tokens)


def result(req: LLMRequest, tokens_in: int, tokens_out: int, cost: float | None) -> CallResult:
    now = datetime.now(UTC)
    response = LLMResponse("ok", "m", tokens_in, tokens_out, 1.0)
    return CallResult(req, response, "openai", "m", now, now, cost_usd=cost)


def test_no_limits_no_budget() -> None:
    assert RunBudget.for_run(max_cost_usd=None, max_tokens=None) is None


async def test_token_reservations_count_calls_in_flight() -> None:
    req = request()
    worst = prompt_tokens_worst(req) + 103  # 32 per request + (300 bytes + 8) + 100 + 3
    assert worst == 443
    budget = RunBudget(max_tokens=900)
    first = await budget.reserve(req, None)  # token budgets need no price
    await budget.reserve(req, None)
    assert budget.in_flight == 2
    with pytest.raises(RunBudgetExceeded) as caught:
        await budget.reserve(req, None)
    assert caught.value.payload() == {
        "budget": "tokens",
        "limit": 900,
        "spent": 0,
        "would_spend": 1329,
        "overshoot": 0,
    }
    assert isinstance(caught.value, BudgetExceededError) and caught.value.exit_code == 3
    budget.settle(first, result(req, 80, 20, 0.0))
    assert budget.spent_tokens == 100 and budget.in_flight == 1
    with pytest.raises(RunBudgetExceeded):  # once refused, the budget stays spent
        await budget.reserve(request(max_tokens=1, text="x"), None)


async def test_cost_reservation_and_settlement() -> None:
    budget = RunBudget(max_cost_usd=0.001, spent_cost_usd=0.0002)
    req = request(max_tokens=100)
    token = await budget.reserve(req, PRICE)  # worst: 340 * 0.001/1k + 103 * 0.002/1k
    assert budget.reserved_cost_usd == pytest.approx(0.000546)
    budget.settle(token, None)  # a failed call spends nothing
    assert budget.reserved_cost_usd == 0 and budget.spent_cost_usd == pytest.approx(0.0002)
    token = await budget.reserve(req, PRICE)
    budget.settle(token, result(req, 90, 50, 0.00019))
    assert budget.spent_cost_usd == pytest.approx(0.00039)


async def test_unknown_price_cannot_pass_a_cost_budget() -> None:
    budget = RunBudget(max_cost_usd=5.0)
    with pytest.raises(RunBudgetExceeded, match="no known price"):
        await budget.reserve(request(), None)


async def test_for_run_starts_from_stored_totals_and_supervisor_calls() -> None:
    class Run:
        cost_usd = 0.5
        input_tokens = 100
        output_tokens = 50

    req = request()
    budget = RunBudget.for_run(
        max_cost_usd=1.0, max_tokens=None, run=Run(), calls=[result(req, 10, 5, 0.25)]
    )
    assert budget is not None
    assert budget.spent_cost_usd == pytest.approx(0.75) and budget.spent_tokens == 165


def test_the_prompt_bound_counts_bytes_not_characters() -> None:
    french = "Synthèse détaillée : où en est-on ? Éléments déjà réunis, à vérifier. " * 20
    req = request(text=french)
    # every tokenizer makes at most one token per byte; accented letters are two bytes
    assert prompt_tokens_worst(req) >= len(french.encode("utf-8")) > len(french)


async def test_usage_reported_past_a_limit_ends_the_budget_with_the_overshoot() -> None:
    budget = RunBudget(max_tokens=1000)
    req = request(max_tokens=100)
    token = await budget.reserve(req, None)
    budget.settle(token, result(req, 300, 5000, 0.0))  # a server ignoring max_tokens
    assert budget.exceeded is not None and budget.exceeded.overshoot == 4300
    assert budget.exceeded.payload()["overshoot"] == 4300
    assert budget.claim_report() and not budget.claim_report()  # one BUDGET_EXCEEDED
    with pytest.raises(RunBudgetExceeded):
        await budget.reserve(request(max_tokens=1, text="x"), None)


def test_a_budget_already_passed_by_the_supervisor_is_spent() -> None:
    budget = RunBudget(max_cost_usd=0.01, spent_cost_usd=0.02)
    assert budget.exceeded is not None and budget.exceeded.kind == "cost"
    assert budget.exceeded.overshoot == pytest.approx(0.01)
