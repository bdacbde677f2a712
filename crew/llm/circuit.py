"""A circuit breaker per provider and model, so a dead provider costs one retry cycle.

Without it, every node of a run would repeat the whole retry cycle against a provider
that is down (minutes of backoff per node) before its fallback answers. Once a provider
has failed its retries, its circuit *opens*: for `cooldown_s` later calls go straight to
the next provider of LLM_FALLBACK_ORDER. Then one call is let through as a *probe*
(half-open) with a single try: an answer closes the circuit, a failure opens it again.

Only transient failures (the server is down, overloaded, timing out) open a circuit: an
invalid request or a rejected key says nothing about whether the provider is up. A
provider with no fallback after it is always tried (failing fast there would turn an
outage into failed nodes without asking).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_COOLDOWN_S = 30.0
"""How long an open circuit sends calls to the fallback before probing again."""

Key = tuple[str, str | None]


@dataclass(slots=True)
class _Circuit:
    opened_at: float
    failures: int = 1
    probing: bool = False


class CircuitBreaker:
    """Open, half-open and closed circuits, keyed by (provider, model)."""

    def __init__(
        self,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._open: dict[Key, _Circuit] = {}

    def state(self, key: Key) -> str:
        """`closed`, `open` or `half-open` (the cooldown has passed: a probe may go)."""
        circuit = self._open.get(key)
        if circuit is None:
            return "closed"
        if circuit.probing or self.clock() - circuit.opened_at < self.cooldown_s:
            return "open"
        return "half-open"

    def admit(self, key: Key) -> str | None:
        """How a call may use this provider: `normal`, `probe` (one try), or None (skip)."""
        state = self.state(key)
        if state == "closed":
            return "normal"
        if state == "half-open":
            self._open[key].probing = True
            return "probe"
        return None

    def why_open(self, key: Key) -> str:
        circuit = self._open[key]
        left = max(0.0, self.cooldown_s - (self.clock() - circuit.opened_at))
        return f"circuit open after {circuit.failures} failed call(s); next probe in {left:.0f}s"

    def succeeded(self, key: Key) -> None:
        self._open.pop(key, None)

    def failed(self, key: Key) -> None:
        """A call's tries all failed transiently: open (or re-open) the circuit."""
        circuit = self._open.get(key)
        if circuit is None:
            self._open[key] = _Circuit(opened_at=self.clock())
        else:
            circuit.opened_at = self.clock()
            circuit.failures += 1
            circuit.probing = False

    def released(self, key: Key) -> None:
        """A probe ended without telling anything (cancelled, refused by the budget)."""
        circuit = self._open.get(key)
        if circuit is not None:
            circuit.probing = False
