"""`echo`: an LLM provider that answers with the last user message, after ECHO_PREFIX.

A complete provider package in one module: the provider, its factory, and the spec the
`crew.providers` entry point names (see docs/providers.md).
"""

from __future__ import annotations

from crew.llm.base import LLMRequest, LLMResponse, estimate_tokens
from crew.llm.plugins import PriceTable, ProviderSetting, ProviderSpec, RetryPolicy
from crew.settings import Settings

MODEL = "echo-1"


class EchoProvider:
    """Answers at once, deterministically; lists one model."""

    name = "echo"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    async def complete(self, request: LLMRequest) -> LLMResponse:
        text = f"{self.prefix} {request.last_user}"
        prompt = "\n".join(message.content for message in request.messages)
        return LLMResponse(
            text=text,
            model=request.model or MODEL,
            input_tokens=estimate_tokens(prompt),
            output_tokens=estimate_tokens(text),
            latency_ms=0.0,
            provider=self.name,
        )

    async def list_models(self, *, timeout_s: float) -> list[str]:
        return [MODEL]

    async def aclose(self) -> None:
        return None


def build(settings: Settings) -> EchoProvider:
    return EchoProvider(PROVIDER.read(settings)["ECHO_PREFIX"])


PROVIDER = ProviderSpec(
    name="echo",
    factory=build,
    description="answers with its prompt (a test plugin)",
    settings=(ProviderSetting("ECHO_PREFIX", "text put before every answer", "echo:"),),
    retry=RetryPolicy(max_retries=1, base_ms=1, factor=2.0),
    price=PriceTable({MODEL: (0.001, 0.002)}, version="2026-12"),
    needs_model=False,
    max_concurrency=4,
)
