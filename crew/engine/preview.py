"""What a dry run shows: every node with its role and resolved provider/model.

Nothing is called; the count of LLM calls is what a real run would make on its first
attempt (one per node, plus the supervisor's when it planned the run).
"""

from __future__ import annotations

from typing import Any

from crew.domain.plan import NodeType, Plan
from crew.engine.options import RunOptions
from crew.engine.service import initial_role
from crew.llm.resolution import resolve_llm
from crew.settings import Settings


def preview_plan(
    settings: Settings, plan: Plan, options: RunOptions, *, supervisor_called: bool
) -> dict[str, Any]:
    nodes = []
    for node in plan.nodes:
        kind = "manager" if node.type == NodeType.MANAGE else "executor"
        resolved = resolve_llm(settings, kind, *options.llm_layers(kind, node.llm))
        nodes.append(
            {
                "key": node.id,
                "title": node.title,
                "type": node.type.value,
                "deps": list(node.deps),
                "role": initial_role(plan, node.id),
                "provider": resolved.provider,
                "model": resolved.model,
            }
        )
    return {
        "nodes": nodes,
        "llm_calls": len(nodes),
        "supervisor_calls_made": 1 if supervisor_called else 0,
    }
