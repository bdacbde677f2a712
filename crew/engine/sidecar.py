"""The JSON sidecar written next to every LLM output (DESIGN §4), and LLM_CALL payloads.

Field names follow the OpenTelemetry GenAI conventions so the files can be loaded by
tools that know them. Prompts are truncated to a configurable length: sidecars are for
accounting and debugging, not for archiving whole conversations.

A sidecar is also written for work that failed after calls reached a server (a manager
whose answers never validated, a node whose provider died mid-way): those calls were
spent, and the sidecar is where their tokens, HTTP statuses and messages are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crew.domain.limits import cut
from crew.llm.client import CallResult
from crew.llm.ledger import FailedCall

SIDECAR_SCHEMA_VERSION = 1


def truncate(text: str, limit: int) -> str:
    """A prompt as the sidecar keeps it: SIDECAR_PROMPT_MAX_CHARS characters (0: whole)."""
    return text if limit <= 0 else cut(text, limit)


def build_sidecar(
    *,
    run_id: str,
    node_key: str | None,
    role: str,
    operation: str,
    calls: Sequence[CallResult],
    prompt_max_chars: int,
    error: str | None = None,
    failed: Sequence[FailedCall] = (),
) -> dict[str, Any]:
    """Describe the last call made for this output; totals and attempts cover every call.

    A manager or supervisor may need several calls (repair requests); the sidecar keeps
    the answering call's details and sums the tokens and cost of all of them.
    `attempts` counts every try (retries and fallback providers included) and
    `attempts_detail` lists them, failed ones with their error and HTTP status; calls no
    provider answered are listed in `failed_calls`. `latency_ms` is the answering
    requests' time, `elapsed_ms` the calls' whole time (failed tries and waits included).
    """
    input_tokens, output_tokens, cost = usage_of(calls)
    last = calls[-1] if calls else None
    request = last.request if last is not None else (failed[-1].request if failed else None)
    reasoning = [
        truncate(text, prompt_max_chars)
        for c in calls
        if isinstance(text := c.response.extra.get("reasoning"), str) and text
    ]
    providers: dict[str, int] = {}
    for call in calls:
        providers[call.provider] = providers.get(call.provider, 0) + 1
    sidecar: dict[str, Any] = {
        "schema_version": SIDECAR_SCHEMA_VERSION,
        "run_id": run_id,
        "node_key": node_key,
        "role": role,
        "provider": last.provider if last else (failed[-1].provider if failed else None),
        "model": last.model if last else (failed[-1].model if failed else None),
        "response_model": last.response.model if last else None,
        "operation": operation,
        "temperature": request.temperature if request else None,
        "max_tokens": request.max_tokens if request else None,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "usage_estimated": any(c.response.usage_estimated for c in calls),
        "cost_usd": None if cost is None else round(cost, 8),
        "price_source": last.price_source if last else None,
        "latency_ms": round(sum(c.response.latency_ms for c in calls), 3),
        "elapsed_ms": round(
            sum(c.elapsed_ms or c.response.latency_ms for c in calls)
            + sum(f.elapsed_ms for f in failed),
            3,
        ),
        "attempts": sum(c.attempts for c in calls) + sum(len(f.attempt_log) for f in failed),
        "calls": len(calls),
        "providers": providers,
        "fallback_calls": sum(1 for c in calls if c.fallback_from is not None),
        "finish_reason": last.response.finish_reason if last else None,
        "fallback_from": last.fallback_from if last else None,
        "attempts_detail": [a.to_dict() for c in calls for a in c.attempt_log],
        "started_at": _first_start(calls, failed),
        "ended_at": _last_end(calls, failed),
        "prompts": {
            "system": truncate(request.system, prompt_max_chars) if request else "",
            "user": truncate(request.last_user, prompt_max_chars) if request else "",
        },
        "error": error,
    }
    if last is not None and "structured_output" in last.response.extra:
        sidecar["structured_output"] = last.response.extra["structured_output"]
        refusals = last.response.extra.get("format_refusals")
        if refusals:
            sidecar["format_refusals"] = refusals
    if reasoning:
        sidecar["reasoning"] = reasoning
    if failed:
        sidecar["failed_calls"] = [f.to_dict() for f in failed]
    return sidecar


def _first_start(calls: Sequence[CallResult], failed: Sequence[FailedCall]) -> str | None:
    starts = [c.started_at for c in calls] + [f.started_at for f in failed]
    return min(starts).isoformat() if starts else None


def _last_end(calls: Sequence[CallResult], failed: Sequence[FailedCall]) -> str | None:
    ends = [c.ended_at for c in calls] + [f.ended_at for f in failed]
    return max(ends).isoformat() if ends else None


def usage_of(calls: Sequence[CallResult]) -> tuple[int, int, float | None]:
    """Input tokens, output tokens and cost (None when any call's price is unknown)."""
    input_tokens = sum(c.response.input_tokens for c in calls)
    output_tokens = sum(c.response.output_tokens for c in calls)
    if any(c.cost_usd is None for c in calls):
        return input_tokens, output_tokens, None
    return input_tokens, output_tokens, sum(c.cost_usd or 0.0 for c in calls)


def llm_call_fields(call: CallResult) -> dict[str, Any]:
    """The payload of one call's LLM_CALL event: what was asked of whom, what it cost,
    how it ended (`finish_reason`) and whether its usage was reported or estimated."""
    return {
        "role": call.request.role,
        "provider": call.provider,
        "model": call.model,
        "response_model": call.response.model,
        "input_tokens": call.response.input_tokens,
        "output_tokens": call.response.output_tokens,
        "cost_usd": call.cost_usd,
        "latency_ms": round(call.response.latency_ms, 3),
        "elapsed_ms": None if call.elapsed_ms is None else round(call.elapsed_ms, 3),
        "attempts": call.attempts,
        "fallback_from": call.fallback_from,
        "finish_reason": call.response.finish_reason,
        "usage_estimated": call.response.usage_estimated,
    }
