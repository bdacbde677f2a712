"""The JSON Schemas of the answers agents ask models for (crew/llm/structured.py).

Tight on purpose. A server that enforces a schema by grammar makes the model write what
the schema allows, nothing else, and a small model never chooses to stop: every string
runs to its longest and every list to its most items. So every string and list here is
bounded, and the shapes rule out by construction what the parser would reject:

- plan node ids are positional (`n1`, `n2`, …) and a node's `deps` may only name the
  nodes before it, so any answer the grammar allows is a DAG with unique ids;
- text fields exclude control characters, quotes and backslashes (the parser refuses
  control characters; a random escape sequence would produce one) and cannot start
  with a space;
- a manager's assignments are one per node it manages, in order, with those ids.

The agents still validate every answer: a server that does not enforce the schema is
only asked to follow it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_PLAN_NODES = 8
"""Most nodes a structured plan may have (the supervisor's prompt asks for few)."""

_TEXT_CHAR = r'[^\x00-\x1f\x7f-\x9f"\\]'
_FIRST_CHAR = r'[^\x00-\x20\x7f-\x9f"\\]'


def text(max_length: int) -> dict[str, Any]:
    """A non-blank one-line string of at most `max_length` characters."""
    return {
        "type": "string",
        "pattern": f"^{_FIRST_CHAR}{_TEXT_CHAR}{{0,{max_length - 1}}}$",
    }


ROLE = {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]{0,31}$"}
"""A role name such as `Writer_FR`."""

_DEFS: dict[str, Any] = {
    "text40": text(40),
    "text80": text(80),
    "text120": text(120),
    "text200": text(200),
    "role": ROLE,
}
"""Shared definitions: a grammar built from the schema has each of them once, not once
per field (a bounded string expands to one nested rule per character)."""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def _plan_node(position: int) -> dict[str, Any]:
    earlier = [f"n{i}" for i in range(1, position)]
    deps: dict[str, Any] = (
        {"type": "array", "items": {"type": "string", "enum": earlier}, "maxItems": len(earlier)}
        if earlier
        else {"type": "array", "const": []}
    )
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string", "const": f"n{position}"},
            "title": _ref("text80"),
            "type": {"type": "string", "enum": ["task", "manage", "synthesis"]},
            "suggested_agent_role": _ref("role"),
            "acceptance": {"type": "array", "items": _ref("text120"), "minItems": 1, "maxItems": 2},
            "deps": deps,
        },
        "required": ["id", "title", "type", "suggested_agent_role", "acceptance", "deps"],
        "additionalProperties": False,
    }


def plan_schema(max_nodes: int = MAX_PLAN_NODES) -> dict[str, Any]:
    """The supervisor's answer: a title and a plan of 1 to `max_nodes` nodes."""
    nodes = {f"node{p}": _plan_node(p) for p in range(1, max_nodes + 1)}
    variants = [
        {
            "type": "array",
            "prefixItems": [_ref(f"node{p}") for p in range(1, count + 1)],
            "items": False,
            "minItems": count,
            "maxItems": count,
        }
        for count in range(1, max_nodes + 1)
    ]
    return {
        "type": "object",
        "properties": {"title": _ref("text120"), "plan": {"anyOf": variants}},
        "required": ["title", "plan"],
        "additionalProperties": False,
        "$defs": {**_DEFS, **nodes},
    }


def manager_schema(node_ids: Sequence[str]) -> dict[str, Any]:
    """The manager's answer for the nodes `node_ids`: one assignment each, in order."""
    assignment = [
        {
            "type": "object",
            "properties": {
                "node_id": {"type": "string", "const": node_id},
                "agent": _ref("role"),
                "tooling": {"type": "array", "items": _ref("text40"), "maxItems": 2},
            },
            "required": ["node_id", "agent", "tooling"],
            "additionalProperties": False,
        }
        for node_id in node_ids
    ]
    assignments: dict[str, Any] = (
        {
            "type": "array",
            "prefixItems": assignment,
            "items": False,
            "minItems": len(assignment),
            "maxItems": len(assignment),
        }
        if assignment
        else {"type": "array", "const": []}
    )
    return {
        "type": "object",
        "properties": {
            "assignments": assignments,
            "quality_checks": {
                "type": "array",
                "items": _ref("text120"),
                "minItems": 1,
                "maxItems": 3,
            },
            "integration_notes": _ref("text200"),
        },
        "required": ["assignments", "quality_checks", "integration_notes"],
        "additionalProperties": False,
        "$defs": _DEFS,
    }
