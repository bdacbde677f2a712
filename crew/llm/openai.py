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

from crew.llm.base import LLMRequest, LLMResponse, estimate_tokens
from crew.llm.http import (
    HTTPProviderBase,
    HTTPProviderError,
    Stopwatch,
    display_url,
    error_detail,
    json_object,
    malformed,
    no_model_error,
    post_json,
    reported_tokens,
    response_error,
)
from crew.settings import Settings

_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
"""429 codes that mean "out of credit": waiting does not help, so they are not retried."""


class OpenAIProvider(HTTPProviderBase):
    """Chat completions from any OpenAI-compatible server; one HTTP client for every call."""

    name = "openai"

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

    def payload(self, request: LLMRequest, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.wants_json:
            body["response_format"] = {"type": "json_object"}
        return body

    async def complete(self, request: LLMRequest) -> LLMResponse:
        model = request.model
        if not model:
            raise no_model_error(self.name)
        url = f"{self.base_url}/chat/completions"
        watch = Stopwatch()
        response = await post_json(
            self._client,
            url,
            self.payload(request, model),
            headers=self.headers(),
            timeout_s=request.timeout_s,
            provider=self.name,
            unreachable=self.unreachable_message,
        )
        latency_ms = watch.elapsed_ms()
        if response.status_code >= 400:
            raise self._status_error(response)
        body = json_object(response, provider=self.name, url=url)
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            why = "no choices"
            if "error" in body:  # some compatible servers report errors with a 200
                why += f" (the server said: {error_detail(response, secrets=[self._api_key])})"
            raise malformed(self.name, url, why, response.status_code)
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise malformed(self.name, url, "no choices[0].message", response.status_code)
        content = message.get("content")
        if content is None:
            content = ""  # e.g. a refusal or a tool call: an empty answer, not a broken body
        if not isinstance(content, str):
            raise malformed(self.name, url, "choices[0].message.content is not text")

        usage = body.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        prompt_tokens = reported_tokens(usage.get("prompt_tokens"))
        completion_tokens = reported_tokens(usage.get("completion_tokens"))
        estimated = prompt_tokens is None or completion_tokens is None
        if prompt_tokens is None:
            prompt_tokens = sum(estimate_tokens(m.content) for m in request.messages)
        if completion_tokens is None:
            completion_tokens = estimate_tokens(content)

        finish_reason = choice.get("finish_reason")
        response_model = body.get("model")
        extra: dict[str, object] = {}
        if isinstance(body.get("id"), str):
            extra["response_id"] = body["id"]
        if isinstance(message.get("refusal"), str):
            extra["refusal"] = message["refusal"]
        return LLMResponse(
            text=content,
            model=response_model if isinstance(response_model, str) and response_model else model,
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
            latency_ms=latency_ms,
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
            provider=self.name,
            usage_estimated=estimated,
            extra=extra,
        )

    def _status_error(self, response: httpx.Response) -> HTTPProviderError:
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
        if status == 429 and _error_code(response) in _QUOTA_CODES:
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
        url = f"{self.base_url}/models"
        response = await post_json(
            self._client,
            url,
            None,
            headers=self.headers(),
            timeout_s=timeout_s,
            provider=self.name,
            unreachable=self.unreachable_message,
        )
        if response.status_code >= 400:
            raise self._status_error(response)
        data = json_object(response, provider=self.name, url=url).get("data")
        if not isinstance(data, list):
            raise malformed(self.name, url, "no data list", response.status_code)
        return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id")]


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


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
