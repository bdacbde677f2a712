"""`POST /tasks`: validate, (plan,) create the run, execute it in the background.

Decisions, also in the README:
- With `options.use_supervisor` the supervisor plans inside the request, bounded in time,
  before any run row exists: an invalid plan is a 400 with the supervisor's problems, an
  unreachable provider a 503, and no run is ever left `queued` with no plan behind it.
- Only requests that will start a run take a rate-limit token; invalid ones (400) and
  idempotent replays do not.
- `Idempotency-Key` is stored with the run (per API key), so a repeat — even after a
  restart — answers 202 with the run the first request started. The repeated body is not
  compared.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from crew.api.errors import ApiError
from crew.api.params import render
from crew.api.spec import Param, Reply, endpoint, replies
from crew.api.state import api_state
from crew.api.task_body import TaskRequest, parse_task_request
from crew.domain.errors import BudgetExceededError, PlanValidationError
from crew.engine.options import RunOptions
from crew.engine.service import SupervisorCalls, create_run

IDEMPOTENCY = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "A repeat of a request with the same key (and API key) returns the run the first one "
    "started instead of starting another.",
)
REQUEST_ID = Param(
    "X-Request-ID",
    "header",
    {"type": "string"},
    "Kept if it matches [A-Za-z0-9._-]{1,128} (else replaced); stored on the run and its events.",
)
LLM_FIELD = "request_llm" if "request_llm" in RunOptions.__dataclass_fields__ else "llm"
"""Where the request's per-role LLM choice goes in the run's options."""


@endpoint(
    "POST",
    "/tasks",
    summary="Start a run (executed in the background)",
    tag="tasks",
    params=[IDEMPOTENCY, REQUEST_ID],
    body="TaskRequest",
    responses=replies(
        {
            202: Reply(
                "Accepted; the run executes in the background.",
                "TaskAccepted",
                headers=("Location",),
            )
        },
        400,
        401,
        413,
        429,
        503,
    ),
)
async def post_task(request: Request) -> Response:
    state = api_state(request)
    await state.ready()
    assert state.runs is not None and state.limiter is not None
    body = await request.body()
    task = parse_task_request(body, state.settings, state.runs.registry.available())
    api_key = str(request.scope.get("crew.api_key", "anonymous"))
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= 255 and key.isprintable()):
        raise ApiError.invalid("Idempotency-Key: expected 1 to 255 printable characters")
    request_id = task.request_id or request.scope["crew.request_id"]
    if key is None:
        run_id = await _start(request, task, api_key, request_id, None)
    else:
        digest = hashlib.sha256(f"{api_key}\x00{key}".encode()).hexdigest()
        lock = state.idempotency_locks.setdefault(digest, asyncio.Lock())
        try:
            async with lock:
                assert state.repo is not None
                existing = await state.repo.run_with_idempotency_key(digest)
                run_id = existing or await _start(request, task, api_key, request_id, digest)
        finally:
            if not lock.locked():
                state.idempotency_locks.pop(digest, None)
    location = f"/runs/{run_id}"
    return render(
        {"run_id": run_id, "status": "accepted", "location": location},
        202,
        headers={"Location": f"{request.scope.get('root_path', '')}{location}"},
    )


async def _start(
    request: Request, task: TaskRequest, api_key: str, request_id: str, digest: str | None
) -> str:
    state = api_state(request)
    assert state.runs is not None and state.limiter is not None and state.repo is not None
    wait = state.limiter.take(api_key)
    if wait is not None:
        raise ApiError(
            429,
            f"too many runs started; at most {state.settings.tasks_rate_per_min:g} per minute "
            f"(bursts of {state.settings.tasks_rate_burst})",
            code="rate_limited",
            headers={"Retry-After": state.limiter.retry_after(wait)},
        )
    plan, supervisor = task.plan, None
    if plan is None:
        plan, supervisor = await _plan_with_supervisor(request, task)
    changes: dict[str, Any] = dict(task.changes)
    if "llm" in changes:
        changes[LLM_FIELD] = changes.pop("llm")
    options = RunOptions.from_settings(state.settings, **changes)
    run_id = await create_run(
        state.repo,
        state.settings,
        plan,
        options=options,
        request_id=request_id,
        supervisor=supervisor,
        notify=False,  # not before it holds its idempotency key
    )
    if digest is not None:
        winner = await state.repo.attach_idempotency_key(run_id, digest)
        if winner != run_id:
            return winner
    await state.repo.notify_run_queued(run_id)
    state.runs.queued(run_id)
    return run_id


async def _plan_with_supervisor(request: Request, task: TaskRequest) -> tuple[Any, Any]:
    """The supervisor plans inside the request, within the run's budget and a deadline."""
    from crew.agents.goal import Goal
    from crew.domain.plan import LLMSpec
    from crew.engine.planning import plan_goal, planning_deadline

    state = api_state(request)
    settings = state.settings
    assert state.runs is not None
    goal = Goal(title=task.title, description=task.description, acceptance=task.acceptance)
    spec = task.changes.get("llm", {}).get("supervisor")
    chosen = LLMSpec(provider=spec.get("provider"), model=spec.get("model")) if spec else None
    deadline = planning_deadline(settings)
    max_cost = task.changes.get("max_cost_usd", settings.run_max_cost_usd)
    max_tokens = task.changes.get("max_tokens", settings.run_max_tokens)
    try:
        result = await plan_goal(
            state.runs.client,
            settings,
            goal,
            supervisor_llm=chosen,
            max_cost_usd=max_cost,
            max_tokens=max_tokens,
            timeout_s=deadline,
        )
    except TimeoutError:
        raise ApiError(
            503, f"planning took longer than {deadline:g}s", code="planning_timeout"
        ) from None
    except BudgetExceededError as error:
        # The request's own limits cannot cover planning: its input, not a server fault.
        raise ApiError(400, f"planning refused: {error.message}", code="budget_exceeded") from None
    except PlanValidationError as error:
        raise ApiError(
            400, error.message, code="invalid_plan", errors=error.problems or [error.message]
        ) from None
    return result.plan, SupervisorCalls(calls=list(result.calls))
