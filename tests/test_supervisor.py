"""Supervisor parsing and repair: fenced and prose answers, repairs that name problems."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from fakes import ScriptedProvider

from crew.agents.json_extract import JSONExtractError, extract_json_object
from crew.agents.supervisor import Goal, Supervisor
from crew.domain.errors import PlanValidationError, ProviderError
from crew.domain.plan import NodeType
from crew.llm.client import LLMClient
from crew.llm.registry import ProviderRegistry
from crew.settings import Settings

GOAL = Goal("Rapport 80p", "Un rapport", ("80 pages",))

VALID: dict[str, Any] = {
    "decompose": True,
    "plan": [
        {"id": "a", "title": "Recherche A", "suggested_agent_role": "Researcher"},
        {"id": "b", "title": "Recherche B", "suggested_agent_role": "Research_Legal"},
        {"id": "m", "title": "Coordination", "type": "manage", "deps": ["a", "b"]},
        {"id": "w", "title": "Rédaction", "deps": ["m"], "suggested_agent_role": "Writer_Tech"},
        {"id": "s", "title": "Synthèse", "type": "synthesis", "deps": ["w"]},
    ],
}
CYCLE = {
    "title": "Rapport 80p",
    "plan": [
        {"id": "a", "title": "A", "deps": ["b"]},
        {"id": "b", "title": "B", "deps": ["a"]},
    ],
}


def make_supervisor(
    provider: ScriptedProvider, attempts: int = 3
) -> tuple[Supervisor, ScriptedProvider]:
    settings = Settings(supervisor_max_attempts=attempts)
    registry = ProviderRegistry(settings)
    registry.register("offline", provider)
    return Supervisor(LLMClient(settings, registry), settings), provider


def user_messages(provider: ScriptedProvider, call: int) -> list[str]:
    return [m.content for m in provider.requests[call].messages if m.role == "user"]


async def test_fenced_answer_is_accepted_first_time() -> None:
    fenced = "```json\n" + json.dumps(VALID) + "\n```"
    supervisor, provider = make_supervisor(ScriptedProvider([fenced]))
    result = await supervisor.plan(GOAL)
    assert result.attempts == 1
    assert len(result.calls) == 1
    assert provider.requests[0].wants_json
    assert provider.requests[0].role == "Supervisor"
    assert result.plan.title == "Rapport 80p"  # defaults to the goal title
    assert result.plan.description == "Un rapport"
    assert result.plan.acceptance == ("80 pages",)


async def test_roles_types_and_dag_are_preserved() -> None:
    supervisor, _ = make_supervisor(ScriptedProvider([json.dumps(VALID)]))
    plan = (await supervisor.plan(GOAL)).plan
    assert [n.id for n in plan.nodes] == ["a", "b", "m", "w", "s"]
    assert plan.node("m").type is NodeType.MANAGE
    assert plan.node("s").type is NodeType.SYNTHESIS
    assert plan.node("m").deps == ("a", "b")
    assert plan.node("b").suggested_agent_role == "Research_Legal"
    assert plan.node("w").suggested_agent_role == "Writer_Tech"


async def test_repairs_until_valid_and_repair_messages_name_the_problems() -> None:
    prose = "Voici le plan :\n" + json.dumps(CYCLE) + "\nBonne lecture !"
    provider = ScriptedProvider(
        ["Je ne sais pas.", prose, "```json\n" + json.dumps(VALID) + "\n```"]
    )
    supervisor, provider = make_supervisor(provider)
    result = await supervisor.plan(GOAL)
    assert result.attempts == 3
    assert len(result.calls) == 3
    # second request: the first answer goes back, followed by what was wrong with it
    second = provider.requests[1].messages
    assert second[-2].role == "assistant" and second[-2].content == "Je ne sais pas."
    assert "no valid JSON object" in second[-1].content
    # third request: the prose answer was parsed, the cycle is shown
    third = provider.requests[2].messages
    assert third[-2].content == prose
    assert "a -> b -> a" in third[-1].content or "b -> a -> b" in third[-1].content
    assert len(third) == 6


async def test_exhausted_attempts_raise_with_every_reason() -> None:
    bad_dep = {"plan": [{"id": "a", "title": "A", "deps": ["zz"]}]}
    answers = [json.dumps(bad_dep), json.dumps(CYCLE), "[1, 2]"]
    supervisor, provider = make_supervisor(ScriptedProvider(answers), attempts=3)
    with pytest.raises(PlanValidationError) as caught:
        await supervisor.plan(GOAL)
    error = caught.value
    assert error.exit_code == 4  # the model failed its job; the input was fine
    text = str(error)
    assert "3 attempt" in text
    assert any("attempt 1" in p and "unknown dependency 'zz'" in p for p in error.problems)
    assert any("attempt 2" in p and "cycle" in p for p in error.problems)
    assert any("attempt 3" in p and "no valid JSON object" in p for p in error.problems)
    assert provider.calls == 3


async def test_max_attempts_setting_is_respected() -> None:
    supervisor, provider = make_supervisor(ScriptedProvider(["nope", "nope"]), attempts=1)
    with pytest.raises(PlanValidationError):
        await supervisor.plan(GOAL)
    assert provider.calls == 1


async def test_provider_errors_are_not_repaired() -> None:
    failure = ProviderError("down", provider="scripted", retryable=True)
    supervisor, provider = make_supervisor(ScriptedProvider([failure]))
    with pytest.raises(ProviderError):
        await supervisor.plan(GOAL)
    assert provider.calls == 1


async def test_english_prompts_when_configured() -> None:
    provider = ScriptedProvider([json.dumps(VALID)])
    settings = dataclasses.replace(Settings(), crew_language="en")
    registry = ProviderRegistry(settings)
    registry.register("offline", provider)
    await Supervisor(LLMClient(settings, registry), settings).plan(GOAL)
    assert "You are the Supervisor" in provider.requests[0].messages[0].content
    assert "Goal: Rapport 80p" in provider.requests[0].messages[1].content


async def test_offline_supervisor_end_to_end() -> None:
    settings = Settings()
    supervisor = Supervisor(LLMClient(settings, ProviderRegistry(settings)), settings)
    result = await supervisor.plan(GOAL)
    assert result.attempts == 1
    assert result.calls[0].provider == "offline"
    assert result.calls[0].cost_usd == 0.0
    assert result.calls[0].price_source == "local"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('```\n{"a": 1}\n```', {"a": 1}),
        ('Here: {"a": "}{", "b": {"c": [1]}} done {"z": 0}', {"a": "}{", "b": {"c": [1]}}),
        ('text {not json} then {"a": "\\"}"}', {"a": '"}'}),
    ],
)
def test_extract_json_object(text: str, expected: dict[str, Any]) -> None:
    assert extract_json_object(text) == expected


@pytest.mark.parametrize("text", ["", "no json here", "[1, 2]", '{"a": '])
def test_extract_json_object_errors(text: str) -> None:
    with pytest.raises(JSONExtractError, match=r"JSON object|empty"):
        extract_json_object(text)
