"""Shared HTTP plumbing for the HTTP providers (Ollama, OpenAI-compatible servers).

Both providers need the same things: one long-lived client per provider so connections
are reused across nodes, a per-request deadline that holds even against a server that
trickles bytes, and one translation from transport failures to ProviderError so the
retry policy can rely on `retryable` alone. Keeping it here means the providers only
describe their wire format.

This module imports httpx; import it lazily (only the HTTP providers do) so commands that
never call an HTTP provider do not pay for it.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Self

import httpx

from crew.domain.errors import ProviderError
from crew.llm.base import LLMRequest, LLMResponse, PromptTooLongError, estimate_tokens
from crew.llm.structured import Refusal, SpellingMemory, is_format_refusal

DETAIL_MAX_CHARS = 300
"""Longest server error text quoted in a message: enough to act on, short enough to log."""

CONNECT_TIMEOUT_MAX_S = 10.0
"""A server that does not accept a connection within this is down, whatever the deadline."""


_CONTEXT_OVERFLOW = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|exceeds? (the )?(available )?context"
    r"|prompt is too long|too many tokens",
    re.IGNORECASE,
)
_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})

_THINK = re.compile(r"^\s*<think>(.*?)(</think>|$)", re.DOTALL)


def split_reasoning(text: str) -> tuple[str, str | None]:
    """The answer without a leading `<think>…</think>` block, and the block's content.

    Reasoning models (served by Ollama and compatible servers) think aloud before
    answering; that text is not the answer (it would break a JSON plan, or end up in a
    deliverable), but it was paid for and explains the answer, so it is kept apart. An
    unclosed block (the answer was cut off while thinking) is all reasoning.
    """
    match = _THINK.match(text)
    if match is None:
        return text, None
    return text[match.end() :].lstrip(), match.group(1).strip()


def error_code(response: httpx.Response) -> str | None:
    """The `error.code` of an OpenAI-style error body, if any."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def is_context_overflow(response: httpx.Response, detail: str) -> bool:
    """True when an error answer says the prompt does not fit the model's context."""
    if response.status_code < 400:
        return False
    return error_code(response) in _CONTEXT_CODES or bool(_CONTEXT_OVERFLOW.search(detail))


class HTTPProviderError(ProviderError):
    """A ProviderError that also knows the HTTP status (None for transport failures).

    The status goes into the sidecar's attempt records; the retry policy only looks at
    `retryable`, so code that catches ProviderError needs nothing else.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retryable: bool,
        retry_after_s: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(
            message, provider=provider, retryable=retryable, retry_after_s=retry_after_s
        )
        self.status = status


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


def display_url(url: str) -> str:
    """The URL without user info, so credentials in a base URL never reach a message."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return url
    if parsed.userinfo:
        parsed = parsed.copy_with(username=None, password=None)
    return str(parsed).rstrip("/")


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


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date.

    Returns None when absent or unreadable (the caller then uses its own backoff), and
    never a negative number (a date in the past means "now").
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every secret (API key) in `text`: some servers echo the key they rejected."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def bounded(text: str, limit: int = DETAIL_MAX_CHARS) -> str:
    """One line of at most `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def error_detail(
    response: httpx.Response, *, secrets: Iterable[str | None] = (), limit: int = DETAIL_MAX_CHARS
) -> str:
    """The server's own explanation of an error, short and with secrets removed.

    Understands `{"error": {"message": ...}}` (OpenAI), `{"error": "..."}` (Ollama) and
    `{"detail": ...}`; otherwise quotes the body text.
    """
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    message: object = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        if message is None:
            message = body.get("detail") or body.get("message")
    if not isinstance(message, str) or not message.strip():
        message = text.strip() or response.reason_phrase or f"HTTP {response.status_code}"
    return bounded(redact(str(message), secrets), limit)


def json_object(response: httpx.Response, *, provider: str, url: str) -> dict[str, Any]:
    """The response body as a JSON object, or a non-retryable "malformed response" error.

    Not retryable: a server that answers 200 with a body crew cannot read will most likely
    do it again, and retrying would only spend money.
    """
    try:
        body = response.json()
    except ValueError as exc:
        raise malformed(provider, url, "the body is not JSON", response.status_code) from exc
    if not isinstance(body, dict):
        raise malformed(provider, url, "the body is not a JSON object", response.status_code)
    return body


def malformed(provider: str, url: str, why: str, status: int | None = None) -> HTTPProviderError:
    return HTTPProviderError(
        f"{provider} returned a malformed response ({display_url(url)}): {why}",
        provider=provider,
        retryable=False,
        status=status,
    )


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


def no_model_error(provider: str) -> HTTPProviderError:
    """The request reached a provider without a model: a configuration problem, not retryable."""
    return HTTPProviderError(
        f"no model configured for {provider}: set LLM_DEFAULT_MODEL or the role's model "
        "(EXECUTOR_MODEL, SUPERVISOR_MODEL, MANAGER_MODEL, RECRUITER_MODEL), "
        "or the plan node's llm.model",
        provider=provider,
        retryable=False,
    )


def response_error(provider: str, response: httpx.Response, detail: str) -> HTTPProviderError:
    """status_error for a response, honouring its Retry-After header."""
    return status_error(
        provider,
        response.status_code,
        detail,
        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
    )


def status_error(
    provider: str, status: int, detail: str, *, retry_after_s: float | None = None
) -> HTTPProviderError:
    """The generic translation of an HTTP error status: 429 and 5xx may pass, others will not."""
    retryable = status == 429 or status >= 500
    return HTTPProviderError(
        f"{provider} returned HTTP {status}: {detail}",
        provider=provider,
        retryable=retryable,
        retry_after_s=retry_after_s if retryable else None,
        status=status,
    )
