"""Rendering plans for humans: rich table and tree, and Mermaid flowcharts.

rich is imported inside the functions that draw, so importing this module costs nothing
for commands that print JSON.
"""

from __future__ import annotations

import re
import sys
from typing import IO, Any

from crew.domain.plan import NodeType, Plan, PlanNode

_MERMAID_SHAPES = {
    NodeType.TASK: ('["', '"]'),
    NodeType.MANAGE: ('{{"', '"}}'),
    NodeType.SYNTHESIS: ('[["', '"]]'),
}
_MERMAID_ESCAPES = {
    "#": "#35;",
    '"': "#quot;",
    "[": "#91;",
    "]": "#93;",
    "{": "#123;",
    "}": "#125;",
    "(": "#40;",
    ")": "#41;",
    "<": "#lt;",
    ">": "#gt;",
    "|": "#124;",
    "`": "#96;",
}
_MERMAID_SPECIAL = re.compile("|".join(re.escape(c) for c in _MERMAID_ESCAPES))


def node_role(node: PlanNode) -> str:
    """The role shown for a node: the one it names, else the default for its type."""
    from crew.agents.roles import resolve_role

    return resolve_role(node.suggested_agent_role, node.type).name


def mermaid_escape(text: str) -> str:
    """Make `text` safe inside a quoted Mermaid label (entity codes, one line)."""
    one_line = " ".join(text.split())
    return _MERMAID_SPECIAL.sub(lambda m: _MERMAID_ESCAPES[m.group(0)], one_line)


def plan_to_mermaid(plan: Plan) -> str:
    """A `flowchart TD` of the DAG; Mermaid ids are positional so any key is safe."""
    ids = {node.id: f"N{index}" for index, node in enumerate(plan.nodes)}
    lines = ["flowchart TD"]
    for node in plan.nodes:
        left, right = _MERMAID_SHAPES[node.type]
        label = mermaid_escape(f"{node.id}: {node.title}")
        role = mermaid_escape(f"{node.type.value} · {node_role(node)}")
        lines.append(f"    {ids[node.id]}{left}{label}<br/><i>{role}</i>{right}")
    for node in plan.nodes:
        for dep in node.deps:
            lines.append(f"    {ids[dep]} --> {ids[node.id]}")
    return "\n".join(lines) + "\n"


def _console(stream: IO[str] | None, color: bool) -> Any:
    from rich.console import Console

    target = stream or sys.stdout
    tty = target.isatty()
    return Console(
        file=target,
        no_color=not color,
        highlight=False,
        width=None if tty else 120,
        force_terminal=color or None,
        color_system="auto" if color else None,
    )


def plan_table(plan: Plan) -> Any:
    from rich.table import Table

    table = Table(title=plan.title, title_justify="left", show_lines=False)
    for column in ("id", "type", "role", "deps", "title"):
        table.add_column(column, overflow="fold", no_wrap=column == "id")
    for node in plan.nodes:
        table.add_row(
            node.id, node.type.value, node_role(node), ", ".join(node.deps) or "-", node.title
        )
    return table


def plan_tree(plan: Plan) -> Any:
    """Roots are nodes without deps; a node with several parents is drawn once in full."""
    from rich.markup import escape
    from rich.tree import Tree

    tree = Tree(escape(plan.title))
    children = plan.dependents()
    drawn: set[str] = set()

    def label(node: PlanNode, again: bool) -> str:
        text = f"[bold]{escape(node.id)}[/] {escape(node.title)} "
        text += f"[dim]({node.type.value}, {escape(node_role(node))})[/]"
        return text + (" [dim]↑ see above[/]" if again else "")

    stack: list[tuple[Any, str]] = [(tree, n.id) for n in reversed(plan.nodes) if not n.deps]
    while stack:  # iterative: long chains must not hit the recursion limit
        parent, key = stack.pop()
        again = key in drawn
        branch = parent.add(label(plan.node(key), again))
        if not again:
            drawn.add(key)
            stack.extend((branch, child) for child in reversed(children[key]))
    return tree


def print_plan(plan: Plan, fmt: str, *, stream: IO[str] | None = None, color: bool = False) -> None:
    """Print `plan` as `table`, `tree` or `mermaid` (JSON is printed by the caller)."""
    target = stream or sys.stdout
    if fmt == "mermaid":
        target.write(plan_to_mermaid(plan))
        target.flush()
        return
    console = _console(target, color)
    console.print(plan_tree(plan) if fmt == "tree" else plan_table(plan))
