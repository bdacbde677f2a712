"""A run's cost and token budget, checked before every LLM call.

Checking after the fact cannot keep a promise: by the time a call reports its usage the
money is spent. So each call first *reserves* its worst case (its prompt, estimated
generously, plus every token it may generate, at its model's price) and starts only if
the run's spend, plus what calls in flight have reserved, plus this reservation, stays
within the limits. When the call ends, its reservation is replaced by its real usage.
The overshoot is therefore bounded by how far calls in flight exceed their estimate,
which for a token count that the server reports is nothing on the output side.

Once one call is refused the budget is spent for good: no later call starts, even a
smaller one that would fit, so a run does not keep nibbling at the limit. Calls already
in flight finish and are accounted for.

A cost budget cannot be checked against a model nobody priced: such a call is refused
(with the variables to set) rather than let through unchecked. A token budget is always
checkable.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from crew.domain.errors import BudgetExceededError
from crew.llm.base import LLMRequest
from crew.llm.client import CallResult
from crew.llm.pricing import Price, worst_case_cost

CHARS_PER_TOKEN_WORST = 3
"""Characters per token assumed when reserving a prompt: fewer than the usual four, so
the reservation covers languages and texts that tokenize densely."""

TOKENS_PER_MESSAGE = 4
"""Per-message overhead of chat formats (role markers), added to the prompt estimate."""


def prompt_tokens_worst(request: LLMRequest) -> int:
    """A generous estimate of the tokens a request's messages will count."""
    return sum(
        math.ceil(len(m.content) / CHARS_PER_TOKEN_WORST) + TOKENS_PER_MESSAGE
        for m in request.messages
    )


class RunBudgetExceeded(BudgetExceededError):
    """A call was refused; carries what the BUDGET_EXCEEDED event reports."""

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        limit: float,
        spent: float,
        would_spend: float | None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.limit = limit
        self.spent = spent
        self.would_spend = would_spend

    def payload(self) -> dict[str, Any]:
        return {
            "budget": self.kind,
            "limit": self.limit,
            "spent": self.spent,
            "would_spend": self.would_spend,
        }


@dataclass(frozen=True, slots=True)
class Reservation:
    id: int
    tokens: int
    cost_usd: float


class RunBudget:
    """The budget of one run, shared by every call the run makes (in one process)."""

    def __init__(
        self,
        *,
        max_cost_usd: float | None = None,
        max_tokens: int | None = None,
        spent_cost_usd: float = 0.0,
        spent_tokens: int = 0,
    ) -> None:
        self.max_cost_usd = max_cost_usd
        self.max_tokens = max_tokens
        self.spent_cost_usd = spent_cost_usd
        self.spent_tokens = spent_tokens
        self._open: dict[int, Reservation] = {}
        self._ids = itertools.count(1)
        self.exceeded: RunBudgetExceeded | None = None
        """The first refusal; once set, every reservation is refused."""

    @classmethod
    def for_run(
        cls,
        *,
        max_cost_usd: float | None,
        max_tokens: int | None,
        run: Any = None,
        calls: Iterable[CallResult] = (),
    ) -> RunBudget | None:
        """The budget of a run from its stored totals plus `calls` not stored yet (the
        supervisor's); None when the run has no limit."""
        if max_cost_usd is None and max_tokens is None:
            return None
        cost = float(getattr(run, "cost_usd", 0.0) or 0.0)
        tokens = int(getattr(run, "input_tokens", 0) or 0) + int(
            getattr(run, "output_tokens", 0) or 0
        )
        for call in calls:
            cost += call.cost_usd or 0.0
            tokens += call.response.input_tokens + call.response.output_tokens
        return cls(
            max_cost_usd=max_cost_usd,
            max_tokens=max_tokens,
            spent_cost_usd=cost,
            spent_tokens=tokens,
        )

    @property
    def reserved_tokens(self) -> int:
        return sum(r.tokens for r in self._open.values())

    @property
    def reserved_cost_usd(self) -> float:
        return sum(r.cost_usd for r in self._open.values())

    @property
    def in_flight(self) -> int:
        return len(self._open)

    async def reserve(self, request: LLMRequest, price: Price | None) -> Reservation:
        """Reserve the call's worst case, or raise RunBudgetExceeded (nothing is sent)."""
        if self.exceeded is not None:
            first = self.exceeded
            raise RunBudgetExceeded(
                first.message,
                kind=first.kind,
                limit=first.limit,
                spent=first.spent,
                would_spend=first.would_spend,
            )
        tokens = prompt_tokens_worst(request) + request.max_tokens
        cost = 0.0
        if self.max_tokens is not None:
            committed = self.spent_tokens + self.reserved_tokens
            if committed + tokens > self.max_tokens:
                self._refuse(
                    f"token budget exceeded: {committed} token(s) spent or in flight, the "
                    f"next call may use up to {tokens}, the limit is {self.max_tokens}",
                    kind="tokens",
                    limit=self.max_tokens,
                    spent=self.spent_tokens,
                    would_spend=committed + tokens,
                )
        if self.max_cost_usd is not None:
            if price is None:
                self._refuse(
                    f"cost budget cannot be checked: model {request.model!r} has no known "
                    "price; set OPENAI_PRICE_PROMPT_<MODEL>_PER_1K and "
                    "OPENAI_PRICE_COMPLETION_<MODEL>_PER_1K (0 for a free model)",
                    kind="cost",
                    limit=self.max_cost_usd,
                    spent=round(self.spent_cost_usd, 9),
                    would_spend=None,
                )
            else:
                cost = worst_case_cost(price, prompt_tokens_worst(request), request.max_tokens)
                committed_cost = self.spent_cost_usd + self.reserved_cost_usd
                if committed_cost + cost > self.max_cost_usd + 1e-12:
                    self._refuse(
                        f"cost budget exceeded: ${committed_cost:.6f} spent or in flight, the "
                        f"next call may cost up to ${cost:.6f}, the limit is "
                        f"${self.max_cost_usd:.6f}",
                        kind="cost",
                        limit=self.max_cost_usd,
                        spent=round(self.spent_cost_usd, 9),
                        would_spend=round(committed_cost + cost, 9),
                    )
        reservation = Reservation(next(self._ids), tokens, cost)
        self._open[reservation.id] = reservation
        return reservation

    def settle(self, token: object, result: CallResult | None) -> None:
        """Replace a reservation by what the call really used (nothing if it failed)."""
        if not isinstance(token, Reservation) or self._open.pop(token.id, None) is None:
            return
        if result is None:
            return
        self.spent_tokens += result.response.input_tokens + result.response.output_tokens
        self.spent_cost_usd += result.cost_usd or 0.0

    def _refuse(
        self, message: str, *, kind: str, limit: float, spent: float, would_spend: float | None
    ) -> None:
        self.exceeded = RunBudgetExceeded(
            message, kind=kind, limit=limit, spent=spent, would_spend=would_spend
        )
        raise self.exceeded
