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
    status_error,
)
from crew.settings import Settings

_MODEL_NOT_FOUND = re.compile(r"model\b.*\bnot found", re.IGNORECASE | re.DOTALL)


class OllamaProvider(HTTPProviderBase):
    """Chat completions from an Ollama server; one HTTP client reused for every call."""

    name = "ollama"

    @property
    def unreachable_message(self) -> str:
        return (
            f"Ollama is not reachable at {display_url(self.base_url)}: start it with "
            "`ollama serve` or set OLLAMA_BASE_URL"
        )

    def payload(self, request: LLMRequest, model: str) -> dict[str, Any]:
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
        if request.wants_json:
            body["format"] = "json"
        return body

    async def complete(self, request: LLMRequest) -> LLMResponse:
        model = request.model
        if not model:
            raise no_model_error(self.name)
        url = f"{self.base_url}/api/chat"
        watch = Stopwatch()
        response = await post_json(
            self._client,
            url,
            self.payload(request, model),
            timeout_s=request.timeout_s,
            provider=self.name,
            unreachable=self.unreachable_message,
        )
        if response.status_code >= 400:
            raise self._status_error(response, model)
        body = json_object(response, provider=self.name, url=url)
        measured_ms = watch.elapsed_ms()
        message = body.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise malformed(self.name, url, "no message.content", response.status_code)

        prompt_tokens = reported_tokens(body.get("prompt_eval_count"))
        completion_tokens = reported_tokens(body.get("eval_count"))
        estimated = prompt_tokens is None or completion_tokens is None
        if prompt_tokens is None:
            prompt_tokens = sum(estimate_tokens(m.content) for m in request.messages)
        if completion_tokens is None:
            completion_tokens = estimate_tokens(content)

        total_ns = reported_tokens(body.get("total_duration"))
        latency_ms = total_ns / 1e6 if total_ns else measured_ms
        done_reason = body.get("done_reason")
        response_model = body.get("model")
        return LLMResponse(
            text=content,
            model=response_model if isinstance(response_model, str) and response_model else model,
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
            latency_ms=latency_ms,
            finish_reason=done_reason if isinstance(done_reason, str) else None,
            provider=self.name,
            usage_estimated=estimated,
            extra={"wall_ms": round(measured_ms, 3)},
        )

    def _status_error(self, response: httpx.Response, model: str) -> HTTPProviderError:
        detail = error_detail(response)
        status = response.status_code
        if status == 404 and _MODEL_NOT_FOUND.search(detail):
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
        url = f"{self.base_url}/api/tags"
        response = await post_json(
            self._client,
            url,
            None,
            timeout_s=timeout_s,
            provider=self.name,
            unreachable=self.unreachable_message,
        )
        if response.status_code >= 400:
            raise status_error(self.name, response.status_code, error_detail(response))
        models = json_object(response, provider=self.name, url=url).get("models")
        if not isinstance(models, list):
            raise malformed(self.name, url, "no models list", response.status_code)
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
