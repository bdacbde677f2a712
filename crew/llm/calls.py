"""What one LLM call is, once made, and what the client asks of a budget and an observer.

Separate from crew/llm/client.py (which re-exports these names) so the records the
engine, the sidecars and the metrics read do not pull the client's machinery in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from crew.llm.base import LLMRequest, LLMResponse
from crew.llm.pricing import Price
from crew.llm.resolution import ResolvedLLM
from crew.llm.retry import Attempt


@dataclass(frozen=True, slots=True)
class CallResult:
    """One LLM call as the engine records it (sidecar, events, totals)."""

    request: LLMRequest
    """The request that was answered (its model is the fallback's when one answered)."""
    response: LLMResponse
    provider: str
    """The provider that answered."""
    model: str
    """The model requested (the provider's answering model when none was requested)."""
    started_at: datetime
    ended_at: datetime
    attempts: int = 1
    """Tries made for this call, across retries and fallback providers."""
    fallback_from: str | None = None
    """The provider resolved for the call when another one (LLM_FALLBACK_ORDER) answered."""
    cost_usd: float | None = None
    price_source: str | None = None
    resolved: ResolvedLLM | None = None
    attempt_log: list[Attempt] = field(default_factory=list)
    """Every try, failed ones included, in order."""
    elapsed_ms: float | None = None
    """The whole call: failed tries, waits between them and fallback included (the
    response's `latency_ms` is the answering request alone)."""


class CallBudget(Protocol):
    """What the client needs from a run budget (crew.engine.budget implements it).

    `reserve` is awaited before a call starts and raises BudgetExceededError when the
    call's worst case does not fit; `settle` is called exactly once per reservation, with
    the finished call, or None when the call failed (nothing was spent).
    """

    async def reserve(self, request: LLMRequest, price: Price | None) -> object: ...

    def settle(self, token: object, result: CallResult | None) -> None: ...


class CallObserver(Protocol):
    """Told of every provider request and every answered call (metrics use it).

    `request_done` runs once per try (retries and fallbacks are separate requests) with
    the provider's name, the requested model (None: the provider's default), the agent
    role, an outcome (`ok`, `error`, `canceled`) and the seconds the provider took;
    `call_done` once per answered call. Both must be cheap and must not raise.
    """

    def request_done(
        self, provider: str, model: str | None, role: str, outcome: str, seconds: float
    ) -> None: ...

    def call_done(self, result: CallResult) -> None: ...
