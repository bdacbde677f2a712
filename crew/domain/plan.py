"""The plan: a DAG of nodes, its file format (DESIGN §5) and its validation.

Parsing collects every problem it finds before failing, so a user fixing a plan by hand
sees all of them at once; each message names the node it is about.
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from crew.domain.errors import PlanValidationError
from crew.domain.limits import (
    MAX_DESCRIPTION,
    MAX_INTEGER,
    MAX_ITEM,
    MAX_ITEMS,
    MAX_MODEL,
    MAX_NODE_TITLE,
    MAX_NODES,
    MAX_ROLE,
    MAX_TITLE,
    check_text,
    quote_cut,
)
from crew.domain.providers import PROVIDER_NAMES

NODE_KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Node keys (and user-chosen run ids) are folder names: this charset cannot escape one."""


def is_valid_key(value: str) -> bool:
    return bool(NODE_KEY_PATTERN.fullmatch(value))


class NodeType(StrEnum):
    TASK = "task"
    MANAGE = "manage"
    SYNTHESIS = "synthesis"


_TYPE_ALIASES = {"execute": NodeType.TASK}
MAX_TIMEOUT_S = 86_400.0
"""A node's llm `timeout_s`: a day; larger values overflow some clients' timers."""


@dataclass(frozen=True, slots=True)
class LLMSpec:
    """Per-node LLM overrides; every field optional."""

    provider: str | None = None
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    timeout_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in _llm_items(self) if v is not None}


def _llm_items(spec: LLMSpec) -> Iterable[tuple[str, Any]]:
    yield "provider", spec.provider
    yield "model", spec.model
    yield "temperature", spec.temperature
    yield "max_tokens", spec.max_tokens
    yield "timeout_s", spec.timeout_s


@dataclass(frozen=True, slots=True)
class PlanNode:
    id: str
    title: str
    type: NodeType = NodeType.TASK
    suggested_agent_role: str | None = None
    acceptance: tuple[str, ...] = ()
    deps: tuple[str, ...] = ()
    risks: tuple[str, ...] = ()
    assumptions: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    llm: LLMSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        """The node in the plan file format; also the basis of the resume checksum."""
        data: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "type": self.type.value,
            "suggested_agent_role": self.suggested_agent_role,
            "acceptance": list(self.acceptance),
            "deps": list(self.deps),
            "risks": list(self.risks),
            "assumptions": list(self.assumptions),
            "notes": list(self.notes),
        }
        if self.llm is not None:
            data["llm"] = self.llm.to_dict()
        return data


@dataclass(frozen=True, slots=True)
class Plan:
    title: str
    nodes: tuple[PlanNode, ...]
    description: str | None = None
    acceptance: tuple[str, ...] = ()
    _by_id: dict[str, PlanNode] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {n.id: n for n in self.nodes})

    def node(self, key: str) -> PlanNode:
        return self._by_id[key]

    def dependents(self) -> dict[str, list[str]]:
        """Map each node key to the keys of the nodes that depend on it directly."""
        result: dict[str, list[str]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for dep in n.deps:
                result[dep].append(n.id)
        return result

    def sinks(self) -> list[str]:
        """Nodes nothing depends on: their artifacts are the run's deliverables."""
        return [key for key, children in self.dependents().items() if not children]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"title": self.title}
        if self.description:
            data["description"] = self.description
        if self.acceptance:
            data["acceptance"] = list(self.acceptance)
        data["plan"] = [n.to_dict() for n in self.nodes]
        return data


