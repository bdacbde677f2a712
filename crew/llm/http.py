"""Shared HTTP plumbing for the HTTP providers (Ollama, OpenAI-compatible servers).

Both providers need the same things: one long-lived client per provider so connections
are reused across nodes, a per-request deadline that holds even against a server that
trickles bytes, and one translation from transport failures to ProviderError so the
retry policy can rely on `retryable` alone. Keeping it here means the providers only
describe their wire format.

Reading what an answer says (error details, codes, reasoning blocks) and the errors it
becomes are in crew/llm/http_text.py; those names are re-exported here. This module
imports httpx; import it lazily (only the HTTP providers do) so commands that never call
an HTTP provider do not pay for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Self

import httpx

from crew.llm.base import LLMRequest, LLMResponse, PromptTooLongError, estimate_tokens
from crew.llm.http_text import (
    DETAIL_MAX_CHARS,
    HTTPProviderError,
    bounded,
    display_url,
    error_code,
    error_detail,
    is_context_overflow,
    json_object,
    malformed,
    no_model_error,
    parse_retry_after,
    redact,
    response_error,
    split_reasoning,
    status_error,
)
from crew.llm.structured import Refusal, SpellingMemory, is_format_refusal

CONNECT_TIMEOUT_MAX_S = 10.0
"""A server that does not accept a connection within this is down, whatever the deadline."""


__all__ = [
    "DETAIL_MAX_CHARS",
    "Exchange",
    "HTTPProviderBase",
    "HTTPProviderError",
    "bounded",
    "create_client",
    "display_url",
    "error_code",
    "error_detail",
    "is_context_overflow",
    "json_object",
    "malformed",
    "no_model_error",
    "parse_retry_after",
    "post_json",
    "redact",
    "reported_tokens",
    "response_error",
    "split_reasoning",
    "status_error",
    "timeout_for",
]


def create_client(*, max_connections: int = 16) -> httpx.AsyncClient:
    """A client meant to live as long as its provider, so calls reuse connections.

    No client-wide timeout: every request passes its own (see `timeout_for`).
    """
    return httpx.AsyncClient(
        timeout=None,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        headers={"User-Agent": "crew"},
    )


def timeout_for(timeout_s: float) -> httpx.Timeout:
    """Map a request's deadline onto httpx's per-phase timeouts.

    Connecting gets at most CONNECT_TIMEOUT_MAX_S so an unreachable host fails fast; the
    other phases get the whole deadline. `post_json` also enforces the deadline as a total.
    """
    return httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_MAX_S))


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    payload: Mapping[str, Any] | None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout_s: float,
    provider: str,
    unreachable: str,
) -> httpx.Response:
    """POST a JSON body (GET when `payload` is None) and return the response, whatever its
    status.

    Transport failures become retryable ProviderErrors: `unreachable` is the message for a
    refused or failed connection, timeouts say how long was waited. The deadline applies
    to the whole exchange, not just to the gap between two bytes.
    """
    try:
        async with asyncio.timeout(timeout_s):
            if payload is None:
                return await client.get(
                    url, headers=dict(headers or {}), timeout=timeout_for(timeout_s)
                )
            return await client.post(
                url, json=dict(payload), headers=dict(headers or {}), timeout=timeout_for(timeout_s)
            )
    except (httpx.TimeoutException, TimeoutError) as exc:
        if isinstance(exc, httpx.ConnectTimeout):
            raise HTTPProviderError(unreachable, provider=provider, retryable=True) from exc
        raise HTTPProviderError(
            f"{provider} did not answer within {timeout_s:g}s ({display_url(url)})",
            provider=provider,
            retryable=True,
        ) from exc
    except httpx.ConnectError as exc:
        raise HTTPProviderError(unreachable, provider=provider, retryable=True) from exc
    except httpx.TransportError as exc:
        raise HTTPProviderError(
            f"{provider} connection failed ({display_url(url)}): {type(exc).__name__}",
            provider=provider,
            retryable=True,
        ) from exc


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and its answer: where it went, the response, its JSON object body, and
    the milliseconds it took."""

    url: str
    response: httpx.Response
    body: dict[str, Any]
    elapsed_ms: float
    spelling: str | None = None
    """The structured-output spelling the server accepted (None: no schema asked)."""
    refusals: tuple[Refusal, ...] = ()
    """Spellings refused before it (each was one request to the server)."""

    def structured_extra(self) -> dict[str, object]:
        """What the sidecar records about structured output for this answer."""
        if self.spelling is None:
            return {}
        extra: dict[str, object] = {"structured_output": self.spelling}
        if self.refusals:
            extra["format_refusals"] = [r.to_dict() for r in self.refusals]
        return extra


