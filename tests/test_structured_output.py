"""Structured output: the schema in each server's spelling, refusals detected and
remembered, `<think>` blocks kept out of answers but in sidecars, and tight schemas."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from llm_servers import OllamaServer, OpenAIServer, Reply, openai_error_reply

from crew.agents.goal import Goal
from crew.agents.schemas import manager_schema, plan_schema
from crew.agents.supervisor import Supervisor, plan_from_answer
from crew.engine.sidecar import build_sidecar
from crew.llm.base import LLMRequest, LLMResponse, Message
from crew.llm.circuit import CircuitBreaker
from crew.llm.client import CallResult, LLMClient
from crew.llm.http import split_reasoning
from crew.llm.registry import ProviderRegistry
from crew.llm.structured import is_format_refusal
from crew.settings import Settings, settings_from_values

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
MESSAGES = [Message("user", "Réponds en JSON.")]


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


def settings_for(**values: str) -> Settings:
    return settings_from_values({"OPENAI_BACKOFF_BASE_MS": "1", "CREW_LANGUAGE": "en", **values})


def openai(server: OpenAIServer) -> Settings:
    return settings_for(
        LLM_DEFAULT_PROVIDER="openai",
        LLM_DEFAULT_MODEL="gpt-4o-mini",
        OPENAI_BASE_URL=server.base_url,
    )


async def calls(settings: Settings, count: int) -> list[CallResult]:
    registry = ProviderRegistry(settings)
    client = LLMClient(settings, registry)
    try:
        return [
            await client.call("manager", "Manager", MESSAGES, json_schema=SCHEMA, schema_name="x")
            for _ in range(count)
        ]
    finally:
        await registry.aclose()


def formats(server: OpenAIServer) -> list[Any]:
    return [r.json["response_format"] for r in server.chat_requests()]


REFUSED_JSON_SCHEMA = openai_error_reply(
    500,
    "1 validation error: {'loc': ('body', 'response_format', 'type'), "
    "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}",
)


async def test_json_schema_first_then_the_other_spelling_once_then_remembered(
    openai_server: OpenAIServer,
) -> None:
    openai_server.enqueue(REFUSED_JSON_SCHEMA)
    first, second = await calls(openai(openai_server), 2)
    sent = formats(openai_server)
    assert sent[0] == {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": SCHEMA, "strict": False},
    }
    assert sent[1] == sent[2] == {"type": "json_object", "schema": SCHEMA}  # remembered
    assert first.response.extra["structured_output"] == "json_object_schema"
    assert first.response.extra["format_refusals"][0]["status"] == 500
    assert "format_refusals" not in second.response.extra


async def test_down_to_json_mode_when_both_schema_spellings_are_refused(
    openai_server: OpenAIServer,
) -> None:
    openai_server.enqueue(
        openai_error_reply(400, "Invalid parameter: 'response_format' of type 'json_schema'"),
        openai_error_reply(400, "Unrecognized request argument supplied: schema"),
    )
    (result,) = await calls(openai(openai_server), 1)
    assert formats(openai_server)[-1] == {"type": "json_object"}
    assert result.response.extra["structured_output"] == "json_object"


async def test_an_error_that_does_not_name_the_format_is_not_a_refusal(
    openai_server: OpenAIServer,
) -> None:
    openai_server.responder = lambda request: openai_error_reply(
        400, "Invalid 'messages': empty array.", "invalid_request_error"
    )
    with pytest.raises(Exception, match="empty array"):
        await calls(openai(openai_server), 1)
    assert len(openai_server.chat_requests()) == 1  # no other spelling tried
    assert not is_format_refusal(429, "response_format rate limit")  # never a refusal


async def test_ollama_gets_the_schema_as_format_and_falls_back_to_json() -> None:
    with OllamaServer(models=["qwen3:8b"]) as server:
        settings = settings_for(
            LLM_DEFAULT_PROVIDER="ollama", LLM_DEFAULT_MODEL="qwen3:8b", OLLAMA_BASE_URL=server.url
        )
        await calls(settings, 1)
        assert server.chat_requests()[0].json["format"] == SCHEMA
    with OllamaServer(models=["qwen3:8b"]) as old:
        old.enqueue(Reply(status=400, body={"error": 'invalid format: expected "json"'}))
        settings = settings_for(
            LLM_DEFAULT_PROVIDER="ollama", LLM_DEFAULT_MODEL="qwen3:8b", OLLAMA_BASE_URL=old.url
        )
        (result,) = await calls(settings, 1)
        assert [r.json["format"] for r in old.chat_requests()] == [SCHEMA, "json"]
        assert result.response.extra["structured_output"] == "json"


async def test_think_blocks_are_stripped_before_parsing_and_kept_in_the_sidecar(
    openai_server: OpenAIServer,
) -> None:
    plan = {"title": "T", "plan": [{"id": "n1", "title": "Only", "deps": []}]}
    openai_server.enqueue(
        Reply(content="<think>\nThe user wants a plan. One node.\n</think>\n\n" + json.dumps(plan))
    )
    settings = openai(openai_server)
    registry = ProviderRegistry(settings)
    try:
        result = await Supervisor(LLMClient(settings, registry), settings).plan(Goal(title="T"))
    finally:
        await registry.aclose()
    (call,) = result.calls
    assert call.response.text.startswith("{")
    assert call.response.extra["reasoning"] == "The user wants a plan. One node."
    sidecar = build_sidecar(
        run_id="r", node_key=None, role="Supervisor", operation="chat", calls=[call],
        prompt_max_chars=1000,
    )  # fmt: skip
    assert sidecar["reasoning"] == ["The user wants a plan. One node."]
    assert sidecar["structured_output"] == "json_schema"
    assert split_reasoning("<think>cut off while thinking") == ("", "cut off while thinking")
    assert split_reasoning("no think") == ("no think", None)


def bounded(schema: Any, defs: dict[str, Any]) -> list[str]:
    """Every unbounded string or list in `schema` (a grammar would run them to max_tokens)."""
    problems: list[str] = []
    if isinstance(schema, dict):
        if "$ref" in schema:
            return bounded(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
        kind = schema.get("type")
        if kind == "string" and not ({"const", "enum"} & set(schema)):
            pattern = schema.get("pattern", "")
            if not re.search(r"\{0,\d+\}\$$", pattern):
                problems.append(f"unbounded string {schema}")
        if kind == "array" and "maxItems" not in schema and "const" not in schema:
            problems.append(f"unbounded list {schema}")
        for key, value in schema.items():
            if key != "$defs":
                problems.extend(bounded(value, defs))
    elif isinstance(schema, list):
        for item in schema:
            problems.extend(bounded(item, defs))
    return problems


def test_schemas_are_tight() -> None:
    for schema in (plan_schema(), manager_schema(["a", "b"]), manager_schema([])):
        assert bounded(schema, schema["$defs"]) == []
        assert schema["additionalProperties"] is False


def test_any_answer_the_plan_schema_allows_is_a_valid_plan() -> None:
    answer = {
        "title": "Rapport",
        "plan": [
            {"id": "n1", "title": "Collecter", "type": "task", "suggested_agent_role": "R",
             "acceptance": ["ok"], "deps": []},
            {"id": "n2", "title": "Écrire", "type": "synthesis", "suggested_agent_role": "W",
             "acceptance": ["ok"], "deps": ["n1", "n1"]},
        ],
    }  # fmt: skip
    plan = plan_from_answer(json.dumps(answer), Goal(title="Rapport"))
    assert [n.deps for n in plan.nodes] == [(), ("n1",)]  # a dependency named twice is one


def test_circuit_breaker_opens_probes_once_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(cooldown_s=30, clock=lambda: now[0])
    key = ("openai", "m")
    assert breaker.admit(key) == "normal"
    breaker.failed(key)
    assert breaker.admit(key) is None and "next probe in 30s" in breaker.why_open(key)
    now[0] = 31.0
    assert breaker.admit(key) == "probe"
    assert breaker.admit(key) is None  # one probe at a time
    breaker.failed(key)  # the probe failed: open again, for a new cooldown
    now[0] = 45.0
    assert breaker.admit(key) is None
    now[0] = 62.0
    assert breaker.admit(key) == "probe"
    breaker.succeeded(key)
    assert breaker.state(key) == "closed"


def test_call_result_timing_fields_reach_the_sidecar() -> None:
    now = datetime.now(UTC)
    request = LLMRequest(role="Writer", messages=(Message("user", "x"),))
    response = LLMResponse("ok", "m", 3, 4, 12.0, provider="openai")
    call = CallResult(request, response, "openai", "m", now, now, elapsed_ms=2012.0)
    sidecar = build_sidecar(
        run_id="r", node_key="a", role="Writer", operation="chat", calls=[call],
        prompt_max_chars=100,
    )  # fmt: skip
    assert (sidecar["latency_ms"], sidecar["elapsed_ms"]) == (12.0, 2012.0)
