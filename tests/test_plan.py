"""Plan file format and validation (DESIGN §5).

Each rejection case checks the message names the node at fault: a user fixing a plan by
hand must be told where to look, not just that something is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crew.domain.errors import InvalidInputError, PlanValidationError
from crew.domain.plan import (
    NODE_KEY_PATTERN,
    LLMSpec,
    NodeType,
    Plan,
    PlanNode,
    find_cycle,
    is_valid_key,
    parse_plan,
    topological_order,
)

DATA = Path(__file__).parent / "data"


def node(key: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"id": key, "title": f"Title {key}", "deps": list(deps), **extra}


def plan_of(*nodes: Any, title: str = "T") -> dict[str, Any]:
    return {"title": title, "plan": list(nodes)}


def rejection(data: object) -> PlanValidationError:
    with pytest.raises(PlanValidationError) as info:
        parse_plan(data)
    return info.value


# --- accepted plans ---------------------------------------------------------------------


def test_minimal_plan_only_needs_id_and_title() -> None:
    plan = parse_plan({"title": "Rapport", "plan": [{"id": "n1", "title": "Collecte"}]})
    (only,) = plan.nodes
    assert plan.title == "Rapport"
    assert only == PlanNode(id="n1", title="Collecte")
    assert only.type is NodeType.TASK
    assert only.deps == ()
    assert only.llm is None


def test_full_node_fields_are_read() -> None:
    plan = parse_plan(
        plan_of(
            node("n1"),
            node(
                "n2",
                "n1",
                type="manage",
                suggested_agent_role="Manager_Generic",
                acceptance=["a1", "a2"],
                risks=["r"],
                assumptions=["h"],
                notes=["x"],
                llm={"provider": "ollama", "model": "llama3.1:8b", "temperature": 0.5},
            ),
        )
    )
    n2 = plan.node("n2")
    assert n2.type is NodeType.MANAGE
    assert n2.suggested_agent_role == "Manager_Generic"
    assert n2.acceptance == ("a1", "a2")
    assert n2.risks == ("r",)
    assert n2.assumptions == ("h",)
    assert n2.notes == ("x",)
    assert n2.deps == ("n1",)
    assert n2.llm == LLMSpec(provider="ollama", model="llama3.1:8b", temperature=0.5)


def test_execute_is_read_as_task() -> None:
    plan = parse_plan(plan_of(node("n1", type="execute"), node("n2", type="synthesis")))
    assert plan.node("n1").type is NodeType.TASK
    assert plan.node("n2").type is NodeType.SYNTHESIS


def test_single_string_list_fields_are_accepted() -> None:
    plan = parse_plan(
        plan_of(
            node("a"),
            {
                "id": "b",
                "title": "B",
                "deps": "a",
                "acceptance": "one criterion",
                "risks": "one risk",
                "assumptions": "one assumption",
                "notes": "one note",
            },
        )
    )
    b = plan.node("b")
    assert b.deps == ("a",)
    assert b.acceptance == ("one criterion",)
    assert b.risks == ("one risk",)
    assert b.assumptions == ("one assumption",)
    assert b.notes == ("one note",)


def test_plan_level_acceptance_as_single_string() -> None:
    plan = parse_plan({"title": "T", "acceptance": "done", "plan": [node("a")]})
    assert plan.acceptance == ("done",)


def test_nodes_may_be_listed_in_any_order() -> None:
    # c depends on b depends on a, listed backwards: the prototype aborted on this.
    plan = parse_plan(plan_of(node("c", "b"), node("b", "a"), node("a")))
    assert topological_order(plan.nodes) == ["a", "b", "c"]


def test_topological_order_breaks_ties_by_file_order() -> None:
    plan = parse_plan(plan_of(node("z"), node("y"), node("m", "z", "y"), node("x"), node("k", "x")))
    # Among ready nodes the one listed first wins: m (third in the file) becomes ready
    # once z and y are done and goes before x (fourth), which was ready all along.
    assert topological_order(plan.nodes) == ["z", "y", "m", "x", "k"]


def test_topological_order_with_diamond() -> None:
    plan = parse_plan(plan_of(node("d", "b", "c"), node("c", "a"), node("b", "a"), node("a")))
    assert topological_order(plan.nodes) == ["a", "c", "b", "d"]


def test_integer_ids_are_read_as_strings() -> None:
    plan = parse_plan(plan_of({"id": 1, "title": "one"}, {"id": 2, "title": "two", "deps": [1]}))
    assert [n.id for n in plan.nodes] == ["1", "2"]
    assert plan.node("2").deps == ("1",)


def test_provider_name_is_case_insensitive() -> None:
    plan = parse_plan(plan_of(node("a", llm={"provider": "OpenAI", "model": "gpt-4o-mini"})))
    assert plan.node("a").llm == LLMSpec(provider="openai", model="gpt-4o-mini")


def test_to_dict_round_trip() -> None:
    original = parse_plan(
        {
            "title": "Rapport",
            "description": "Un rapport",
            "acceptance": ["80 pages"],
            "plan": [
                node("a", suggested_agent_role="Researcher", acceptance=["sources"]),
                node("b", "a", type="manage", risks=["r"], notes=["n"], assumptions=["h"]),
                node("c", "a", "b", type="synthesis", llm={"provider": "offline", "model": "m"}),
            ],
        }
    )
    data = original.to_dict()
    # The dict is the plan file format: it survives JSON and parses back to the same plan.
    again = parse_plan(json.loads(json.dumps(data)))
    assert again == original
    assert again.to_dict() == data
    assert data["plan"][2]["llm"] == {"provider": "offline", "model": "m"}
    assert data["plan"][1]["type"] == "manage"


def test_dependents_and_sinks() -> None:
    plan = parse_plan(plan_of(node("a"), node("b", "a"), node("c", "a"), node("d", "b")))
    assert plan.dependents() == {"a": ["b", "c"], "b": ["d"], "c": [], "d": []}
    assert plan.sinks() == ["c", "d"]


def test_example_plan_file_parses() -> None:
    data = json.loads((DATA / "task_rapport_80p.json").read_text(encoding="utf-8"))
    plan = parse_plan(data)
    assert plan.title == "Rapport 80p"
    assert topological_order(plan.nodes) == ["n1", "n2", "n3"]
    assert plan.node("n3").title == "Rédaction finale (80p)"


def test_default_title_fills_a_missing_title() -> None:
    plan = parse_plan({"plan": [node("a")]}, default_title="From the CLI")
    assert plan.title == "From the CLI"


# --- rejections -------------------------------------------------------------------------


def test_rejection_is_an_invalid_input_error_with_exit_2_and_http_400() -> None:
    error = rejection(plan_of(node("a", "missing")))
    assert isinstance(error, InvalidInputError)
    assert error.exit_code == 2
    assert error.http_status == 400


def test_duplicate_ids() -> None:
    error = rejection(plan_of(node("a"), node("b"), node("a")))
    assert any("'a'" in p and "duplicate" in p for p in error.problems)


def test_unknown_dependency() -> None:
    error = rejection(plan_of(node("a"), node("b", "ghost")))
    assert any("'b'" in p and "'ghost'" in p and "unknown" in p for p in error.problems)


def test_two_cycle_is_shown() -> None:
    error = rejection(plan_of(node("a", "b"), node("b", "a")))
    text = str(error)
    assert "a -> b -> a" in text
    assert any("'a'" in p and "cycle" in p for p in error.problems)


def test_three_cycle_is_shown() -> None:
    error = rejection(plan_of(node("start"), node("x", "z"), node("y", "x"), node("z", "y")))
    (problem,) = error.problems
    assert "'x'" in problem
    assert "x -> z -> y -> x" in problem


def test_self_dependency_is_a_cycle() -> None:
    error = rejection(plan_of(node("a"), node("b", "b")))
    (problem,) = error.problems
    assert "'b'" in problem
    assert "b -> b" in problem


def test_cycle_downstream_nodes_are_not_blamed() -> None:
    # d depends on the cycle but is not part of it: the message shows the cycle itself.
    error = rejection(plan_of(node("d", "a"), node("a", "b"), node("b", "a")))
    assert "a -> b -> a" in str(error)
    assert "d ->" not in str(error)


@pytest.mark.parametrize(
    "key",
    [".", "..", "a/b", "../etc", "-leading-dash", "a b", "x" * 65, "a\\b", "é"],
)
def test_bad_keys(key: str) -> None:
    error = rejection(plan_of(node(key)))
    assert any(repr(key) in p and "invalid id" in p for p in error.problems)


def test_longest_valid_key_is_accepted() -> None:
    key = "k" * 64
    assert parse_plan(plan_of(node(key))).nodes[0].id == key


def test_empty_key_names_the_node_by_position() -> None:
    error = rejection(plan_of(node("a"), {"id": "", "title": "no id"}))
    assert any("#2" in p and "'id'" in p for p in error.problems)


def test_missing_key_names_the_node_by_position() -> None:
    error = rejection(plan_of({"title": "no id"}))
    assert any("#1" in p and "'id'" in p for p in error.problems)


def test_missing_node_title() -> None:
    error = rejection(plan_of({"id": "a"}))
    assert any("'a'" in p and "'title'" in p for p in error.problems)


def test_empty_plan() -> None:
    error = rejection(plan_of())
    assert any("empty" in p for p in error.problems)


@pytest.mark.parametrize("bad", ["just a string", 3, None, ["a", "b"]])
def test_non_object_nodes(bad: object) -> None:
    error = rejection(plan_of(node("a"), bad))
    assert any("#2" in p and "object" in p for p in error.problems)


@pytest.mark.parametrize("bad", [[{"id": "a", "title": "A"}], "plan", 42, None])
def test_non_object_plan(bad: object) -> None:
    error = rejection(bad)
    assert "object" in str(error)


def test_missing_plan_list() -> None:
    error = rejection({"title": "T"})
    assert any("'plan'" in p for p in error.problems)


def test_plan_that_is_not_a_list() -> None:
    error = rejection({"title": "T", "plan": {"id": "a", "title": "A"}})
    assert any("'plan' must be a list" in p for p in error.problems)


@pytest.mark.parametrize("title", [None, "", "   ", 7])
def test_missing_title(title: object) -> None:
    data: dict[str, Any] = {"plan": [node("a")]}
    if title is not None:
        data["title"] = title
    error = rejection(data)
    assert any("'title'" in p for p in error.problems)


def test_unknown_llm_provider() -> None:
    error = rejection(plan_of(node("a", llm={"provider": "acme"})))
    (problem,) = error.problems
    assert "'a'" in problem
    assert "'acme'" in problem
    assert "offline" in problem and "ollama" in problem and "openai" in problem


def test_known_providers_can_be_narrowed() -> None:
    with pytest.raises(PlanValidationError) as info:
        parse_plan(plan_of(node("a", llm={"provider": "ollama"})), known_providers=["offline"])
    assert "'ollama'" in str(info.value)


def test_unknown_type() -> None:
    error = rejection(plan_of(node("a", type="dance")))
    (problem,) = error.problems
    assert "'a'" in problem
    assert "'dance'" in problem
    assert "task" in problem and "manage" in problem and "synthesis" in problem


@pytest.mark.parametrize(
    ("llm", "fragment"),
    [
        ("ollama", "'llm' must be an object"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"timeout_s": "fast"}, "timeout_s"),
        ({"model": ""}, "model"),
    ],
)
def test_bad_llm_fields(llm: object, fragment: str) -> None:
    error = rejection(plan_of(node("a", llm=llm)))
    assert any("'a'" in p and fragment in p for p in error.problems)


@pytest.mark.parametrize("field", ["acceptance", "risks", "assumptions", "notes"])
def test_list_fields_must_hold_strings(field: str) -> None:
    error = rejection(plan_of(node("a", **{field: [1, 2]})))
    assert any("'a'" in p and field in p for p in error.problems)


def test_bad_deps_type() -> None:
    error = rejection(plan_of(node("a"), {"id": "b", "title": "B", "deps": [True]}))
    assert any("'b'" in p and "'deps'" in p for p in error.problems)


def test_repeated_dependency() -> None:
    error = rejection(plan_of(node("a"), node("b", "a", "a")))
    assert any("'b'" in p and "twice" in p for p in error.problems)


def test_every_problem_is_reported_at_once() -> None:
    error = rejection(
        plan_of(node("a"), node("a"), node("b", "ghost"), node("c", "d"), node("d", "c"))
    )
    text = str(error)
    assert "duplicate" in text
    assert "'ghost'" in text
    assert "c -> d -> c" in text


# --- graph helpers and keys -------------------------------------------------------------


def test_topological_order_rejects_unknown_dependency_of_hand_built_nodes() -> None:
    nodes = [PlanNode(id="a", title="A", deps=("zz",))]
    with pytest.raises(PlanValidationError) as info:
        topological_order(nodes)
    assert "'a'" in str(info.value) and "'zz'" in str(info.value)


def test_topological_order_rejects_cycle_of_hand_built_nodes() -> None:
    nodes = [PlanNode(id="a", title="A", deps=("b",)), PlanNode(id="b", title="B", deps=("a",))]
    with pytest.raises(PlanValidationError, match="a -> b -> a"):
        topological_order(nodes)


def test_find_cycle_on_acyclic_graph_is_empty() -> None:
    assert find_cycle([PlanNode(id="a", title="A"), PlanNode(id="b", title="B", deps=("a",))]) == []


@pytest.mark.parametrize("key", ["n1", "A", "0", "a.b", "a_b-c", "x" * 64])
def test_valid_keys(key: str) -> None:
    assert is_valid_key(key)
    assert NODE_KEY_PATTERN.fullmatch(key)


@pytest.mark.parametrize("key", ["", ".", "..", "a/b", "_a", "x" * 65, "a\n"])
def test_invalid_keys(key: str) -> None:
    assert not is_valid_key(key)


def test_plan_node_lookup() -> None:
    plan = Plan(title="T", nodes=(PlanNode(id="a", title="A"),))
    assert plan.node("a").title == "A"
    with pytest.raises(KeyError):
        plan.node("b")
