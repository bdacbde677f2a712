"""The JSON sidecar written next to every LLM output (DESIGN §4).

Field names follow the OpenTelemetry GenAI conventions so the files can be loaded by
tools that know them. Prompts are truncated to a configurable length: sidecars are for
accounting and debugging, not for archiving whole conversations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crew.llm.client import CallResult

SIDECAR_SCHEMA_VERSION = 1


def truncate(text: str, limit: int) -> str:
    if limit <= 0 or len(text) <= limit:
        return text
    return text[:limit] + f"\n[… truncated {len(text) - limit} characters]"


def build_sidecar(
    *,
    run_id: str,
    node_key: str | None,
    role: str,
    operation: str,
    calls: Sequence[CallResult],
    prompt_max_chars: int,
    error: str | None = None,
) -> dict[str, Any]:
    """Describe the last call made for this output; totals and attempts cover every call.

    A manager or supervisor may need several calls (repair requests); the sidecar keeps
    the answering call's details and sums the tokens and cost of all of them.
    `attempts` counts every try (retries and fallback providers included) and
    `attempts_detail` lists them, failed ones with their error and HTTP status.
    """
    last = calls[-1]
    costs = [c.cost_usd for c in calls]
    cost = None if any(c is None for c in costs) else round(sum(c or 0.0 for c in costs), 8)
    return {
        "schema_version": SIDECAR_SCHEMA_VERSION,
        "run_id": run_id,
        "node_key": node_key,
        "role": role,
        "provider": last.provider,
        "model": last.model,
        "response_model": last.response.model,
        "operation": operation,
        "temperature": last.request.temperature,
        "max_tokens": last.request.max_tokens,
        "input_tokens": sum(c.response.input_tokens for c in calls),
        "output_tokens": sum(c.response.output_tokens for c in calls),
        "usage_estimated": any(c.response.usage_estimated for c in calls),
        "cost_usd": cost,
        "price_source": last.price_source,
        "latency_ms": round(sum(c.response.latency_ms for c in calls), 3),
        "attempts": sum(c.attempts for c in calls),
        "calls": len(calls),
        "finish_reason": last.response.finish_reason,
        "fallback_from": last.fallback_from,
        "attempts_detail": [a.to_dict() for c in calls for a in c.attempt_log],
        "started_at": calls[0].started_at.isoformat(),
        "ended_at": last.ended_at.isoformat(),
        "prompts": {
            "system": truncate(last.request.system, prompt_max_chars),
            "user": truncate(last.request.last_user, prompt_max_chars),
        },
        "error": error,
    }


def usage_of(calls: Sequence[CallResult]) -> tuple[int, int, float | None]:
    """Input tokens, output tokens and cost (None when any call's price is unknown)."""
    input_tokens = sum(c.response.input_tokens for c in calls)
    output_tokens = sum(c.response.output_tokens for c in calls)
    if any(c.cost_usd is None for c in calls):
        return input_tokens, output_tokens, None
    return input_tokens, output_tokens, sum(c.cost_usd or 0.0 for c in calls)
