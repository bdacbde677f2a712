"""The accounting identity every run must satisfy, checked from what a run leaves behind.

Run totals (tokens and cost) equal the sum over the run's LLM_CALL events, which is the
sum over every call that reached a server and answered; the nodes' totals plus the
supervisor's equal the run's; and every LLM_CALL says how the answer ended and whether
its usage was reported or estimated.
"""

from __future__ import annotations

from typing import Any

import pytest


def assert_totals_are_the_sum_of_calls(store: Any, run_id: str) -> list[Any]:
    """Check the identity on a run of `store` (engine_support.Store); returns the
    LLM_CALL events."""
    run = store.run(run_id)
    calls = [e for e in store.events(run_id) if e.type == "LLM_CALL"]
    for event in calls:
        assert "finish_reason" in event.payload and "usage_estimated" in event.payload, event
    assert run.input_tokens == sum(e.payload["input_tokens"] for e in calls)
    assert run.output_tokens == sum(e.payload["output_tokens"] for e in calls)
    costs = [e.payload["cost_usd"] for e in calls]
    if calls and all(c is not None for c in costs):
        assert not run.cost_unknown
        assert run.cost_usd == pytest.approx(sum(costs), abs=1e-9)
    nodes = store.nodes(run_id).values()
    supervisor = [e for e in calls if e.node_key is None]
    assert run.input_tokens == sum(n.input_tokens for n in nodes) + sum(
        e.payload["input_tokens"] for e in supervisor
    )
    assert run.output_tokens == sum(n.output_tokens for n in nodes) + sum(
        e.payload["output_tokens"] for e in supervisor
    )
    return calls
