"""Roles, manager assignments and repair, executor prompts, LLM resolution."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fakes import ScriptedProvider

from crew.agents import prompts
from crew.agents.executor import DependencyOutput, build_messages, execute
from crew.agents.goal import Goal
from crew.agents.manager import assign
from crew.agents.roles import RoleSpec, resolve_role
from crew.domain.errors import ConfigError, PlanValidationError
from crew.domain.plan import LLMSpec, NodeType, PlanNode
from crew.llm.base import Message
from crew.llm.client import LLMClient
from crew.llm.offline import OfflineProvider
from crew.llm.registry import ProviderRegistry
from crew.llm.resolution import resolve_llm
from crew.settings import RoleSettings, Settings, settings_from_values

GOAL = Goal("Rapport 80p", "Un rapport sur l'énergie", ("80 pages",))


# --- roles -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "node_type", "expected"),
    [
        ("Writer_FR", NodeType.TASK, RoleSpec("Writer_FR", "writer", False)),
        ("writer_fr", NodeType.TASK, RoleSpec("Writer_FR", "writer", False)),
        ("Researcher", NodeType.TASK, RoleSpec("Researcher", "researcher", False)),
        ("Reviewer", NodeType.TASK, RoleSpec("Reviewer", "reviewer", False)),
        ("Manager_Generic", NodeType.MANAGE, RoleSpec("Manager_Generic", "manager", False)),
        ("Supervisor", NodeType.TASK, RoleSpec("Supervisor", "manager", False)),
        ("Writer_Tech", NodeType.TASK, RoleSpec("Writer_Tech", "writer", True)),
        ("WRITER-EN", NodeType.TASK, RoleSpec("WRITER-EN", "writer", True)),
        ("Research_Legal", NodeType.TASK, RoleSpec("Research_Legal", "researcher", True)),
        ("reviewer_senior", NodeType.TASK, RoleSpec("reviewer_senior", "reviewer", True)),
        ("Manager_Ops", NodeType.MANAGE, RoleSpec("Manager_Ops", "manager", True)),
        ("Data_Analyst", NodeType.TASK, RoleSpec("Data_Analyst", "generic", True)),
        (None, NodeType.TASK, RoleSpec("Writer_FR", "writer", False)),
        (None, NodeType.SYNTHESIS, RoleSpec("Writer_FR", "writer", False)),
        ("  ", NodeType.MANAGE, RoleSpec("Manager_Generic", "manager", False)),
    ],
)
def test_resolve_role(name: str | None, node_type: NodeType, expected: RoleSpec) -> None:
    assert resolve_role(name, node_type) == expected


def test_every_family_has_a_system_prompt_in_every_language() -> None:
    for language in prompts.LANGUAGES:
        for family in prompts.EXECUTOR_FAMILIES:
            text = prompts.render(language, f"executor_system_{family}", role="X_Role")
            assert "X_Role" in text


def test_template_version_is_stable_hex() -> None:
    assert prompts._template_version() == prompts.TEMPLATE_VERSION
    assert len(prompts.TEMPLATE_VERSION) == 16
    int(prompts.TEMPLATE_VERSION, 16)


def test_unknown_language_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="de"):
        prompts.render("de", "empty")


# --- manager -----------------------------------------------------------------------

MANAGE = PlanNode("m", "Coordination", type=NodeType.MANAGE)
DEPENDENTS = [
    PlanNode("w", "Rédaction", deps=("m",)),
    PlanNode("r", "Relecture", deps=("m", "w")),
]


def client_with(provider: Any, **settings: Any) -> LLMClient:
    config = Settings(**settings)
    registry = ProviderRegistry(config)
    registry.register("offline", provider)
    return LLMClient(config, registry)


def answer(assignments: list[dict[str, Any]], checks: list[str] | None = None) -> str:
    return json.dumps(
        {
            "assignments": assignments,
            "quality_checks": ["cohérence"] if checks is None else checks,
            "integration_notes": "ok",
        }
    )


async def test_manager_assigns_every_dependent() -> None:
    provider = ScriptedProvider(
        [
            answer(
                [
                    {"node_id": "w", "agent": "writer_fr", "tooling": ["markdown"]},
                    {"node_id": "r", "agent": "Reviewer_Strict", "tooling": []},
                ]
            )
        ]
    )
    result = await assign(
        client_with(provider), goal=GOAL, manage_node=MANAGE, dependents=DEPENDENTS, language="fr"
    )
    assert result.assignments == {"w": "Writer_FR", "r": "Reviewer_Strict"}
    assert result.answer["quality_checks"] == ["cohérence"]
    assert result.attempts == 1
    request = provider.requests[0]
    assert request.role == "Manager_Generic"
    assert request.wants_json
    assert "w: Rédaction" in request.messages[1].content


async def test_manager_repairs_unknown_ids_missing_nodes_and_no_quality_check() -> None:
    provider = ScriptedProvider(
        [
            answer([{"node_id": "zz", "agent": "Writer_FR"}, {"node_id": "w", "agent": "X"}]),
            answer([{"node_id": "w", "agent": "Writer_FR"}, {"node_id": "r", "agent": "R"}], []),
            answer([{"node_id": "w", "agent": "Writer_FR"}, {"node_id": "r", "agent": "Reviewer"}]),
        ]
    )
    result = await assign(
        client_with(provider), goal=GOAL, manage_node=MANAGE, dependents=DEPENDENTS, language="en"
    )
    assert result.attempts == 3
    assert result.assignments == {"w": "Writer_FR", "r": "Reviewer"}
    first_repair = provider.requests[1].messages[-1].content
    assert "unknown node id 'zz'" in first_repair
    assert "missing assignments for node(s): r" in first_repair
    assert "The expected ids are exactly: w, r" in first_repair
    second_repair = provider.requests[2].messages[-1].content
    assert "at least one quality check" in second_repair


async def test_manager_gives_up_with_plan_validation_error() -> None:
    provider = ScriptedProvider(["not json", answer([])])
    with pytest.raises(PlanValidationError) as caught:
        await assign(
            client_with(provider, supervisor_max_attempts=2),
            goal=GOAL,
            manage_node=MANAGE,
            dependents=DEPENDENTS,
            language="fr",
        )
    assert caught.value.exit_code == 4  # the model failed, not the input
    assert "'m'" in caught.value.message
    problems = "\n".join(caught.value.problems)
    assert "attempt 1" in problems and "no valid JSON object" in problems
    assert "attempt 2" in problems and "missing assignments for node(s): w, r" in problems


async def test_manager_with_offline_provider() -> None:
    result = await assign(
        client_with(OfflineProvider()),
        goal=GOAL,
        manage_node=MANAGE,
        dependents=DEPENDENTS,
        language="fr",
    )
    assert result.assignments == {"w": "Writer_FR", "r": "Reviewer"}


# --- executor ----------------------------------------------------------------------


def test_executor_prompt_contains_goal_node_and_bounded_inputs() -> None:
    node = PlanNode(
        "n4",
        "Rédaction du chapitre 2",
        acceptance=("Dix pages",),
        deps=("n1", "n2"),
        notes=("Ton neutre",),
        risks=("Données anciennes",),
        assumptions=("Public large",),
    )
    long_text = "A" * 7000
    system, user = build_messages(
        goal=GOAL,
        node=node,
        role=resolve_role("Research_Legal", node.type),
        dependency_outputs=[
            DependencyOutput("n1", "Sources", "contenu court"),
            DependencyOutput("n2", "Analyse", long_text),
        ],
        language="fr",
    )
    assert system.role == "system" and "Research_Legal" in system.content
    assert "chargé de recherche" in system.content  # researcher family
    text = user.content
    for expected in (
        "Rapport 80p",
        "Un rapport sur l'énergie",
        "80 pages",
        "Rédaction du chapitre 2",
        "Dix pages",
        "Ton neutre",
        "Données anciennes",
        "Public large",
        "contenu court",
        "## Entrée n2 : Analyse",
        "[… 1000 caractères tronqués]",
    ):
        assert expected in text, expected
    assert "A" * 6000 in text and "A" * 6001 not in text


def test_synthesis_prompt_asks_for_the_deliverable() -> None:
    node = PlanNode("s", "Final", type=NodeType.SYNTHESIS, deps=("a",))
    _, user = build_messages(
        goal=GOAL,
        node=node,
        role=resolve_role(None, node.type),
        dependency_outputs=[DependencyOutput("a", "Draft", "x" * 20)],
        language="en",
        max_chars_per_dependency=5,
    )
    assert "final deliverable" in user.content
    assert "[… truncated 15 characters]" in user.content
    assert "(none)" in user.content  # empty notes/risks/assumptions


async def test_execute_calls_the_executor_role() -> None:
    provider = ScriptedProvider(["# ok"])
    node = PlanNode("n1", "T", suggested_agent_role="Writer_Tech")
    call = await execute(
        client_with(provider),
        goal=GOAL,
        node=node,
        role=resolve_role(node.suggested_agent_role),
        dependency_outputs=[],
        language="fr",
        llm_layers=(None, LLMSpec(model="m-node")),
    )
    assert call.response.text == "# ok"
    assert provider.requests[0].role == "Writer_Tech"
    assert provider.requests[0].model == "m-node"
    assert not provider.requests[0].wants_json


# --- LLM resolution and the client ---------------------------------------------------


def test_resolve_llm_defaults() -> None:
    resolved = resolve_llm(Settings(), "executor")
    assert resolved.provider == "offline"
    assert resolved.model is None
    assert (resolved.temperature, resolved.max_tokens, resolved.timeout_s) == (0.2, 2048, 120.0)
    assert set(resolved.sources.values()) == {"default"}


def test_resolve_llm_precedence() -> None:
    settings = settings_from_values(
        {
            "LLM_DEFAULT_PROVIDER": "openai",
            "LLM_DEFAULT_MODEL": "gpt-4o-mini",
            "LLM_DEFAULT_TEMPERATURE": "0.5",
            "EXECUTOR_MODEL": "gpt-4o",
            "EXECUTOR_MAX_TOKENS": "900",
            "EXECUTOR_TIMEOUT_S": "30",
        }
    )
    role_only = resolve_llm(settings, "executor")
    assert (role_only.provider, role_only.model, role_only.max_tokens) == ("openai", "gpt-4o", 900)
    assert role_only.sources == {
        "provider": "default",
        "model": "role",
        "temperature": "default",
        "max_tokens": "role",
        "timeout_s": "role",
    }
    cli = LLMSpec(model="cli-model")
    node = LLMSpec(model="node-model", temperature=0.9)
    request = LLMSpec(model="req-model", temperature=0.1, max_tokens=100, timeout_s=5)
    resolved = resolve_llm(settings, "executor", cli, node, request)
    assert resolved.model == "cli-model"
    assert resolved.temperature == 0.9
    assert resolved.max_tokens == 100
    assert resolved.timeout_s == 5
    assert resolved.sources == {
        "provider": "default",
        "model": "cli",
        "temperature": "node",
        "max_tokens": "request",
        "timeout_s": "request",
    }
    # an absent layer keeps the others' labels
    skipped = resolve_llm(settings, "executor", None, node)
    assert skipped.sources["model"] == "node"
    # other role kinds do not see EXECUTOR_*
    assert resolve_llm(settings, "supervisor").model == "gpt-4o-mini"


def test_model_of_another_provider_is_not_inherited() -> None:
    settings = settings_from_values(
        {"LLM_DEFAULT_PROVIDER": "openai", "LLM_DEFAULT_MODEL": "gpt-4o-mini"}
    )
    resolved = resolve_llm(settings, "executor", None, LLMSpec(provider="ollama"))
    assert resolved.provider == "ollama"
    assert resolved.model is None
    same = resolve_llm(settings, "executor", None, LLMSpec(provider="openai"))
    assert same.model == "gpt-4o-mini"


def test_resolve_llm_role_settings() -> None:
    settings = Settings(roles={"manager": RoleSettings(provider="ollama", model="llama3.1:8b")})
    resolved = resolve_llm(settings, "manager")
    assert (resolved.provider, resolved.model) == ("ollama", "llama3.1:8b")
    assert resolved.sources["provider"] == "role"
    with pytest.raises(ConfigError):
        resolve_llm(settings, "janitor")


async def test_client_call_result_fields() -> None:
    settings = Settings()
    client = LLMClient(settings, ProviderRegistry(settings))
    call = await client.call("executor", "Writer_FR", [Message("user", "Bonjour")])
    assert call.provider == "offline"
    assert call.model == "offline"
    assert call.attempts == 1
    assert call.fallback_from is None
    assert (call.cost_usd, call.price_source) == (0.0, "local")
    assert call.started_at.tzinfo is not None
    assert call.ended_at >= call.started_at
    assert call.request.role == "Writer_FR"
    assert call.response.output_tokens > 0


async def test_registry_never_substitutes_offline() -> None:
    settings = settings_from_values({"EXECUTOR_PROVIDER": "ollama"})
    registry = ProviderRegistry(settings, factories={"offline": lambda s: OfflineProvider()})
    client = LLMClient(settings, registry)
    with pytest.raises(ConfigError, match="'ollama' is not available"):
        await client.call("executor", "Writer_FR", [Message("user", "Bonjour")])
    with pytest.raises(ConfigError, match="unknown LLM provider"):
        registry.get("nope")


async def test_registry_builds_lazily_caches_and_closes() -> None:
    settings = Settings(offline_latency_ms=7)
    registry = ProviderRegistry(settings)
    first = registry.get("offline")
    assert isinstance(first, OfflineProvider) and first.latency_ms == 7
    assert registry.get("offline") is first
    fake = ScriptedProvider(name="fake")
    registry.register("ollama", fake)
    assert registry.get("ollama") is fake
    await registry.aclose()
    assert fake.closed
