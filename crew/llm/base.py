"""The provider interface every LLM backend implements.

Requests carry everything a call needs (the agent role is there for logging and for the
offline provider's answers, not for routing: routing happens before a request is built).
Responses carry what the sidecar and the cost accounting need.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from crew.domain.errors import ProviderError

MessageRole = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class Message:
    role: MessageRole
    content: str


@dataclass(frozen=True, slots=True)
class LLMRequest:
    role: str
    """The agent role making the call (e.g. `Supervisor`, `Writer_FR`)."""
    messages: tuple[Message, ...]
    model: str | None = None
    temperature: float = 0.2
    max_tokens: int = 2048
    timeout_s: float = 120.0
    wants_json: bool = False
    stop: tuple[str, ...] = ()
    json_schema: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)
    """The JSON Schema the answer must follow (implies `wants_json`): providers that can
    enforce one (grammar-constrained sampling) are asked to; the caller validates anyway."""
    schema_name: str = "answer"

    @property
    def system(self) -> str:
        return "\n\n".join(m.content for m in self.messages if m.role == "system")

    @property
    def last_user(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""


@dataclass(frozen=True, slots=True)
class LLMResponse:
    text: str
    model: str
    """The model that answered, as the provider reports it."""
    input_tokens: int
    output_tokens: int
    latency_ms: float
    finish_reason: str | None = "stop"
    provider: str = ""
    usage_estimated: bool = False
    extra: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Provider(Protocol):
    """An LLM backend. Implementations raise crew.domain.errors.ProviderError on failure."""

    name: str

    async def complete(self, request: LLMRequest) -> LLMResponse: ...

    async def aclose(self) -> None: ...


class PromptTooLongError(ProviderError):
    """The server refused the prompt: it does not fit the model's context window.

    Not the provider's fault and not transient: the node fails (exit 1) with the numbers,
    no retry and no fallback (another model would be asked the same too-long prompt).
    """

    code = "context_length_exceeded"
    exit_code = 1
    http_status = 422

    def __init__(self, message: str, *, provider: str, status: int | None = None) -> None:
        super().__init__(message, provider=provider, retryable=False)
        self.status = status


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters a token) for servers that report none."""
    return math.ceil(len(text) / 4) if text else 0
