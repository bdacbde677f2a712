"""A run's cost and token budget, checked before every LLM call.

Checking after the fact cannot keep a promise: by the time a call reports its usage the
money is spent. So each call first *reserves* its worst case and starts only if the
run's spend, plus what calls in flight have reserved, plus this reservation, stays
within the limits. When the call ends, its reservation is replaced by its real usage.

The worst case is a bound, not an estimate: a prompt counts at most one token per UTF-8
byte of its messages (every tokenizer crew meets — byte-level BPE, SentencePiece with
byte fallback — turns each byte into at most one token), plus a fixed allowance per
message and per request for the chat template's special tokens; the answer counts
`max_tokens` plus COMPLETION_OVERRUN (servers with byte-level vocabularies finish a
character that `max_tokens` cut in the middle: the llama.cpp server reports 26 for 24).
So a run only passes a limit when a server reports more than that bound (some ignore
`max_tokens` altogether): the reported usage is what counts, the
run stops as soon as it passes a limit — no call starts after that — and the excess is
recorded as `overshoot` in BUDGET_EXCEEDED. The guarantee: spend ends at most the limit
plus what the calls in flight at that moment used beyond their reservation.

Once one call is refused the budget is spent for good: no later call starts, even a
smaller one that would fit, so a run does not keep nibbling at the limit. Calls already
in flight finish and are accounted for.

A cost budget cannot be checked against a model nobody priced: such a call is refused
(with the variables to set) rather than let through unchecked. A token budget is always
checkable.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from crew.domain.errors import BudgetExceededError
from crew.llm.base import LLMRequest
from crew.llm.client import CallResult
from crew.llm.pricing import Price, worst_case_cost

TOKENS_PER_MESSAGE = 8
"""Chat-template tokens around one message (start and end markers, the role, the
separator and a tokenizer's leading-space piece): the largest common templates use 5."""

TOKENS_PER_REQUEST = 32
"""Chat-template tokens around the whole conversation: the beginning-of-text token, the
assistant's generation prompt, and the header some templates add to a system message."""


COMPLETION_OVERRUN = 3
"""Tokens a server may generate past `max_tokens` to finish a UTF-8 character (at most
four bytes, one already generated)."""


def completion_tokens_worst(request: LLMRequest) -> int:
    """The most tokens a request's answer can count, on a server that keeps max_tokens."""
    return request.max_tokens + COMPLETION_OVERRUN


def prompt_tokens_worst(request: LLMRequest) -> int:
    """The most tokens a request's prompt can count (see the module docstring)."""
    return TOKENS_PER_REQUEST + sum(
        len(m.content.encode("utf-8")) + TOKENS_PER_MESSAGE for m in request.messages
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
        overshoot: float = 0,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.limit = limit
        self.spent = spent
        self.would_spend = would_spend
        self.overshoot = overshoot
        """How far reported usage went past the limit (0 when a call was refused in time)."""

    def payload(self) -> dict[str, Any]:
        return {
            "budget": self.kind,
            "limit": self.limit,
            "spent": self.spent,
            "would_spend": self.would_spend,
            "overshoot": self.overshoot,
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
        """The first refusal or overshoot; once set, every reservation is refused."""
        self._reported = False
        self._check_overshoot()

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
                overshoot=first.overshoot,
            )
        tokens = prompt_tokens_worst(request) + completion_tokens_worst(request)
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
                cost = worst_case_cost(
                    price, prompt_tokens_worst(request), completion_tokens_worst(request)
                )
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
        self._check_overshoot()

    def claim_report(self) -> bool:
        """True once, for whoever reports the budget as exceeded (one BUDGET_EXCEEDED per
        run, whether a refusal or an overshoot found it first)."""
        if self.exceeded is None or self._reported:
            return False
        self._reported = True
        return True

    def _check_overshoot(self) -> None:
        """Reported usage past a limit ends the budget: nothing starts after that."""
        if self.exceeded is not None:
            return
        if self.max_tokens is not None and self.spent_tokens > self.max_tokens:
            over = self.spent_tokens - self.max_tokens
            self.exceeded = RunBudgetExceeded(
                f"token budget exceeded: the servers reported {self.spent_tokens} token(s), "
                f"{over} past the limit of {self.max_tokens}; no new LLM call starts",
                kind="tokens",
                limit=self.max_tokens,
                spent=self.spent_tokens,
                would_spend=None,
                overshoot=over,
            )
        elif self.max_cost_usd is not None and self.spent_cost_usd > self.max_cost_usd + 1e-12:
            over_usd = round(self.spent_cost_usd - self.max_cost_usd, 9)
            self.exceeded = RunBudgetExceeded(
                f"cost budget exceeded: the reported usage cost ${self.spent_cost_usd:.6f}, "
                f"${over_usd:.6f} past the limit of ${self.max_cost_usd:.6f}; no new LLM "
                "call starts",
                kind="cost",
                limit=self.max_cost_usd,
                spent=round(self.spent_cost_usd, 9),
                would_spend=None,
                overshoot=over_usd,
            )

    def _refuse(
        self, message: str, *, kind: str, limit: float, spent: float, would_spend: float | None
    ) -> None:
        self.exceeded = RunBudgetExceeded(
            message, kind=kind, limit=limit, spent=spent, would_spend=would_spend
        )
        raise self.exceeded
