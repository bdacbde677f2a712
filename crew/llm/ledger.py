"""Every call made on behalf of one piece of work, answered or not.

A node or a plan may make several calls (repairs, retries) and still fail; the calls
that reached a server were spent all the same and must be recorded. Agents do not carry
a list of calls through every raise: the LLM client appends each call to the ledger of
the current context (a context variable), and whoever opened the ledger — the engine for
a node attempt, `crew plan` for the supervisor — records what it holds, on success and
on failure alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime

from crew.llm.base import LLMRequest
from crew.llm.calls import CallResult
from crew.llm.retry import Attempt


@dataclass(frozen=True, slots=True)
class FailedCall:
    """A call no provider answered: its tries (HTTP status, server message) and why."""

    request: LLMRequest
    provider: str
    model: str | None
    started_at: datetime
    ended_at: datetime
    elapsed_ms: float
    error: str
    attempt_log: list[Attempt] = field(default_factory=list)

    @property
    def reached_server(self) -> bool:
        """True when a server answered at least one try (with an error status)."""
        return any(a.status is not None for a in self.attempt_log)

    def to_dict(self) -> dict[str, object]:
        return {
            "provider": self.provider,
            "model": self.model,
            "error": self.error,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat(),
            "attempts_detail": [a.to_dict() for a in self.attempt_log],
        }


@dataclass(slots=True)
class CallLedger:
    """The calls of one piece of work, in order."""

    answered: list[CallResult] = field(default_factory=list)
    failed: list[FailedCall] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.answered or self.failed)

    def usage(self) -> tuple[int, int, float | None]:
        """Tokens in, tokens out and cost (None when a price is unknown) of the answered
        calls; a failed call reported no usage."""
        input_tokens = sum(c.response.input_tokens for c in self.answered)
        output_tokens = sum(c.response.output_tokens for c in self.answered)
        if any(c.cost_usd is None for c in self.answered):
            return input_tokens, output_tokens, None
        return input_tokens, output_tokens, sum(c.cost_usd or 0.0 for c in self.answered)


_current: ContextVar[CallLedger | None] = ContextVar("crew_call_ledger", default=None)


@contextmanager
def recording() -> Iterator[CallLedger]:
    """Collect every call made in this context (and tasks it starts) until the block ends.

    Ledgers nest: a call is recorded in the innermost one only.
    """
    ledger = CallLedger()
    token = _current.set(ledger)
    try:
        yield ledger
    finally:
        _current.reset(token)


def current() -> CallLedger | None:
    return _current.get()
