"""with_retries: which errors are retried, how long it waits, what it records."""

from __future__ import annotations

import dataclasses
import random

import pytest

from crew.domain.errors import ProviderError
from crew.llm.retry import Attempt, backoff_delay, with_retries


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Script:
    """A call that raises the scripted errors in turn, then returns "ok"."""

    def __init__(self, *errors: ProviderError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def retryable(message: str = "HTTP 503", retry_after_s: float | None = None) -> ProviderError:
    return ProviderError(message, provider="openai", retryable=True, retry_after_s=retry_after_s)


@pytest.mark.parametrize("retry_number", [1, 2, 3, 6])
def test_full_jitter_bounds(retry_number: int) -> None:
    rng = random.Random(42)
    ceiling = min(30.0, 0.2 * 3.0 ** (retry_number - 1))
    delays = [
        backoff_delay(retry_number, base_ms=200, factor=3.0, jitter="full", rng=rng)
        for _ in range(500)
    ]
    assert all(0.0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling * 0.9 and min(delays) < ceiling * 0.1  # actually spread


@pytest.mark.parametrize("retry_number", [1, 2, 4])
def test_equal_jitter_bounds(retry_number: int) -> None:
    rng = random.Random(7)
    ceiling = 0.5 * 2.0 ** (retry_number - 1)
    delays = [
        backoff_delay(retry_number, base_ms=500, factor=2.0, jitter="equal", rng=rng)
        for _ in range(500)
    ]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)


def test_backoff_is_capped_and_exponential_without_jitter() -> None:
    assert [backoff_delay(n, base_ms=100, factor=2.0, jitter="none") for n in (1, 2, 3)] == [
        0.1,
        0.2,
        0.4,
    ]
    assert backoff_delay(50, base_ms=1000, factor=10.0, jitter="none", max_s=30.0) == 30.0
    assert backoff_delay(100_000, base_ms=1000, factor=10.0, jitter="none") == 30.0
    with pytest.raises(ValueError):
        backoff_delay(0, base_ms=100, factor=2.0)


async def test_success_after_retries_counts_attempts() -> None:
    call = Script(retryable(), retryable())
    sleep = FakeSleep()
    retries: list[tuple[int, str, float]] = []
    result, attempts = await with_retries(
        call,
        max_retries=3,
        base_ms=100,
        factor=2.0,
        sleep=sleep,
        jitter="none",
        on_retry=lambda n, error, delay: retries.append((n, error.message, delay)),
    )
    assert (result, attempts) == ("ok", 3)
    assert sleep.delays == [0.1, 0.2]
    assert retries == [(1, "HTTP 503", 0.1), (2, "HTTP 503", 0.2)]


async def test_retry_after_is_honoured() -> None:
    call = Script(retryable(retry_after_s=5.0), retryable(retry_after_s=0.01))
    sleep = FakeSleep()
    _, attempts = await with_retries(
        call, max_retries=3, base_ms=100, factor=2.0, sleep=sleep, jitter="none"
    )
    assert attempts == 3
    assert sleep.delays == [5.0, 0.2]  # max(backoff, Retry-After)


async def test_too_long_retry_after_stops_retrying() -> None:
    call = Script(retryable(retry_after_s=3600.0))
    sleep = FakeSleep()
    with pytest.raises(ProviderError):
        await with_retries(call, max_retries=3, base_ms=100, factor=2.0, sleep=sleep)
    assert call.calls == 1 and sleep.delays == []


async def test_non_retryable_is_raised_immediately() -> None:
    error = ProviderError("rejected the API key", provider="openai", retryable=False)
    call = Script(error)
    sleep = FakeSleep()
    log: list[Attempt] = []
    with pytest.raises(ProviderError) as caught:
        await with_retries(
            call, max_retries=5, base_ms=100, factor=2.0, sleep=sleep, attempts_log=log
        )
    assert caught.value is error
    assert call.calls == 1 and sleep.delays == []
    assert log == [
        Attempt(1, "openai", None, ok=False, error="rejected the API key", retryable=False)
    ]


async def test_last_error_raised_after_retries_run_out() -> None:
    errors = [retryable(f"failure {n}") for n in range(1, 4)]
    call = Script(*errors)
    sleep = FakeSleep()
    log: list[Attempt] = []
    with pytest.raises(ProviderError) as caught:
        await with_retries(
            call,
            max_retries=2,
            base_ms=100,
            factor=2.0,
            sleep=sleep,
            rng=random.Random(0),
            provider="openai",
            model="gpt-4o-mini",
            attempts_log=log,
        )
    assert caught.value is errors[2]
    assert call.calls == 3 and len(sleep.delays) == 2
    assert [a.number for a in log] == [1, 2, 3]
    assert [a.error for a in log] == ["failure 1", "failure 2", "failure 3"]
    assert [a.wait_s for a in log[:2]] == pytest.approx(sleep.delays)
    assert log[2].wait_s == 0.0
    assert log[0].to_dict()["model"] == "gpt-4o-mini"


async def test_zero_retries_means_one_attempt() -> None:
    call = Script(retryable())
    with pytest.raises(ProviderError):
        await with_retries(call, max_retries=0, base_ms=100, factor=2.0, sleep=FakeSleep())
    assert call.calls == 1


async def test_other_exceptions_are_not_retried() -> None:
    calls = 0

    async def broken() -> str:
        nonlocal calls
        calls += 1
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await with_retries(broken, max_retries=3, base_ms=100, factor=2.0, sleep=FakeSleep())
    assert calls == 1


async def test_success_is_recorded() -> None:
    log: list[Attempt] = []
    result, attempts = await with_retries(
        Script(), max_retries=3, base_ms=1, factor=2.0, provider="ollama", attempts_log=log
    )
    assert (result, attempts) == ("ok", 1)
    assert log == [Attempt(1, "ollama", None, ok=True)]


def test_attempt_to_dict_names_every_field() -> None:
    attempt = Attempt(2, "openai", "m", False, error="boom", status=503, retryable=True, wait_s=1.5)
    assert attempt.to_dict() == {
        "number": 2,
        "provider": "openai",
        "model": "m",
        "ok": False,
        "error": "boom",
        "status": 503,
        "retryable": True,
        "wait_s": 1.5,
        "latency_ms": None,
    }
    assert set(attempt.to_dict()) == {f.name for f in dataclasses.fields(Attempt)}
