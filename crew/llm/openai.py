"""The OpenAI-compatible provider: `POST {OPENAI_BASE_URL}/chat/completions`.

Written against the wire format rather than a vendor SDK, so the same code talks to
OpenAI and to local servers that speak the chat completions API. Local servers often
need no key, so the Authorization header is sent only when a key is configured.

Error handling is what the retry policy and the user need: rate limits (429, with
Retry-After) and server errors (5xx) may pass and are retryable; a rejected key is
reported as such and never quoted; other client errors carry the server's explanation.
"""

from __future__ import annotations

from typing import Any

import httpx

from crew.llm.base import LLMRequest, LLMResponse
from crew.llm.http import (
    HTTPProviderBase,
    HTTPProviderError,
    display_url,
    error_code,
    error_detail,
    response_error,
)
from crew.llm.structured import OPENAI_SPELLINGS, openai_response_format
from crew.settings import Settings

_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
"""429 codes that mean "out of credit": waiting does not help, so they are not retried."""


class OpenAIProvider(HTTPProviderBase):
    """Chat completions from any OpenAI-compatible server; one HTTP client for every call."""

    name = "openai"
    spellings = OPENAI_SPELLINGS

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        client: httpx.AsyncClient | None = None,
        max_connections: int = 16,
    ) -> None:
        super().__init__(base_url, client=client, max_connections=max_connections)
        self._api_key = api_key or None

    def __repr__(self) -> str:  # the key must never show up in a log line or traceback
        return f"OpenAIProvider(base_url={display_url(self.base_url)!r})"

    @property
    def unreachable_message(self) -> str:
        return (
            f"the OpenAI-compatible server at {display_url(self.base_url)} is not reachable: "
            "check OPENAI_BASE_URL"
        )

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def payload(self, request: LLMRequest, model: str, spelling: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if spelling is not None:
            body["response_format"] = openai_response_format(
                spelling, request.json_schema, request.schema_name
            )
        elif request.wants_json:
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(self, request: LLMRequest) -> LLMResponse:
        model, exchange = await self.chat(request, "/chat/completions")
        body = exchange.body
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            why = "no choices"
            if "error" in body:  # some compatible servers report errors with a 200
                detail = error_detail(exchange.response, secrets=[self._api_key])
                why += f" (the server said: {detail})"
            raise self.malformed(exchange, why)
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise self.malformed(exchange, "no choices[0].message")
        content = message.get("content")
        if content is None:
            content = ""  # e.g. a refusal or a tool call: an empty answer, not a broken body
        if not isinstance(content, str):
            raise self.malformed(exchange, "choices[0].message.content is not text")

        usage = body.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        extra: dict[str, object] = exchange.structured_extra()
        if isinstance(body.get("id"), str):
            extra["response_id"] = body["id"]
        if isinstance(message.get("refusal"), str):
            extra["refusal"] = message["refusal"]
        return self.answer(
            request,
            text=content,
            body=body,
            requested_model=model,
            reported=(usage.get("prompt_tokens"), usage.get("completion_tokens")),
            latency_ms=exchange.elapsed_ms,
            finish_reason=choice.get("finish_reason"),
            extra=extra,
        )

    def rejection(self, response: httpx.Response, model: str | None) -> HTTPProviderError:
        status = response.status_code
        where = display_url(self.base_url)
        if status in (401, 403):
            # The server's text is not quoted: some servers echo part of the rejected key.
            hint = "check OPENAI_API_KEY" if self._api_key else "it needs a key: set OPENAI_API_KEY"
            return HTTPProviderError(
                f"the OpenAI-compatible server at {where} rejected the API key "
                f"(HTTP {status}); {hint}",
                provider=self.name,
                retryable=False,
                status=status,
            )
        detail = error_detail(response, secrets=[self._api_key])
        if status == 429 and error_code(response) in _QUOTA_CODES:
            return HTTPProviderError(
                f"the OpenAI-compatible server at {where} refused the call: out of quota "
                f"(HTTP 429): {detail}",
                provider=self.name,
                retryable=False,
                status=status,
            )
        return response_error(self.name, response, detail)

    async def list_models(self, *, timeout_s: float = 5.0) -> list[str]:
        """Model ids the server offers (`GET /models`); also proves the key is accepted."""
        exchange = await self.fetch("/models", None, timeout_s=timeout_s, model=None)
        data = exchange.body.get("data")
        if not isinstance(data, list):
            raise self.malformed(exchange, "no data list")
        return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")]


def from_settings(settings: Settings) -> OpenAIProvider:
    """The provider as the settings describe it (the registry's factory).

    The connection pool is sized to the provider's concurrency limit: more connections
    than calls allowed in flight would never be used.
    """
    return OpenAIProvider(
        settings.openai_base_url,
        settings.openai_api_key,
        max_connections=max(settings.openai_max_concurrency, 1),
    )
