"""Per-provider concurrency limits, shared by every node of a process.

MAX_CONCURRENCY bounds nodes; these bound calls in flight to one provider. They differ
because the constraint differs: a laptop running Ollama serves one or two generations
at a time (more only queue up and hit timeouts), while a hosted API is bounded by rate
limits. The offline provider needs no bound. Each provider's bound is its spec's
(crew/llm/registry.py `max_concurrency`), read once per process.

Semaphores are created on first use in a running loop and re-created if a later call
runs in another loop (an asyncio semaphore cannot be shared across loops; a process that
runs several `asyncio.run` in turn, like a test session, would otherwise fail).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from crew.llm.registry import max_concurrency
from crew.settings import Settings


class ProviderLimits:
    """One asyncio.Semaphore per bounded provider; create one per process and share it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._capacities: dict[str, int | None] = {}
        self._semaphores: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}
        self._in_flight: dict[str, int] = {}

    def capacity(self, provider: str) -> int | None:
        """The most calls in flight to `provider`; None means unbounded (offline)."""
        if provider not in self._capacities:
            self._capacities[provider] = max_concurrency(self.settings, provider)
        return self._capacities[provider]

    def semaphore(self, provider: str) -> asyncio.Semaphore | None:
        """`provider`'s semaphore for the running loop; None when unbounded."""
        capacity = self.capacity(provider)
        if capacity is None:
            return None
        loop = asyncio.get_running_loop()
        entry = self._semaphores.get(provider)
        if entry is None or entry[0] is not loop:
            entry = self._semaphores[provider] = (loop, asyncio.Semaphore(capacity))
        return entry[1]

    def in_flight(self, provider: str) -> int:
        """Calls to `provider` currently holding a slot (for metrics and tests)."""
        return self._in_flight.get(provider, 0)

    @asynccontextmanager
    async def slot(self, provider: str) -> AsyncIterator[None]:
        """Hold one of `provider`'s slots for the duration of a call."""
        semaphore = self.semaphore(provider)
        if semaphore is not None:
            await semaphore.acquire()
        self._in_flight[provider] = self._in_flight.get(provider, 0) + 1
        try:
            yield
        finally:
            self._in_flight[provider] -= 1
            if semaphore is not None:
                semaphore.release()
