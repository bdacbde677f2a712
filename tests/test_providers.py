"""The HTTP providers against local servers speaking the Ollama and OpenAI wire formats."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
from llm_servers import (
    OllamaServer,
    OpenAIServer,
    Reply,
    openai_error_reply,
    rate_limited,
    refused_url,
)

from crew.domain.errors import ProviderError
from crew.llm.base import LLMRequest, Message
from crew.llm.http import HTTPProviderError, parse_retry_after
from crew.llm.limits import ProviderLimits
from crew.llm.ollama import OllamaProvider
from crew.llm.ollama import from_settings as ollama_from_settings
from crew.llm.openai import OpenAIProvider
from crew.llm.openai import from_settings as openai_from_settings
from crew.llm.retry import Attempt, with_retries
from crew.settings import settings_from_values

SECRET = "sk-test-0123456789abcdefSECRET"


def request(**changes: object) -> LLMRequest:
    values: dict[str, object] = {
        "role": "Writer_FR",
        "messages": (
            Message("system", "Tu es un rédacteur."),
            Message("user", "Écris une introduction sur les crews d'agents."),
        ),
        "model": "gpt-4o-mini",
        "temperature": 0.3,
        "max_tokens": 321,
        "timeout_s": 5.0,
    }
    values.update(changes)
    return LLMRequest(**values)  # type: ignore[arg-type]


@pytest.fixture
def ollama_server() -> Iterator[OllamaServer]:
    with OllamaServer(models=["llama3.1:8b"]) as server:
        yield server


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(api_key=SECRET) as server:
        yield server


@pytest.fixture
async def ollama(ollama_server: OllamaServer) -> AsyncIterator[OllamaProvider]:
    async with OllamaProvider(ollama_server.url) as provider:
        yield provider


@pytest.fixture
async def openai(openai_server: OpenAIServer) -> AsyncIterator[OpenAIProvider]:
    async with OpenAIProvider(openai_server.base_url, SECRET) as provider:
        yield provider


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


# -- OpenAI-compatible ------------------------------------------------------------------


async def test_openai_success_with_usage(openai: OpenAIProvider) -> None:
    response = await openai.complete(request())
    assert response.provider == "openai"
    assert response.text.startswith("Réponse de test")
    assert response.model == "gpt-4o-mini-2024-07-18"  # the dated name the server reports
    assert response.input_tokens > 0 and response.output_tokens > 0
    assert response.usage_estimated is False
    assert response.finish_reason == "stop"
    assert response.latency_ms > 0
    assert response.extra["response_id"] == "chatcmpl-A1b2C3d4E5f6G7h8I9j0"


async def test_openai_request_body_and_headers(
    openai: OpenAIProvider, openai_server: OpenAIServer
) -> None:
    response = await openai.complete(request(wants_json=True, stop=("###",)))
    assert response.text == '{"ok": true}'
    (sent,) = openai_server.chat_requests()
    assert sent.method == "POST"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.json == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Tu es un rédacteur."},
            {"role": "user", "content": "Écris une introduction sur les crews d'agents."},
        ],
        "temperature": 0.3,
        "max_tokens": 321,
        "stop": ["###"],
        "response_format": {"type": "json_object"},
    }


async def test_openai_without_key_sends_no_authorization() -> None:
    with OpenAIServer() as server:
        async with OpenAIProvider(server.base_url, None) as provider:
            await provider.complete(request(stop=()))
        (sent,) = server.chat_requests()
    assert "authorization" not in sent.headers
    assert "stop" not in sent.json and "response_format" not in sent.json


async def test_openai_429_retry_after_then_success(
    openai: OpenAIProvider, openai_server: OpenAIServer
) -> None:
    openai_server.enqueue(rate_limited("7"), Reply())
    sleep = FakeSleep()
    attempts: list[Attempt] = []
    response, count = await with_retries(
        lambda: openai.complete(request()),
        max_retries=3,
        base_ms=100,
        factor=2.0,
        sleep=sleep,
        rng=random.Random(1),
        provider="openai",
        model="gpt-4o-mini",
        attempts_log=attempts,
    )
    assert response.output_tokens > 0
    assert count == 2
    assert sleep.delays == [7.0]  # Retry-After beats the 0.1 s backoff
    assert [a.ok for a in attempts] == [False, True]
    assert attempts[0].status == 429 and attempts[0].retryable is True
    assert "Rate limit reached" in (attempts[0].error or "")


async def test_openai_429_retry_after_http_date() -> None:
    # An HTTP date in the past means "retry now".
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == 30.0
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("soon") is None


async def test_openai_quota_429_is_not_retried(
    openai: OpenAIProvider, openai_server: OpenAIServer
) -> None:
    openai_server.enqueue(
        openai_error_reply(
            429, "You exceeded your current quota.", "insufficient_quota", "insufficient_quota"
        )
    )
    with pytest.raises(ProviderError) as caught:
        await openai.complete(request())
    assert caught.value.retryable is False
    assert "quota" in caught.value.message


async def test_openai_500_until_retries_run_out(
    openai: OpenAIProvider, openai_server: OpenAIServer
) -> None:
    openai_server.enqueue(
        *[openai_error_reply(500, "The server had an error while processing your request.")] * 4
    )
    sleep = FakeSleep()
    attempts: list[Attempt] = []
    with pytest.raises(HTTPProviderError) as caught:
        await with_retries(
            lambda: openai.complete(request()),
            max_retries=3,
            base_ms=100,
            factor=2.0,
            sleep=sleep,
            rng=random.Random(3),
            jitter="none",
            attempts_log=attempts,
        )
    assert caught.value.status == 500 and caught.value.retryable
    assert "The server had an error" in caught.value.message
    assert sleep.delays == [0.1, 0.2, 0.4]
    assert len(openai_server.chat_requests()) == 4
    assert [a.status for a in attempts] == [500] * 4
    assert attempts[-1].wait_s == 0.0


async def test_openai_401_not_retried_and_key_never_shown(openai_server: OpenAIServer) -> None:
    wrong = "sk-wrong-key-9876543210zyxwvu"
    sleep = FakeSleep()
    async with OpenAIProvider(openai_server.base_url, wrong) as provider:
        with pytest.raises(ProviderError) as caught:
            await with_retries(
                lambda: provider.complete(request()),
                max_retries=3,
                base_ms=100,
                factor=2.0,
                sleep=sleep,
            )
    error = caught.value
    assert error.retryable is False
    assert sleep.delays == []
    assert len(openai_server.chat_requests()) == 1
    assert f"the OpenAI-compatible server at {openai_server.base_url} rejected the API key" in str(
        error
    )
    for shown in (str(error), repr(error), repr(provider)):
        assert wrong not in shown and wrong[:12] not in shown and SECRET not in shown


async def test_openai_other_4xx_not_retried_with_bounded_message(
    openai: OpenAIProvider, openai_server: OpenAIServer
) -> None:
    openai_server.enqueue(
        openai_error_reply(400, "max_tokens is too large: " + "x" * 2000, "invalid_request_error")
    )
    with pytest.raises(HTTPProviderError) as caught:
        await openai.complete(request())
    assert caught.value.retryable is False and caught.value.status == 400
    assert "max_tokens is too large" in caught.value.message
    assert len(caught.value.message) < 400


async def test_openai_timeout_is_retryable(
    openai: OpenAIProvider, openai_server: OpenAIServer
) -> None:
    openai_server.enqueue(Reply(delay_s=2.0))
    with pytest.raises(ProviderError) as caught:
        await openai.complete(request(timeout_s=0.2))
    assert caught.value.retryable is True
    assert "did not answer within 0.2s" in caught.value.message


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (Reply(body="<html>Bad gateway</html>", headers={"Content-Type": "text/html"}), "JSON"),
        (Reply(body={"id": "x", "object": "chat.completion", "choices": []}), "no choices"),
        (Reply(body=[1, 2]), "object"),
        (Reply(body={"error": {"message": "model overloaded", "code": None}}), "overloaded"),
    ],
)
async def test_openai_malformed_body(
    openai: OpenAIProvider, openai_server: OpenAIServer, reply: Reply, why: str
) -> None:
    openai_server.enqueue(reply)
    with pytest.raises(ProviderError) as caught:
        await openai.complete(request())
    assert caught.value.retryable is False
    assert "malformed response" in caught.value.message and why in caught.value.message


async def test_openai_dropped_connection_is_retryable(
    openai: OpenAIProvider, openai_server: OpenAIServer
) -> None:
    openai_server.enqueue(Reply(drop=True))
    with pytest.raises(ProviderError) as caught:
        await openai.complete(request())
    assert caught.value.retryable is True


async def test_openai_usage_missing_is_estimated(
    openai: OpenAIProvider, openai_server: OpenAIServer
) -> None:
    openai_server.enqueue(Reply(usage=False, content="abcd" * 10))
    response = await openai.complete(request())
    assert response.usage_estimated is True
    assert response.output_tokens == 10
    assert response.input_tokens > 0


async def test_openai_no_model_configured(openai: OpenAIProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await openai.complete(request(model=None))
    assert caught.value.retryable is False
    assert "no model configured" in caught.value.message
    assert "LLM_DEFAULT_MODEL" in caught.value.message
    assert "EXECUTOR_MODEL" in caught.value.message


async def test_openai_connection_refused() -> None:
    url = refused_url("/v1")
    async with OpenAIProvider(url, SECRET) as provider:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(request())
    assert caught.value.retryable is True
    assert f"the OpenAI-compatible server at {url} is not reachable" in caught.value.message


async def test_openai_list_models(openai: OpenAIProvider) -> None:
    assert "gpt-4o-mini" in await openai.list_models()


async def test_openai_connections_are_reused(
    openai: OpenAIProvider, openai_server: OpenAIServer
) -> None:
    for _ in range(3):
        await openai.complete(request())
    assert len(openai_server.chat_requests()) == 3
    assert openai_server.connections == 1


# -- Ollama -----------------------------------------------------------------------------


async def test_ollama_success_and_options(
    ollama: OllamaProvider, ollama_server: OllamaServer
) -> None:
    response = await ollama.complete(
        request(model="llama3.1:8b", wants_json=True, stop=("\n\n", "FIN"))
    )
    assert response.provider == "ollama"
    assert response.text == '{"ok": true}'
    assert response.model == "llama3.1:8b"
    assert response.input_tokens > 0 and response.output_tokens > 0
    assert response.usage_estimated is False
    assert response.latency_ms == pytest.approx(4883.583458)  # from total_duration (ns)
    assert response.finish_reason == "stop"
    (sent,) = ollama_server.chat_requests()
    assert sent.json == {
        "model": "llama3.1:8b",
        "messages": [
            {"role": "system", "content": "Tu es un rédacteur."},
            {"role": "user", "content": "Écris une introduction sur les crews d'agents."},
        ],
        "stream": False,
        "options": {"temperature": 0.3, "num_predict": 321, "stop": ["\n\n", "FIN"]},
        "format": "json",
    }


async def test_ollama_length_finish_and_missing_usage(
    ollama: OllamaProvider, ollama_server: OllamaServer
) -> None:
    ollama_server.enqueue(Reply(usage=False, finish_reason="length", content="x" * 12))
    response = await ollama.complete(request(model="llama3.1:8b"))
    assert response.finish_reason == "length"
    assert response.usage_estimated is True
    assert response.output_tokens == 3
    (sent,) = ollama_server.chat_requests()
    assert "format" not in sent.json and "stop" not in sent.json["options"]


async def test_ollama_model_not_found(ollama: OllamaProvider) -> None:
    with pytest.raises(HTTPProviderError) as caught:
        await ollama.complete(request(model="mistral:7b"))
    assert caught.value.retryable is False and caught.value.status == 404
    assert "`ollama pull mistral:7b`" in caught.value.message


async def test_ollama_not_reachable() -> None:
    url = refused_url()
    async with OllamaProvider(url) as provider:
        with pytest.raises(ProviderError) as caught:
            await provider.complete(request(model="llama3.1:8b"))
    assert caught.value.retryable is True
    assert f"Ollama is not reachable at {url}" in caught.value.message


async def test_ollama_timeout(ollama: OllamaProvider, ollama_server: OllamaServer) -> None:
    ollama_server.enqueue(Reply(delay_s=2.0))
    with pytest.raises(ProviderError) as caught:
        await ollama.complete(request(model="llama3.1:8b", timeout_s=0.2))
    assert caught.value.retryable is True
    assert "did not answer within 0.2s" in caught.value.message


async def test_ollama_server_error_retryable_and_malformed_not(
    ollama: OllamaProvider, ollama_server: OllamaServer
) -> None:
    ollama_server.enqueue(
        Reply(status=500, body={"error": "model runner has unexpectedly stopped"}),
        Reply(body={"model": "llama3.1:8b", "done": True}),
    )
    with pytest.raises(ProviderError) as first:
        await ollama.complete(request(model="llama3.1:8b"))
    assert first.value.retryable is True
    assert "model runner has unexpectedly stopped" in first.value.message
    with pytest.raises(ProviderError) as second:
        await ollama.complete(request(model="llama3.1:8b"))
    assert second.value.retryable is False and "malformed response" in second.value.message


async def test_ollama_list_models(ollama: OllamaProvider) -> None:
    assert await ollama.list_models() == ["llama3.1:8b"]


async def test_ollama_no_model_configured(ollama: OllamaProvider) -> None:
    with pytest.raises(ProviderError, match="no model configured"):
        await ollama.complete(request(model=None))


# -- construction from settings ---------------------------------------------------------


async def test_from_settings(ollama_server: OllamaServer, openai_server: OpenAIServer) -> None:
    settings = settings_from_values(
        {
            "OLLAMA_BASE_URL": ollama_server.url + "/",
            "OPENAI_BASE_URL": openai_server.base_url,
            "OPENAI_API_KEY": SECRET,
        }
    )
    async with ollama_from_settings(settings) as ollama, openai_from_settings(settings) as openai:
        assert (await ollama.complete(request(model="llama3.1:8b"))).text
        assert (await openai.complete(request())).text


# -- per-provider concurrency -----------------------------------------------------------


async def test_concurrency_limit_bounds_calls_in_flight(
    ollama: OllamaProvider, ollama_server: OllamaServer
) -> None:
    limits = ProviderLimits(settings_from_values({"OLLAMA_MAX_CONCURRENCY": "2"}))
    ollama_server.responder = lambda _request: Reply(delay_s=0.05)
    peak = 0

    async def call() -> None:
        nonlocal peak
        async with limits.slot("ollama"):
            peak = max(peak, limits.in_flight("ollama"))
            await ollama.complete(request(model="llama3.1:8b"))

    await asyncio.gather(*(call() for _ in range(6)))
    assert len(ollama_server.chat_requests()) == 6
    assert peak == 2
    assert ollama_server.max_in_flight == 2
    assert limits.in_flight("ollama") == 0


async def test_limits_capacities() -> None:
    limits = ProviderLimits(
        settings_from_values({"OLLAMA_MAX_CONCURRENCY": "1", "OPENAI_MAX_CONCURRENCY": "5"})
    )
    assert limits.capacity("ollama") == 1
    assert limits.capacity("openai") == 5
    assert limits.capacity("offline") is None
    assert limits.semaphore("offline") is None
    assert limits.semaphore("openai") is limits.semaphore("openai")
    async with limits.slot("offline"):
        assert limits.in_flight("offline") == 1
