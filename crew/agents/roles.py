"""Agent roles: the built-in ones and deterministic recruiting of any other name.

A plan or a manager may name any role (`Writer_Tech`, `Research_Legal`); rather than
reject it, crew "recruits" it: the role keeps its name (it appears in sidecars and
events) and gets the prompt family its prefix implies. The same name always yields the
same spec, so resume checksums stay stable.
"""

from __future__ import annotations

from dataclasses import dataclass

from crew.domain.plan import NodeType

BUILTIN_ROLES: dict[str, str] = {
    "Supervisor": "manager",
    "Manager_Generic": "manager",
    "Writer_FR": "writer",
    "Researcher": "researcher",
    "Reviewer": "reviewer",
}
"""Built-in role name -> prompt family."""

_PREFIX_FAMILIES: tuple[tuple[str, str], ...] = (
    ("writer", "writer"),
    ("research", "researcher"),
    ("review", "reviewer"),
    ("manager", "manager"),
)
_BY_LOWER = {name.lower(): name for name in BUILTIN_ROLES}

DEFAULT_TASK_ROLE = "Writer_FR"
DEFAULT_MANAGE_ROLE = "Manager_Generic"


@dataclass(frozen=True, slots=True)
class RoleSpec:
    name: str
    family: str
    """Prompt family: writer, researcher, reviewer, manager or generic."""
    recruited: bool


def resolve_role(name: str | None, node_type: NodeType | str = NodeType.TASK) -> RoleSpec:
    """The role for `name`; with no name, the default for the node type.

    Built-in names match case-insensitively and come back in their canonical spelling;
    any other name is recruited by prefix (writer…, research…, review…, manager…, else
    generic), case-insensitive.
    """
    cleaned = (name or "").strip()
    if not cleaned:
        manage = NodeType(node_type) is NodeType.MANAGE
        cleaned = DEFAULT_MANAGE_ROLE if manage else DEFAULT_TASK_ROLE
    builtin = _BY_LOWER.get(cleaned.lower())
    if builtin is not None:
        return RoleSpec(name=builtin, family=BUILTIN_ROLES[builtin], recruited=False)
    lowered = cleaned.lower()
    for prefix, family in _PREFIX_FAMILIES:
        if lowered.startswith(prefix):
            return RoleSpec(name=cleaned, family=family, recruited=True)
    return RoleSpec(name=cleaned, family="generic", recruited=True)