class HTTPProviderBase:
    """What every HTTP provider shares: its base URL, one reused client it may own, how a
    call goes out, and how an answer's usage becomes an LLMResponse.

    Subclasses set `name`, describe their wire format, and say what to do when the
    server cannot be reached.
    """

    name: str
    spellings: tuple[str, ...] = ()
    """Structured-output spellings, most precise first (crew/llm/structured.py)."""

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        max_connections: int = 16,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = (
            client if client is not None else create_client(max_connections=max_connections)
        )
        self._owns_client = client is None
        self.formats = SpellingMemory(self.spellings)

    @property
    def unreachable_message(self) -> str:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        """Headers every request carries (none unless the provider needs some)."""
        return {}

    def payload(self, request: LLMRequest, model: str, spelling: str | None) -> dict[str, Any]:
        """The provider's request body for a chat call (`spelling`: how to ask for the
        request's JSON Schema, None when it has none)."""
        raise NotImplementedError

    def rejection(self, response: httpx.Response, model: str | None) -> HTTPProviderError:
        """The error for an HTTP error status (`model`: the one a chat call asked for)."""
        return response_error(self.name, response, error_detail(response))

    async def fetch(
        self, path: str, payload: Mapping[str, Any] | None, *, timeout_s: float, model: str | None
    ) -> Exchange:
        """POST `payload` to `path` (GET when None) and read the JSON object answered.

        Transport failures, error statuses and bodies that are not a JSON object raise
        HTTPProviderError.
        """
        url = f"{self.base_url}{path}"
        watch = Stopwatch()
        response = await post_json(
            self._client,
            url,
            payload,
            headers=self.headers(),
            timeout_s=timeout_s,
            provider=self.name,
            unreachable=self.unreachable_message,
        )
        if response.status_code >= 400:
            detail = error_detail(response)
            if model is not None and is_context_overflow(response, detail):
                raise PromptTooLongError(
                    f"{self.name} returned HTTP {response.status_code}: the prompt does not "
                    f"fit {model}'s context window: {detail}",
                    provider=self.name,
                    status=response.status_code,
                )
            raise self.rejection(response, model)
        body = json_object(response, provider=self.name, url=url)
        return Exchange(url, response, body, watch.elapsed_ms())

    async def chat(self, request: LLMRequest, path: str) -> tuple[str, Exchange]:
        """Send a chat call; the model asked for, and the exchange.

        A request with a JSON Schema tries the provider's spellings in turn while the
        server refuses them for their format, and remembers the one accepted.
        """
        model = request.model
        if not model:
            raise no_model_error(self.name)
        if request.json_schema is None or not self.spellings:
            return model, await self.send(request, path, self.payload(request, model, None))
        refusals: list[Refusal] = []
        spellings = self.formats.to_try(model)
        for position, spelling in enumerate(spellings):
            try:
                exchange = await self.send(request, path, self.payload(request, model, spelling))
            except HTTPProviderError as error:
                last = position == len(spellings) - 1
                if last or not is_format_refusal(error.status, error.message):
                    raise
                refusals.append(Refusal(spelling, error.status, error.message))
                continue
            self.formats.accepted(model, spelling)
            return model, replace(exchange, spelling=spelling, refusals=tuple(refusals))
        raise AssertionError("unreachable: the last spelling returns or raises")

    async def send(self, request: LLMRequest, path: str, payload: Mapping[str, Any]) -> Exchange:
        """POST a chat payload; a prompt too long for the model fails with its numbers."""
        try:
            return await self.fetch(path, payload, timeout_s=request.timeout_s, model=request.model)
        except PromptTooLongError as error:
            size = sum(len(m.content.encode("utf-8")) for m in request.messages)
            raise PromptTooLongError(
                f"{error.message} (crew sent {len(request.messages)} message(s), "
                f"{size} bytes of prompt, max_tokens={request.max_tokens}; shorten the "
                "inputs, lower max_tokens or use a model with a larger context)",
                provider=self.name,
                status=error.status,
            ) from None

    def malformed(self, exchange: Exchange, why: str) -> HTTPProviderError:
        """The error for a body that does not hold what the wire format promises."""
        return malformed(self.name, exchange.url, why, exchange.response.status_code)

    def answer(
        self,
        request: LLMRequest,
        *,
        text: str,
        body: Mapping[str, Any],
        requested_model: str,
        reported: tuple[object, object],
        latency_ms: float,
        finish_reason: object,
        extra: dict[str, object],
    ) -> LLMResponse:
        """The LLMResponse of an answer `text`, from the usage the server `reported`
        (prompt and completion tokens, as found in its body).

        A count the server left out is estimated, and the response says so; the model is
        the one the server names, else the one requested. A leading `<think>` block is
        moved out of the text into `extra["reasoning"]` (split_reasoning).
        """
        raw_text = text
        text, reasoning = split_reasoning(text)
        if reasoning is not None:
            extra = {**extra, "reasoning": reasoning}
        prompt_tokens, completion_tokens = (reported_tokens(value) for value in reported)
        estimated = prompt_tokens is None or completion_tokens is None
        if prompt_tokens is None:
            prompt_tokens = sum(estimate_tokens(m.content) for m in request.messages)
        if completion_tokens is None:
            completion_tokens = estimate_tokens(raw_text)
        response_model = body.get("model")
        return LLMResponse(
            text=text,
            model=response_model
            if isinstance(response_model, str) and response_model
            else requested_model,
            input_tokens=prompt_tokens,
            output_tokens=completion_tokens,
            latency_ms=latency_ms,
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
            provider=self.name,
            usage_estimated=estimated,
            extra=extra,
        )

    async def aclose(self) -> None:
        """Close the HTTP client, unless the caller passed one in (then it is theirs)."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Stopwatch:
    """Milliseconds since creation, on the monotonic clock."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._start) * 1000.0


def reported_tokens(value: object) -> int | None:
    """A token count from a response field, or None when the server did not report one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value
