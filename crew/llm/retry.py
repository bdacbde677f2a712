"""Retrying provider calls: exponential backoff with jitter, honouring Retry-After.

Only a ProviderError marked `retryable` is retried (connection errors, timeouts, 429,
5xx): anything else is either the caller's mistake or a bug, and repeating it would only
spend time and money. Jitter spreads the retries of many nodes that failed together, so
they do not hit a recovering server at the same instant.

Every attempt is recorded as an `Attempt`, because the sidecar lists them: a call that
succeeded on its third try cost three requests' worth of waiting, and users ask why.
This module stays free of HTTP imports so the engine can use it without loading httpx.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from crew.domain.errors import ProviderError

T = TypeVar("T")

Jitter = Literal["full", "equal", "none"]

MAX_BACKOFF_S = 30.0
"""No computed backoff waits longer than this, whatever the factor and attempt number."""

MAX_RETRY_AFTER_S = 120.0
"""A server asking to wait longer than this ends the retries: fallback may answer sooner."""

_RNG = random.Random()


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of one call, as the sidecar records it."""

    number: int
    """1 for the first try."""
    provider: str
    model: str | None
    ok: bool
    error: str | None = None
    status: int | None = None
    """The HTTP status when the server answered with an error; None otherwise."""
    retryable: bool | None = None
    wait_s: float = 0.0
    """How long crew waited after this attempt before the next one."""
    latency_ms: float | None = field(default=None, compare=False)
    """How long the try itself took, failed ones included (None: not measured); not
    part of equality: two records of the same try differ only by the clock."""

    def to_dict(self) -> dict[str, object]:
        # Spelled out: dataclasses.asdict deep-copies every field, once per sidecar.
        return {
            "number": self.number,
            "provider": self.provider,
            "model": self.model,
            "ok": self.ok,
            "error": self.error,
            "status": self.status,
            "retryable": self.retryable,
            "wait_s": self.wait_s,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
        }


def backoff_delay(
    retry_number: int,
    *,
    base_ms: int,
    factor: float,
    jitter: Jitter = "equal",
    rng: random.Random | None = None,
    max_s: float = MAX_BACKOFF_S,
) -> float:
    """Seconds to wait before retry number `retry_number` (1 for the first retry).

    The ceiling grows as base * factor ** (n - 1), capped at `max_s`. "full" jitter waits
    uniformly in [0, ceiling]; "equal" in [ceiling / 2, ceiling] (never retries at once);
    "none" waits exactly the ceiling.
    """
    if retry_number < 1:
        raise ValueError("retry_number starts at 1")
    try:
        ceiling = min(max_s, (base_ms / 1000.0) * factor ** (retry_number - 1))
    except OverflowError:
        ceiling = max_s
    source = rng or _RNG
    if jitter == "full":
        return source.uniform(0.0, ceiling)
    if jitter == "equal":
        return ceiling / 2 + source.uniform(0.0, ceiling / 2)
    return ceiling


async def with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    max_retries: int,
    base_ms: int,
    factor: float,
    on_retry: Callable[[int, ProviderError, float], None] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rng: random.Random | None = None,
    jitter: Jitter = "equal",
    provider: str = "",
    model: str | None = None,
    attempts_log: list[Attempt] | None = None,
    max_retry_after_s: float = MAX_RETRY_AFTER_S,
) -> tuple[T, int]:
    """Run `call` until it succeeds, at most `max_retries` extra times; (result, attempts).

    Before retry n, waits max(backoff_delay(n), the error's retry_after_s). A Retry-After
    beyond `max_retry_after_s` stops retrying at once. `on_retry(attempt, error, delay_s)`
    is called before each wait (for logs and NODE_RETRYING events). When `attempts_log` is
    given, one `Attempt` per try is appended to it, the successful one included. After the
    last failure the last ProviderError is raised unchanged.
    """
    attempt = 0
    while True:
        attempt += 1
        started = time.perf_counter()
        try:
            result = await call()
        except ProviderError as error:
            latency_ms = (time.perf_counter() - started) * 1000.0
            delay = _next_delay(
                error, attempt, max_retries, base_ms, factor, jitter, rng, max_retry_after_s
            )
            if attempts_log is not None:
                attempts_log.append(
                    _failed(attempt, error, provider, model, delay or 0.0, latency_ms)
                )
            if delay is None:
                raise
            if on_retry is not None:
                on_retry(attempt, error, delay)
            await sleep(delay)
        else:
            if attempts_log is not None:
                latency_ms = (time.perf_counter() - started) * 1000.0
                attempts_log.append(
                    Attempt(attempt, provider, model, ok=True, latency_ms=latency_ms)
                )
            return result, attempt


def _next_delay(
    error: ProviderError,
    attempt: int,
    max_retries: int,
    base_ms: int,
    factor: float,
    jitter: Jitter,
    rng: random.Random | None,
    max_retry_after_s: float,
) -> float | None:
    """The wait before the next try, or None when this error ends the retries."""
    if not error.retryable or attempt > max_retries:
        return None
    delay = backoff_delay(attempt, base_ms=base_ms, factor=factor, jitter=jitter, rng=rng)
    if error.retry_after_s is not None:
        if error.retry_after_s > max_retry_after_s:
            return None
        delay = max(delay, error.retry_after_s)
    return delay


def _failed(
    number: int,
    error: ProviderError,
    provider: str,
    model: str | None,
    wait_s: float,
    latency_ms: float | None = None,
) -> Attempt:
    status = getattr(error, "status", None)
    return Attempt(
        number=number,
        provider=error.provider or provider,
        model=model,
        ok=False,
        error=error.message,
        status=status if isinstance(status, int) else None,
        retryable=error.retryable,
        wait_s=wait_s,
        latency_ms=latency_ms,
    )
