"""Test doubles shared by the agent and engine tests.

`ScriptedProvider` plays back a script of answers and records every request, plus how
many calls overlapped, so concurrency bounds can be asserted without timing anything.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence

from crew.domain.errors import ProviderError
from crew.llm.base import LLMRequest, LLMResponse, estimate_tokens

AnswerFn = Callable[[LLMRequest], str | Awaitable[str]]
Answer = str | BaseException | AnswerFn


class ScriptExhaustedError(AssertionError):
    """The code under test made more calls than the script planned for."""


class ScriptedProvider:
    """A Provider answering from a script.

    Each call takes the next entry of `answers`: a string is the answer text, an
    exception is raised, a callable gets the request and returns (or awaits) the text.
    When the script runs out, `default` (same kinds) answers; without one, the call fails
    with ScriptExhaustedError. `delay_s` (or a per-request `delay` callable) sleeps
    before answering, which is how overlapping calls are produced for `max_in_flight`.
    """

    def __init__(
        self,
        answers: Sequence[Answer] = (),
        *,
        name: str = "scripted",
        model: str = "scripted-model",
        default: Answer | None = None,
        delay_s: float = 0.0,
        delay: Callable[[LLMRequest], float] | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.answers = list(answers)
        self.default = default
        self.delay_s = delay_s
        self.delay = delay
        self.requests: list[LLMRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False

    @property
    def calls(self) -> int:
        return len(self.requests)

    def calls_for(self, role: str) -> list[LLMRequest]:
        return [r for r in self.requests if r.role == role]

    async def complete(self, request: LLMRequest) -> LLMResponse:
        index = len(self.requests)
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            wait = self.delay(request) if self.delay is not None else self.delay_s
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                await asyncio.sleep(0)  # let other calls start, as a real server would
            text = await self._answer(index, request)
        finally:
            self.in_flight -= 1
        prompt = "\n".join(m.content for m in request.messages)
        return LLMResponse(
            text=text,
            model=request.model or self.model,
            input_tokens=estimate_tokens(prompt),
            output_tokens=estimate_tokens(text),
            latency_ms=wait * 1000,
            finish_reason="stop",
            provider=self.name,
        )

    async def _answer(self, index: int, request: LLMRequest) -> str:
        if index < len(self.answers):
            entry: Answer | None = self.answers[index]
        else:
            entry = self.default
        if entry is None:
            raise ScriptExhaustedError(f"no scripted answer for call #{index + 1}")
        if isinstance(entry, BaseException):
            raise entry
        if isinstance(entry, str):
            return entry
        result = entry(request)
        if inspect.isawaitable(result):
            return await result
        return result

    async def aclose(self) -> None:
        self.closed = True


def unavailable(message: str = "connection refused", retryable: bool = True) -> ProviderError:
    """A provider failure, as an HTTP provider would raise it."""
    return ProviderError(message, provider="scripted", retryable=retryable)