def topological_order(nodes: Sequence[PlanNode]) -> list[str]:
    """Keys in dependency order; among ready nodes, file order wins.

    Raises PlanValidationError naming the node when a dependency is unknown, and
    showing one cycle when the graph is not a DAG.
    """
    index = {n.id: i for i, n in enumerate(nodes)}
    unknown = [
        f"node {quote_cut(n.id)}: unknown dependency {quote_cut(d)}"
        for n in nodes
        for d in n.deps
        if d not in index
    ]
    if unknown:
        # Callers outside parse_plan (the engine, resume) may hand us hand-built nodes;
        # a clear error beats the KeyError the graph walk below would raise.
        raise PlanValidationError("invalid plan", problems=unknown)
    remaining = {n.id: len(set(n.deps)) for n in nodes}
    dependents: dict[str, list[str]] = {n.id: [] for n in nodes}
    for n in nodes:
        for dep in set(n.deps):
            dependents[dep].append(n.id)
    ready = [index[key] for key, count in remaining.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        key = nodes[heapq.heappop(ready)].id
        order.append(key)
        for child in dependents[key]:
            remaining[child] -= 1
            if remaining[child] == 0:
                heapq.heappush(ready, index[child])
    if len(order) != len(nodes):
        placed = set(order)
        cycle = find_cycle([n for n in nodes if n.id not in placed])
        raise PlanValidationError(
            "the plan has a dependency cycle",
            problems=[
                f"node {quote_cut(cycle[0])} is part of a dependency cycle: {show_cycle(cycle)}"
            ],
        )
    return order


def show_cycle(cycle: Sequence[str], most: int = 20) -> str:
    """`a -> b -> a`; a long cycle shows its first keys, a count, and its start again."""
    if len(cycle) <= most + 1:
        return " -> ".join(cycle)
    hidden = len(cycle) - 1 - most
    return " -> ".join([*cycle[:most], f"… ({hidden:,} more)", cycle[-1]])


def find_cycle(nodes: Sequence[PlanNode]) -> list[str]:
    """One cycle among `nodes`, as a path that returns to its start (a, b, a); [] if none.

    Dependencies on keys outside `nodes` are ignored, so this can be run on the part
    of a graph a topological sort could not place.
    """
    deps = {n.id: [d for d in n.deps if d != n.id] for n in nodes}
    for n in nodes:
        if n.id in n.deps:
            return [n.id, n.id]
    color: dict[str, int] = {}
    for start in deps:
        if color.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            key, i = stack.pop()
            if i == 0:
                color[key] = 1
                path.append(key)
            children = [d for d in deps[key] if d in deps]
            if i < len(children):
                stack.append((key, i + 1))
                child = children[i]
                if color.get(child) == 1:
                    return [*path[path.index(child) :], child]
                if not color.get(child):
                    stack.append((child, 0))
            else:
                color[key] = 2
                path.pop()
    return []


def parse_plan(
    data: object,
    *,
    known_providers: Collection[str] = PROVIDER_NAMES,
    default_title: str | None = None,
) -> Plan:
    """Build a validated Plan from decoded JSON in the plan file format.

    A node's `llm.provider` must be in `known_providers`: by default every provider crew
    knows, plugins included (crew/domain/providers.py), asked name by name so a plan on
    built-in providers never lists the installed ones. Raises PlanValidationError listing
    every problem found.
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise PlanValidationError(
            "invalid plan", problems=["the plan must be a JSON object with a 'plan' list"]
        )
    title = data.get("title", default_title)
    if not isinstance(title, str) or not title.strip():
        problems.append("the plan needs a non-empty string 'title'")
        title = ""
    elif not check_text(title, "the plan's 'title'", MAX_TITLE, problems):
        title = ""
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        problems.append("'description' must be a string")
        description = None
    elif description is not None and not check_text(
        description, "'description'", MAX_DESCRIPTION, problems
    ):
        description = None
    goal_acceptance = _string_list(data.get("acceptance"), "plan 'acceptance'", problems)

    raw_nodes = data.get("plan")
    if raw_nodes is None:
        raise PlanValidationError("invalid plan", problems=[*problems, "missing 'plan' list"])
    if not isinstance(raw_nodes, list):
        raise PlanValidationError("invalid plan", problems=[*problems, "'plan' must be a list"])
    if not raw_nodes:
        raise PlanValidationError(
            "invalid plan", problems=[*problems, "the plan is empty: it needs at least one node"]
        )
    if len(raw_nodes) > MAX_NODES:
        raise PlanValidationError(
            "invalid plan",
            problems=[*problems, f"the plan has {len(raw_nodes):,} nodes (at most {MAX_NODES:,})"],
        )

    nodes: list[PlanNode] = []
    seen: set[str] = set()
    for position, raw in enumerate(raw_nodes, start=1):
        node = _parse_node(raw, position, known_providers, problems)
        if node is None:
            continue
        if node.id in seen:
            problems.append(f"node {quote_cut(node.id)}: duplicate id (ids must be unique)")
            continue
        seen.add(node.id)
        nodes.append(node)

    for node in nodes:
        for dep in node.deps:
            if dep not in seen:
                problems.append(f"node {quote_cut(node.id)}: unknown dependency {quote_cut(dep)}")

    # Look for a cycle even when other problems exist, ignoring unknown deps, so that
    # one report lists everything.
    known = [
        n if all(d in seen for d in n.deps) else _with_deps(n, [d for d in n.deps if d in seen])
        for n in nodes
    ]
    try:
        topological_order(known)
    except PlanValidationError as cycle:
        problems.extend(cycle.problems)
    if problems:
        raise PlanValidationError("invalid plan", problems=problems)
    return Plan(
        title=title.strip(),
        nodes=tuple(nodes),
        description=description,
        acceptance=tuple(goal_acceptance),
    )


def _with_deps(node: PlanNode, deps: list[str]) -> PlanNode:
    return PlanNode(id=node.id, title=node.title, deps=tuple(deps))


def _parse_node(
    raw: object, position: int, providers: Collection[str], problems: list[str]
) -> PlanNode | None:
    if not isinstance(raw, Mapping):
        problems.append(f"node #{position}: must be a JSON object, got {type(raw).__name__}")
        return None
    key = raw.get("id")
    if isinstance(key, int) and not isinstance(key, bool):
        key = str(key)
    if not isinstance(key, str) or not key:
        what = "empty 'id'" if key == "" else "missing string 'id'"
        problems.append(f"node #{position}: {what}")
        return None
    name = f"node {quote_cut(key)}"
    before = len(problems)
    if not is_valid_key(key):
        problems.append(
            f"{name}: invalid id (must match {NODE_KEY_PATTERN.pattern}: letters, digits, "
            "'.', '_', '-', starting with a letter or digit, at most 64 characters)"
        )
    title = raw.get("title")
    if not isinstance(title, str) or not title.strip():
        problems.append(f"{name}: missing non-empty string 'title'")
        title = ""
    elif not check_text(title, f"{name}: 'title'", MAX_NODE_TITLE, problems):
        title = ""
    node_type = _parse_type(raw.get("type"), name, problems)
    role = raw.get("suggested_agent_role")
    if role is not None and (not isinstance(role, str) or not role.strip()):
        problems.append(f"{name}: 'suggested_agent_role' must be a non-empty string")
        role = None
    elif role is not None and not check_text(
        role, f"{name}: 'suggested_agent_role'", MAX_ROLE, problems
    ):
        role = None
    # Integer ids are read as strings (as for 'id'); booleans are not ids.
    raw_deps = [
        str(d) if isinstance(d, int) and not isinstance(d, bool) else d
        for d in _as_list(raw.get("deps"))
    ]
    deps = [d for d in raw_deps if isinstance(d, str)]
    if len(deps) != len(raw_deps):
        problems.append(f"{name}: 'deps' must be a list of node ids")
        deps = []
    if len(set(deps)) != len(deps):
        problems.append(f"{name}: 'deps' lists the same node twice")
    llm = _parse_llm(raw.get("llm"), name, providers, problems)
    node = PlanNode(
        id=key,
        title=title.strip(),
        type=node_type,
        suggested_agent_role=role.strip() if isinstance(role, str) else None,
        acceptance=tuple(_string_list(raw.get("acceptance"), f"{name} 'acceptance'", problems)),
        deps=tuple(deps),
        risks=tuple(_string_list(raw.get("risks"), f"{name} 'risks'", problems)),
        assumptions=tuple(_string_list(raw.get("assumptions"), f"{name} 'assumptions'", problems)),
        notes=tuple(_string_list(raw.get("notes"), f"{name} 'notes'", problems)),
        llm=llm,
    )
    return node if len(problems) == before or is_valid_key(key) else None


def _parse_type(value: object, name: str, problems: list[str]) -> NodeType:
    if value is None:
        return NodeType.TASK
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TYPE_ALIASES:
            return _TYPE_ALIASES[lowered]
        try:
            return NodeType(lowered)
        except ValueError:
            pass
    allowed = ", ".join([t.value for t in NodeType] + list(_TYPE_ALIASES))
    problems.append(f"{name}: unknown type {quote_cut(value)} (accepted: {allowed})")
    return NodeType.TASK


def _parse_llm(
    value: object, name: str, providers: Collection[str], problems: list[str]
) -> LLMSpec | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.append(f"{name}: 'llm' must be an object")
        return None
    provider = value.get("provider")
    if isinstance(provider, str):
        # Settings accept provider names in any case; a plan file should too.
        provider = provider.strip().lower()
    if provider is not None and (not isinstance(provider, str) or provider not in providers):
        problems.append(
            f"{name}: unknown llm provider {quote_cut(provider)} "
            f"(accepted: {', '.join(sorted(providers))})"
        )
        provider = None
    model = value.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        problems.append(f"{name}: llm 'model' must be a non-empty string")
        model = None
    elif model is not None and not check_text(model, f"{name}: llm 'model'", MAX_MODEL, problems):
        model = None
    temperature = _number(value.get("temperature"), f"{name}: llm 'temperature'", problems, 0, 2)
    timeout = _number(
        value.get("timeout_s"), f"{name}: llm 'timeout_s'", problems, 0.001, MAX_TIMEOUT_S
    )
    max_tokens = value.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int)
        or isinstance(max_tokens, bool)
        or not 1 <= max_tokens <= MAX_INTEGER
    ):
        problems.append(f"{name}: llm 'max_tokens' must be a positive integer (at most 2^63-1)")
        max_tokens = None
    return LLMSpec(
        provider=provider,
        model=model,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout_s=timeout,
    )


def _number(
    value: object, label: str, problems: list[str], low: float, high: float | None
) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"{label} must be a number")
        return None
    if not math.isfinite(value):
        problems.append(f"{label} must be a finite number, not {value}")
        return None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        problems.append(f"{label} must be {bound}")
        return None
    return float(value)


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, str | int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return value
    return [value]


def _string_list(value: object, label: str, problems: list[str]) -> list[str]:
    """A list of strings; a single string is accepted as a one-item list (DESIGN §5)."""
    items = _as_list(value)
    if any(not isinstance(item, str) for item in items):
        problems.append(f"{label} must be a string or a list of strings")
        return []
    if len(items) > MAX_ITEMS:
        problems.append(f"{label} has {len(items):,} items (at most {MAX_ITEMS})")
        return []
    strings = [item for item in items if isinstance(item, str)]
    for index, item in enumerate(strings):
        if not check_text(item, f"{label} item {index + 1}", MAX_ITEM, problems):
            return []
    return [item for item in strings if item.strip()]
