"""The LLM client against local Ollama / OpenAI-compatible servers: routing, retries,
fallback, errors, concurrency limits and cost."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator

import pytest
from llm_servers import (
    OllamaServer,
    OpenAIServer,
    Reply,
    openai_error_reply,
    rate_limited,
    refused_url,
)

from crew.agents.goal import Goal
from crew.agents.schemas import plan_schema
from crew.agents.supervisor import Supervisor
from crew.domain.errors import NoProviderAnsweredError, ProviderError
from crew.domain.plan import LLMSpec
from crew.engine.sidecar import build_sidecar
from crew.llm.base import Message
from crew.llm.client import CallResult, LLMClient
from crew.llm.pricing import PRICE_TABLE_VERSION, reset_warnings
from crew.llm.registry import ProviderRegistry
from crew.settings import Settings, settings_from_values

SECRET = "sk-test-0123456789abcdefSECRET"
MESSAGES = [Message("system", "You are a writer."), Message("user", "Write an intro.")]


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


@pytest.fixture
def ollama_server() -> Iterator[OllamaServer]:
    with OllamaServer(models=["llama3.1:8b"]) as server:
        yield server


def make_settings(**values: str) -> Settings:
    base = {"OPENAI_BACKOFF_BASE_MS": "1", "CREW_LANGUAGE": "en"}
    base.update(values)
    return settings_from_values(base)


def openai_settings(server: OpenAIServer, **values: str) -> Settings:
    base = {
        "LLM_DEFAULT_PROVIDER": "openai",
        "LLM_DEFAULT_MODEL": "gpt-4o-mini",
        "OPENAI_BASE_URL": server.base_url,
    }
    return make_settings(**{**base, **values})


async def call(
    settings: Settings, role: str = "executor", *llm_layers: LLMSpec | None, json_: bool = False
) -> CallResult:
    registry = ProviderRegistry(settings)
    try:
        client = LLMClient(settings, registry)
        return await client.call(role, "Writer", MESSAGES, wants_json=json_, llm_layers=llm_layers)
    finally:
        await registry.aclose()


# -- routing ---------------------------------------------------------------------------


async def test_role_settings_reach_the_openai_body(openai_server: OpenAIServer) -> None:
    settings = openai_settings(
        openai_server,
        EXECUTOR_MODEL="gpt-4o",
        EXECUTOR_TEMPERATURE="0.7",
        EXECUTOR_MAX_TOKENS="333",
        OPENAI_API_KEY=SECRET,
    )
    result = await call(settings)
    body = openai_server.chat_requests()[0].json
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("gpt-4o", 0.7, 333)
    assert openai_server.chat_requests()[0].headers["authorization"] == f"Bearer {SECRET}"
    assert result.resolved is not None
    assert result.resolved.sources["model"] == "role"
    assert result.model == "gpt-4o" and result.provider == "openai"


async def test_cli_beats_node_beats_request_beats_role(openai_server: OpenAIServer) -> None:
    settings = openai_settings(openai_server, EXECUTOR_TEMPERATURE="0.7", EXECUTOR_MAX_TOKENS="9")
    cli = LLMSpec(model="gpt-4.1-mini")
    node = LLMSpec(model="gpt-4o", temperature=0.1)
    request = LLMSpec(temperature=1.5, max_tokens=77, timeout_s=30)
    result = await call(settings, "executor", cli, node, request)
    body = openai_server.chat_requests()[0].json
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("gpt-4.1-mini", 0.1, 77)
    assert result.resolved is not None
    assert dict(result.resolved.sources) == {
        "provider": "default",
        "model": "cli",
        "temperature": "node",
        "max_tokens": "request",
        "timeout_s": "request",
    }


async def test_ollama_options_carry_temperature_and_max_tokens(
    ollama_server: OllamaServer,
) -> None:
    settings = make_settings(
        MANAGER_PROVIDER="ollama",
        MANAGER_MODEL="llama3.1:8b",
        MANAGER_TEMPERATURE="0.4",
        MANAGER_MAX_TOKENS="222",
        OLLAMA_BASE_URL=ollama_server.url,
    )
    result = await call(settings, "manager", json_=True)
    body = ollama_server.chat_requests()[0].json
    assert body["model"] == "llama3.1:8b" and body["stream"] is False
    assert body["options"] == {"temperature": 0.4, "num_predict": 222}
    assert body["format"] == "json"
    assert result.cost_usd == 0.0 and result.price_source == "local"
    assert result.response.input_tokens > 0 and not result.response.usage_estimated


# -- retries and fallback --------------------------------------------------------------


async def test_429_with_retry_after_then_success(openai_server: OpenAIServer) -> None:
    openai_server.enqueue(rate_limited("0.05"))
    result = await call(openai_settings(openai_server))
    assert result.attempts == 2
    first, second = result.attempt_log
    assert (first.ok, first.status, first.retryable) == (False, 429, True)
    assert first.wait_s >= 0.05  # Retry-After beats the 1 ms backoff
    assert second.ok and result.fallback_from is None


async def test_500s_exhaust_retries_then_the_fallback_answers(
    openai_server: OpenAIServer, ollama_server: OllamaServer
) -> None:
    openai_server.enqueue(*[openai_error_reply(500, "The server had an error")] * 3)
    settings = openai_settings(
        openai_server,
        OPENAI_MAX_RETRIES="2",
        LLM_FALLBACK_ORDER="ollama",
        OLLAMA_FALLBACK_MODEL="llama3.1:8b",
        OLLAMA_BASE_URL=ollama_server.url,
    )
    result = await call(settings)
    assert len(openai_server.chat_requests()) == 3
    assert (result.provider, result.model, result.fallback_from) == (
        "ollama",
        "llama3.1:8b",
        "openai",
    )
    assert result.attempts == 4
    assert [(a.provider, a.ok, a.status) for a in result.attempt_log] == [
        ("openai", False, 500),
        ("openai", False, 500),
        ("openai", False, 500),
        ("ollama", True, None),
    ]
    sidecar = build_sidecar(
        run_id="r", node_key="n1", role="Writer", operation="chat", calls=[result],
        prompt_max_chars=100,
    )  # fmt: skip
    assert sidecar["fallback_from"] == "openai"
    assert sidecar["attempts"] == 4 and len(sidecar["attempts_detail"]) == 4
    assert sidecar["provider"] == "ollama" and sidecar["cost_usd"] == 0.0


async def test_offline_is_never_a_silent_fallback(openai_server: OpenAIServer) -> None:
    openai_server.enqueue(*[openai_error_reply(503, "overloaded")] * 2)
    with pytest.raises(NoProviderAnsweredError) as caught:
        await call(openai_settings(openai_server, OPENAI_MAX_RETRIES="1"))
    assert "503" in caught.value.message and caught.value.exit_code == 4
    assert not caught.value.retryable  # the client already retried

    openai_server.enqueue(*[openai_error_reply(503, "overloaded")] * 2)
    listed = openai_settings(openai_server, OPENAI_MAX_RETRIES="1", LLM_FALLBACK_ORDER="offline")
    result = await call(listed)
    assert (result.provider, result.fallback_from) == ("offline", "openai")


async def test_nothing_answers_lists_every_reason() -> None:
    settings = make_settings(
        LLM_DEFAULT_PROVIDER="openai",
        LLM_DEFAULT_MODEL="gpt-4o-mini",
        OPENAI_BASE_URL=refused_url("/v1"),
        OPENAI_MAX_RETRIES="1",
        LLM_FALLBACK_ORDER="ollama,openai",
        OLLAMA_BASE_URL=refused_url(),
        OLLAMA_FALLBACK_MODEL="llama3.1:8b",
    )
    with pytest.raises(NoProviderAnsweredError) as caught:
        await call(settings)
    message = caught.value.message
    assert "no LLM provider could answer" in message
    assert "is not reachable" in message and "Ollama is not reachable" in message
    assert len(caught.value.reasons) == 2  # openai is not tried twice with the same model


async def test_fallback_without_a_model_is_reported_not_guessed(
    openai_server: OpenAIServer,
) -> None:
    openai_server.enqueue(openai_error_reply(500, "boom"))
    settings = openai_settings(openai_server, OPENAI_MAX_RETRIES="0", LLM_FALLBACK_ORDER="ollama")
    with pytest.raises(NoProviderAnsweredError, match="set OLLAMA_FALLBACK_MODEL"):
        await call(settings)


# -- errors ----------------------------------------------------------------------------


async def test_401_is_not_retried_and_never_shows_the_key() -> None:
    with OpenAIServer(api_key=SECRET) as server:
        wrong = "sk-wrong-key-9876543210abcdef"
        settings = openai_settings(server, OPENAI_API_KEY=wrong, OPENAI_MAX_RETRIES="3")
        with pytest.raises(ProviderError) as caught:
            await call(settings)
        assert len(server.chat_requests()) == 1
    text = str(caught.value)
    assert "rejected the API key" in text and "OPENAI_API_KEY" in text
    assert wrong not in text and SECRET not in text
    assert caught.value.exit_code == 4


async def test_timeout(openai_server: OpenAIServer) -> None:
    openai_server.enqueue(Reply(delay_s=1.0))
    settings = openai_settings(openai_server, EXECUTOR_TIMEOUT_S="0.2", OPENAI_MAX_RETRIES="0")
    with pytest.raises(ProviderError, match=r"did not answer within 0\.2s"):
        await call(settings)


async def test_malformed_body_is_not_retried(openai_server: OpenAIServer) -> None:
    openai_server.enqueue(Reply(body="<html>bad gateway page</html>"))
    with pytest.raises(ProviderError, match="malformed response"):
        await call(openai_settings(openai_server, OPENAI_MAX_RETRIES="3"))
    assert len(openai_server.chat_requests()) == 1


async def test_ollama_model_not_found(ollama_server: OllamaServer) -> None:
    settings = make_settings(
        LLM_DEFAULT_PROVIDER="ollama",
        LLM_DEFAULT_MODEL="mistral",
        OLLAMA_BASE_URL=ollama_server.url,
    )
    with pytest.raises(ProviderError, match="`ollama pull mistral`"):
        await call(settings)
    assert len(ollama_server.chat_requests()) == 1


async def test_http_provider_without_a_model(openai_server: OpenAIServer) -> None:
    settings = make_settings(LLM_DEFAULT_PROVIDER="openai", OPENAI_BASE_URL=openai_server.base_url)
    with pytest.raises(ProviderError, match="no model configured for openai"):
        await call(settings)
    assert openai_server.chat_requests() == []


async def test_supervisor_reads_a_fenced_json_plan_through_openai(
    openai_server: OpenAIServer,
) -> None:
    plan = {"title": "T", "plan": [{"id": "a", "title": "A"}, {"id": "b", "title": "B",
                                                                "deps": ["a"]}]}  # fmt: skip
    openai_server.enqueue(
        Reply(content="Here is the plan:\n```json\n" + json.dumps(plan) + "\n```")
    )
    settings = openai_settings(openai_server)
    registry = ProviderRegistry(settings)
    try:
        result = await Supervisor(LLMClient(settings, registry), settings).plan(Goal(title="T"))
    finally:
        await registry.aclose()
    assert [n.id for n in result.plan.nodes] == ["a", "b"]
    body = openai_server.chat_requests()[0].json
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == plan_schema()


# -- concurrency and cost --------------------------------------------------------------


async def test_concurrency_limit_is_shared_by_every_call(openai_server: OpenAIServer) -> None:
    openai_server.responder = lambda request: Reply(delay_s=0.05)
    settings = openai_settings(openai_server, OPENAI_MAX_CONCURRENCY="2")
    registry = ProviderRegistry(settings)
    client = LLMClient(settings, registry)
    budgeted = client.with_budget(None)  # a view shares the limits
    try:
        await asyncio.gather(
            *(c.call("executor", "Writer", MESSAGES) for c in [client, budgeted] * 4)
        )
    finally:
        await registry.aclose()
    assert len(openai_server.chat_requests()) == 8
    assert openai_server.max_in_flight == 2


async def test_cost_from_the_table_and_from_env(openai_server: OpenAIServer) -> None:
    result = await call(openai_settings(openai_server))
    assert result.response.model == "gpt-4o-mini-2024-07-18"
    expected = (
        result.response.input_tokens * 0.00015 + result.response.output_tokens * 0.0006
    ) / 1000
    assert result.cost_usd == pytest.approx(expected) and result.cost_usd > 0
    assert result.price_source == f"table:{PRICE_TABLE_VERSION}"

    env = openai_settings(
        openai_server,
        OPENAI_PRICE_PROMPT_GPT_4O_MINI_PER_1K="1",
        OPENAI_PRICE_COMPLETION_GPT_4O_MINI_PER_1K="2",
    )
    priced = await call(env)
    assert priced.price_source == "env"
    assert priced.cost_usd == pytest.approx(
        (priced.response.input_tokens * 1 + priced.response.output_tokens * 2) / 1000
    )


async def test_unknown_model_costs_null_with_one_warning(
    openai_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    reset_warnings()
    settings = openai_settings(openai_server, LLM_DEFAULT_MODEL="my-local-llama")
    first = await call(settings)
    second = await call(settings)
    assert first.cost_usd is None and second.cost_usd is None and first.price_source is None
    warnings = [r for r in caplog.records if "my-local-llama" in r.getMessage()]
    assert len(warnings) == 1
    assert re.search(r"OPENAI_PRICE_PROMPT_MY_LOCAL_LLAMA_PER_1K", warnings[0].getMessage())
