"""Event types and levels (DESIGN §4).

A run's first two events are always RUN_STARTED then PLAN_CREATED; the terminal run
events tell a follower (`crew events tail`, SSE) that it can stop.
"""

from __future__ import annotations

from enum import StrEnum


class EventType(StrEnum):
    RUN_STARTED = "RUN_STARTED"
    PLAN_CREATED = "PLAN_CREATED"
    NODE_STARTED = "NODE_STARTED"
    NODE_RETRYING = "NODE_RETRYING"
    NODE_COMPLETED = "NODE_COMPLETED"
    NODE_FAILED = "NODE_FAILED"
    NODE_SKIPPED = "NODE_SKIPPED"
    MANAGER_ASSIGNED = "MANAGER_ASSIGNED"
    LLM_CALL = "LLM_CALL"
    ARTIFACT_CREATED = "ARTIFACT_CREATED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    RUN_COMPLETED = "RUN_COMPLETED"
    RUN_FAILED = "RUN_FAILED"
    RUN_CANCELED = "RUN_CANCELED"
    RUN_INTERRUPTED = "RUN_INTERRUPTED"
    RUN_RESUMED = "RUN_RESUMED"
    RUN_RELEASED = "RUN_RELEASED"
    """An executor shutting down gave the run back to the queue; another one continues it."""


class EventLevel(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


TERMINAL_RUN_EVENTS = frozenset(
    {
        EventType.RUN_COMPLETED,
        EventType.RUN_FAILED,
        EventType.RUN_CANCELED,
        EventType.RUN_INTERRUPTED,
    }
)
