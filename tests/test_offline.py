"""The offline provider: deterministic, valid answers derived from the prompts' context."""

from __future__ import annotations

import json
import time

from crew.agents.executor import DependencyOutput, build_messages
from crew.agents.goal import Goal
from crew.agents.manager import manager_messages, validate_answer
from crew.agents.roles import resolve_role
from crew.agents.supervisor import supervisor_messages
from crew.domain.plan import NodeType, PlanNode, parse_plan
from crew.llm.base import LLMRequest, Message, Provider, estimate_tokens
from crew.llm.offline import OfflineProvider, context_block, read_context

GOAL = Goal("Rapport 80p", "Un rapport sur l'énergie", ("80 pages", "Sources citées"))


def plan_request(goal: Goal = GOAL, language: str = "fr") -> LLMRequest:
    return LLMRequest(
        role="Supervisor", messages=tuple(supervisor_messages(goal, language)), wants_json=True
    )


async def test_implements_the_provider_protocol() -> None:
    provider = OfflineProvider()
    assert isinstance(provider, Provider)
    assert provider.name == "offline"
    await provider.aclose()


async def test_same_request_same_answer() -> None:
    first = await OfflineProvider().complete(plan_request())
    second = await OfflineProvider().complete(plan_request())
    assert first == second
    other = await OfflineProvider().complete(plan_request(Goal("Autre chose")))
    assert other.text != first.text


async def test_plan_is_valid_and_exercises_the_dag() -> None:
    response = await OfflineProvider().complete(plan_request())
    data = json.loads(response.text)
    assert data["decompose"] is True
    plan = parse_plan(data)
    assert plan.title == "Rapport 80p"
    assert 5 <= len(plan.nodes) <= 7
    roots = [n for n in plan.nodes if not n.deps]
    assert len(roots) >= 2, "independent research branches run in parallel"
    manage = [n for n in plan.nodes if n.type is NodeType.MANAGE]
    assert len(manage) == 1
    assert plan.dependents()[manage[0].id], "the manage node has dependents to assign"
    synthesis = [n for n in plan.nodes if n.type is NodeType.SYNTHESIS]
    assert len(synthesis) == 1
    assert plan.sinks() == [synthesis[0].id]
    assert list(GOAL.acceptance) == list(synthesis[0].acceptance)
    assert all(n.suggested_agent_role for n in plan.nodes)


async def test_plan_titles_follow_the_language() -> None:
    french = parse_plan(json.loads((await OfflineProvider().complete(plan_request())).text))
    english = parse_plan(
        json.loads((await OfflineProvider().complete(plan_request(language="en"))).text)
    )
    assert any("Synthèse" in n.title for n in french.nodes)
    assert any("synthesis" in n.title.lower() for n in english.nodes)


async def test_supervisor_without_context_still_answers_a_plan() -> None:
    request = LLMRequest(
        role="Supervisor", messages=(Message("user", "Rapport 80p"),), wants_json=True
    )
    plan = parse_plan(json.loads((await OfflineProvider().complete(request)).text))
    assert plan.title == "Rapport 80p"


def _dependents() -> tuple[PlanNode, list[PlanNode]]:
    manage = PlanNode("m1", "Coordination", type=NodeType.MANAGE)
    return manage, [
        PlanNode("w1", "Rédaction du chapitre 1", deps=("m1",)),
        PlanNode("r1", "Relecture critique", deps=("m1",)),
        PlanNode("s1", "Collecte des sources", deps=("m1",)),
        PlanNode("x1", "Chapitre technique", deps=("m1",), suggested_agent_role="Writer_Tech"),
    ]


async def test_manager_answer_covers_exactly_the_given_nodes() -> None:
    manage, dependents = _dependents()
    request = LLMRequest(
        role="Manager_Generic",
        messages=tuple(manager_messages(GOAL, manage, dependents, "fr")),
        wants_json=True,
    )
    answer = json.loads((await OfflineProvider().complete(request)).text)
    assignments, problems = validate_answer(answer, [n.id for n in dependents])
    assert problems == []
    assert assignments == {
        "w1": "Writer_FR",
        "r1": "Reviewer",
        "s1": "Researcher",
        "x1": "Writer_Tech",
    }
    assert answer["quality_checks"]
    assert isinstance(answer["integration_notes"], str)


async def test_markdown_reflects_title_acceptance_and_inputs() -> None:
    node = PlanNode(
        "n4",
        "Rédaction du contenu",
        acceptance=("Plan en 10 chapitres", "Ton neutre"),
        deps=("n1", "n2"),
    )
    messages = build_messages(
        goal=GOAL,
        node=node,
        role=resolve_role("Writer_FR", node.type),
        dependency_outputs=[
            DependencyOutput("n1", "Collecte des sources", "texte 1"),
            DependencyOutput("n2", "Analyse des exigences", "texte 2"),
        ],
        language="fr",
    )
    request = LLMRequest(role="Writer_FR", messages=messages)
    response = await OfflineProvider().complete(request)
    text = response.text
    assert text.startswith("# Rédaction du contenu")
    assert "hors ligne" in text and "offline" in text
    assert "- [x] Plan en 10 chapitres" in text
    assert "- [x] Ton neutre" in text
    assert "## Entrées utilisées" in text
    assert "`n1`" in text and "`n2`" in text
    assert response.input_tokens == estimate_tokens("\n".join(m.content for m in messages))
    assert response.output_tokens == estimate_tokens(text)
    assert response.model == "offline"
    assert response.finish_reason == "stop"
    assert response.provider == "offline"


async def test_synthesis_markdown_in_english_lists_goal_acceptance() -> None:
    node = PlanNode("s", "Final synthesis", type=NodeType.SYNTHESIS, deps=("a",))
    messages = build_messages(
        goal=GOAL,
        node=node,
        role=resolve_role(None, node.type),
        dependency_outputs=[DependencyOutput("a", "Draft", "x" * 50)],
        language="en",
        max_chars_per_dependency=10,
    )
    text = (await OfflineProvider().complete(LLMRequest("Writer_FR", messages))).text
    assert "## Deliverable" in text
    assert "- [x] 80 pages" in text
    assert "`a` — Draft (truncated)" in text
    assert "Produced offline" in text


async def test_latency_is_simulated_and_reported() -> None:
    provider = OfflineProvider(latency_ms=30)
    started = time.perf_counter()
    response = await provider.complete(plan_request())
    assert time.perf_counter() - started >= 0.025
    assert response.latency_ms == 30
    assert (await OfflineProvider().complete(plan_request())).latency_ms == 0


def test_context_block_round_trip_and_last_one_wins() -> None:
    first = context_block("plan", {"goal": {"title": "A"}})
    second = context_block("execute", {"node": {"id": "n1"}})
    messages = [
        Message("system", "rules"),
        Message("user", f"text\n{first}\nmore"),
        Message("assistant", second),  # assistant text is never read as context
        Message("user", f"repair\n{second}"),
    ]
    context = read_context(messages)
    assert context is not None
    assert context["crew_context"] == "execute"
    assert read_context([Message("user", "```json\n{not json}\n```")]) is None
