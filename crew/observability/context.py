"""What a log line or an error report is about: the request, run and node in progress.

Context variables rather than arguments: the API middleware sets the request id, the
engine sets the run id and node key, and whatever logs or reports underneath (the LLM
client, a provider, the store) gets them without passing them along. asyncio copies the
context into each task, so a node's task sees its own node key and a run started by a
request keeps that request's id.
"""

from __future__ import annotations

from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("crew_request_id", default=None)
run_id: ContextVar[str | None] = ContextVar("crew_run_id", default=None)
node_key: ContextVar[str | None] = ContextVar("crew_node_key", default=None)


def current() -> dict[str, str]:
    """The ids set in this context (only those that are set)."""
    values = {"request_id": request_id.get(), "run_id": run_id.get(), "node_key": node_key.get()}
    return {name: value for name, value in values.items() if value}
