"""The Ollama provider: `POST {OLLAMA_BASE_URL}/api/chat` without streaming.

Ollama runs on the user's machine, so its two common failures are local ones: the server
is not running, or the model was never pulled. Both get a message that says what to do.
Token counts and latency come from Ollama's own response fields when present; when a
server leaves them out, tokens are estimated and the response says so.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from crew.llm.base import LLMRequest, LLMResponse
from crew.llm.http import (
    HTTPProviderBase,
    HTTPProviderError,
    display_url,
    error_detail,
    reported_tokens,
    response_error,
)
from crew.llm.structured import OLLAMA_SPELLINGS
from crew.settings import Settings

_MODEL_NOT_FOUND = re.compile(r"model\b.*\bnot found", re.IGNORECASE | re.DOTALL)


class OllamaProvider(HTTPProviderBase):
    """Chat completions from an Ollama server; one HTTP client reused for every call."""

    name = "ollama"
    spellings = OLLAMA_SPELLINGS

    @property
    def unreachable_message(self) -> str:
        return (
            f"Ollama is not reachable at {display_url(self.base_url)}: start it with "
            "`ollama serve` or set OLLAMA_BASE_URL"
        )

    def payload(self, request: LLMRequest, model: str, spelling: str | None) -> dict[str, Any]:
        """The /api/chat body: sampling settings go in `options`, as Ollama expects."""
        options: dict[str, Any] = {
            "temperature": request.temperature,
            "num_predict": request.max_tokens,
        }
        if request.stop:
            options["stop"] = list(request.stop)
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": False,
            "options": options,
        }
        if spelling == "schema" and request.json_schema is not None:
            body["format"] = dict(request.json_schema)
        elif request.wants_json:
            body["format"] = "json"
        return body

    async def complete(self, request: LLMRequest) -> LLMResponse:
        model, exchange = await self.chat(request, "/api/chat")
        body, measured_ms = exchange.body, exchange.elapsed_ms
        message = body.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise self.malformed(exchange, "no message.content")
        extra: dict[str, object] = {"wall_ms": round(measured_ms, 3)}
        extra.update(exchange.structured_extra())
        thinking = message.get("thinking") if isinstance(message, dict) else None
        if isinstance(thinking, str) and thinking.strip():
            extra["reasoning"] = thinking.strip()
        total_ns = reported_tokens(body.get("total_duration"))
        return self.answer(
            request,
            text=content,
            body=body,
            requested_model=model,
            reported=(body.get("prompt_eval_count"), body.get("eval_count")),
            latency_ms=total_ns / 1e6 if total_ns else measured_ms,
            finish_reason=body.get("done_reason"),
            extra=extra,
        )

    def rejection(self, response: httpx.Response, model: str | None) -> HTTPProviderError:
        detail = error_detail(response)
        status = response.status_code
        if model and status == 404 and _MODEL_NOT_FOUND.search(detail):
            return HTTPProviderError(
                f'Ollama at {display_url(self.base_url)} has no model "{model}": '
                f"run `ollama pull {model}`",
                provider=self.name,
                retryable=False,
                status=status,
            )
        return response_error(self.name, response, detail)

    async def list_models(self, *, timeout_s: float = 5.0) -> list[str]:
        """Names of the installed models (`GET /api/tags`), for diagnostics."""
        exchange = await self.fetch("/api/tags", None, timeout_s=timeout_s, model=None)
        models = exchange.body.get("models")
        if not isinstance(models, list):
            raise self.malformed(exchange, "no models list")
        return [
            str(m.get("name") or m.get("model"))
            for m in models
            if isinstance(m, dict) and (m.get("name") or m.get("model"))
        ]


def from_settings(settings: Settings) -> OllamaProvider:
    """The provider as the settings describe it (the registry's factory).

    The connection pool is sized to the provider's concurrency limit: more connections
    than calls allowed in flight would never be used.
    """
    return OllamaProvider(
        settings.ollama_base_url, max_connections=max(settings.ollama_max_concurrency, 1)
    )
