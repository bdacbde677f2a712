"""What an HTTP answer says, read as text: error details, codes, reasoning blocks.

Kept apart from the HTTP plumbing (crew/llm/http.py, which re-exports these names) so
each stays small: these functions only read a response or a text, they send nothing.
HTTPProviderError is the one error every HTTP failure becomes.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import httpx

from crew.domain.clock import utcnow
from crew.domain.errors import ProviderError


def display_url(url: str) -> str:
    """The URL without user info, so credentials in a base URL never reach a message."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return url
    if parsed.userinfo:
        parsed = parsed.copy_with(username=None, password=None)
    return str(parsed).rstrip("/")


DETAIL_MAX_CHARS = 300
"""Longest server error text quoted in a message: enough to act on, short enough to log."""

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
    current = now or utcnow()
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
