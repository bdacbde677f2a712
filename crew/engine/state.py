"""The in-memory view of a run's nodes while one process executes it.

It is rebuilt from the database at every start or resume; the database stays the
source of truth and this is only what the scheduler needs to decide quickly.
"""

from __future__ import annotations

from dataclasses import dataclass

from crew.domain.plan import PlanNode
from crew.domain.status import NodeStatus


@dataclass(slots=True)
class NodeState:
    key: str
    node_id: str
    position: int
    spec: PlanNode
    status: NodeStatus
    role: str | None
    checksum: str | None
    attempts: int
    output: str | None = None
    """The text handed to dependents (markdown, or the manager's rendered answer)."""
    output_sha: str | None = None
    """Hash of the stored output: part of every dependent's checksum."""
    output_path: str | None = None
    """Path (relative to RUNS_ROOT) of the node's main artifact."""
