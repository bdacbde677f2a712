"""When a model's answer cannot be used: truthful errors, and the raw answer under -v.

A plan or an assignment list the model could not produce is not the user's bad input
(exit 2) but a model that failed its job: ModelAnswerError exits 4, like a provider that
cannot answer (DESIGN §2 and the README's exit codes), and says what to change. An
answer cut off at `max_tokens` (finish_reason `length`) is named as such, with the
setting to raise, instead of the JSON syntax error it causes.
"""

from __future__ import annotations

import logging

from crew.domain.errors import PlanValidationError
from crew.llm.client import CallResult

log = logging.getLogger("crew.agents")

MAX_TOKENS_SETTING = {
    "supervisor": "SUPERVISOR_MAX_TOKENS",
    "manager": "MANAGER_MAX_TOKENS",
    "executor": "EXECUTOR_MAX_TOKENS",
}


class ModelAnswerError(PlanValidationError):
    """The model did not produce a usable answer (plan, assignments): exit 4 / HTTP 503.

    A subclass of PlanValidationError so callers that handle an invalid plan still do;
    its exit code says the fault is the model's (or its settings'), not the input's.
    """

    exit_code = 4
    http_status = 503
    code = "invalid_model_answer"


def truncated(call: CallResult) -> bool:
    return call.response.finish_reason == "length"


def truncation_problem(call: CallResult, role_kind: str) -> str:
    """What to say about an answer cut off at max_tokens, naming the setting to raise."""
    setting = MAX_TOKENS_SETTING.get(role_kind, "LLM_DEFAULT_MAX_TOKENS")
    source = call.resolved.sources.get("max_tokens") if call.resolved is not None else None
    where = {
        "cli": "the command line's setting",
        "node": "the plan node's llm.max_tokens",
        "request": "the request's llm options",
        "default": "LLM_DEFAULT_MAX_TOKENS",
    }.get(source or "role", setting)
    return (
        f"the answer was truncated: the model stopped at max_tokens={call.request.max_tokens} "
        f"(finish_reason=length) before finishing its JSON; raise {setting} "
        f"(the value came from {where})"
    )


def log_raw_answer(role_kind: str, attempt: int, call: CallResult) -> None:
    """The unusable answer as the model wrote it, for `-v` (DEBUG) runs."""
    log.debug(
        "%s answer %d from %s/%s was not usable (finish_reason=%s):\n%s",
        role_kind,
        attempt,
        call.provider,
        call.model,
        call.response.finish_reason,
        call.response.text,
    )
