"""Run and node statuses (DESIGN §4) and which of them are final."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    INTERRUPTED = "interrupted"

    @property
    def is_terminal(self) -> bool:
        """Terminal for a watcher: nothing more happens unless someone resumes the run."""
        return self in TERMINAL_RUN_STATUSES


class NodeStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_NODE_STATUSES


TERMINAL_RUN_STATUSES = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.INTERRUPTED}
)
TERMINAL_NODE_STATUSES = frozenset(
    {NodeStatus.COMPLETED, NodeStatus.FAILED, NodeStatus.SKIPPED, NodeStatus.CANCELED}
)


class EndReason(StrEnum):
    """Why a run ended; stored on the run (`error_code`) and in summary.json.

    The exit code of a finished run follows from it, so a later `crew run --resume` of
    a run that already ended can still answer with the right one.
    """

    COMPLETED = "completed"
    NODE_FAILED = "node_failed"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    BUDGET_EXCEEDED = "budget_exceeded"
    CANCELED = "canceled"
    INTERRUPTED = "interrupted"
    TOO_MANY_RECOVERIES = "too_many_recoveries"
    SETUP_FAILED = "setup_failed"


class ResumeReason(StrEnum):
    """Why an executor continued a run (RUN_RESUMED's `reason`)."""

    MANUAL = "manual"
    LEASE_EXPIRED = "lease_expired"
    RELEASED = "released"
    APPROVED = "approved"
