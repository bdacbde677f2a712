"""A run's budget shared through the database, for every process acting on the run.

RunBudget (crew/engine/budget.py) keeps the executing process's view: its spend and
the reservations of its calls in flight. This adds the database's view on top. Each
reservation is also recorded on the run row by one conditional UPDATE (the run's
committed spend, plus every reservation of any process, plus this one, must fit), and
taken back when the call ends. So a run resumed elsewhere starts from the same spend,
an action from another process (the API) sees the calls in flight, and the overshoot
bound stays "the calls in flight". A new claim resets the reservations: the calls of a
dead owner are no longer in flight.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from crew.engine.budget import Reservation, RunBudget
from crew.engine.store import EngineStore
from crew.llm.base import LLMRequest
from crew.llm.pricing import Price
from crew.store.leases import Fence

log = logging.getLogger("crew.engine")


class SharedRunBudget(RunBudget):
    def __init__(self, *, store: EngineStore, fence: Fence, **limits: Any) -> None:
        super().__init__(**limits)
        self._store = store
        self._fence = fence
        self._releases: set[asyncio.Task[None]] = set()

    @classmethod
    def for_claimed_run(
        cls, store: EngineStore, fence: Fence, *, max_cost_usd: float | None,
        max_tokens: int | None, run: Any,
    ) -> SharedRunBudget | None:  # fmt: skip
        plain = RunBudget.for_run(max_cost_usd=max_cost_usd, max_tokens=max_tokens, run=run)
        if plain is None:
            return None
        return cls(
            store=store,
            fence=fence,
            max_cost_usd=plain.max_cost_usd,
            max_tokens=plain.max_tokens,
            spent_cost_usd=plain.spent_cost_usd,
            spent_tokens=plain.spent_tokens,
        )

    async def reserve(self, request: LLMRequest, price: Price | None) -> Reservation:
        reservation = await super().reserve(request, price)
        accepted = await self._store.reserve_budget(
            self._fence.run_id,
            reservation.tokens,
            reservation.cost_usd,
            max_tokens=self.max_tokens,
            max_cost_usd=self.max_cost_usd,
        )
        if accepted:
            return reservation
        super().settle(reservation, None)
        run = await self._store.get_run(self._fence.run_id)
        reserved = getattr(run, "reserved_tokens", 0)
        kind = "tokens" if self.max_tokens is not None else "cost"
        limit: float = self.max_tokens if self.max_tokens is not None else self.max_cost_usd or 0
        self._refuse(
            f"{kind} budget exceeded: with the run's recorded spend and the calls in flight "
            f"({reserved} token(s) reserved, by this or another process), the next call "
            f"may pass the limit of {limit:g}",
            kind=kind,
            limit=limit,
            spent=self.spent_tokens if kind == "tokens" else round(self.spent_cost_usd, 9),
            would_spend=None,
        )
        raise AssertionError("unreachable: _refuse raises")  # pragma: no cover

    def settle(self, token: object, result: Any) -> None:
        held = isinstance(token, Reservation) and token.id in self._open
        super().settle(token, result)
        if held:
            assert isinstance(token, Reservation)
            task = asyncio.ensure_future(self._release(token))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)

    async def _release(self, reservation: Reservation) -> None:
        try:
            await self._store.release_budget(
                self._fence.run_id, reservation.tokens, reservation.cost_usd
            )
        except Exception:  # the next claim resets it; the run goes on
            log.warning("run %s: could not release a budget reservation", self._fence.run_id)

    async def aclose(self) -> None:
        """Wait for the reservations being taken back (at the run's end)."""
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)
