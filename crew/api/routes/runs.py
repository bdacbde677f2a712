"""Runs: list, show, summary, cancel, resume, delete."""

from __future__ import annotations

import functools
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from crew.api.errors import ApiError
from crew.api.params import Query, localize, page_response, render, tz_of
from crew.api.spec import (
    Param,
    Reply,
    endpoint,
    item_replies,
    limit_offset,
    order_by,
    page_replies,
    path_id,
    replies,
    text_param,
    time_param,
)
from crew.api.state import api_state, found, read_store
from crew.domain.status import RunStatus
from crew.engine.views import jsonable, lease_state, run_cost, run_list_item
from crew.store.read_sql import RunFilters
from crew.store.reads import ReadStore, RunDetail

log = logging.getLogger("crew.api")

RUN_ORDER = ("created_at", "started_at", "ended_at", "title", "status")
RUN_STATUSES = tuple(s.value for s in RunStatus)
RESUMABLE = {RunStatus.FAILED.value, RunStatus.INTERRUPTED.value, RunStatus.CANCELED.value}


@endpoint(
    "GET",
    "/runs",
    summary="List runs",
    tag="runs",
    params=[
        text_param("status", "Only runs with this status.", RUN_STATUSES),
        text_param("title_contains", "Case-insensitive substring of the title."),
        time_param("started_from", "Runs started at or after this instant."),
        time_param("started_to", "Runs started at or before this instant."),
        order_by(RUN_ORDER, "-created_at"),
        *limit_offset(),
    ],
    responses=page_replies("runs", "RunPage", owned=False),
)
async def list_runs(request: Request) -> Response:
    q = Query(
        request,
        ("status", "title_contains", "started_from", "started_to", "order_by", "limit", "offset"),
    )
    filters = RunFilters(
        status=q.choice("status", RUN_STATUSES),
        title_contains=q.text("title_contains"),
        started_from=q.timestamp("started_from"),
        started_to=q.timestamp("started_to"),
    )
    orders = q.order(RUN_ORDER, "-created_at")
    limit, offset = q.page()
    q.check()
    reads = await read_store(request)
    page, counts = await reads.list_runs(filters, orders, limit, offset)
    zone = tz_of(request)
    cache = api_state(request).fragments
    items = []
    for run in page.items:
        c = counts.get(run.id, {})
        key = ("run", run.id, run.updated_at, tuple(sorted(c.items())), str(zone))
        items.append(cache.get(key, functools.partial(_item, run, c, zone)))
    return page_response(request, items, page.total, limit, offset)


def _item(run: Any, counts: dict[str, int], zone: Any) -> dict[str, Any]:
    return run_list_item(localize(run, zone), counts)


def run_view(detail: RunDetail, zone: Any) -> dict[str, Any]:
    run = detail.run
    data = jsonable(localize(run, zone))
    data["cost_usd"] = run_cost(run)
    data["lease"] = lease_state(run)
    counts = detail.node_counts
    started = run.started_at
    ended = run.ended_at
    duration = None
    if started is not None and ended is not None:
        duration = round((ended - started).total_seconds() * 1000, 1)
    data["summary"] = {
        "nodes_total": sum(counts.values()),
        "nodes_completed": counts.get("completed", 0),
        "nodes_failed": counts.get("failed", 0),
        "nodes_skipped": counts.get("skipped", 0),
        "artifacts_total": detail.artifacts_total,
        "events_total": detail.events_total,
        "duration_ms": duration,
    }
    return data


async def _detail(request: Request) -> RunDetail:
    return await found(request, "run", ReadStore.run_detail)


@endpoint(
    "GET",
    "/runs/{run_id}",
    summary="Show a run with its summary and totals",
    tag="runs",
    params=[path_id("run_id", "run")],
    responses=item_replies("The run.", "Run"),
)
async def get_run(request: Request) -> Response:
    Query(request, ()).check()
    return render(run_view(await _detail(request), tz_of(request)))


@endpoint(
    "GET",
    "/runs/{run_id}/summary",
    summary="A run's summary (as in summary.json)",
    tag="runs",
    params=[path_id("run_id", "run")],
    responses=item_replies("The summary.", "RunSummary"),
)
async def get_summary(request: Request) -> Response:
    Query(request, ()).check()
    await _detail(request)
    from crew.engine.service import run_summary

    state = api_state(request)
    assert state.repo is not None  # _detail checked the database
    summary = await run_summary(state.repo, state.settings, request.path_params["run_id"])
    return render(summary)


@endpoint(
    "POST",
    "/runs/{run_id}/cancel",
    summary="Cancel a queued or running run",
    tag="runs",
    params=[path_id("run_id", "run")],
    responses=replies({202: Reply("Cancellation accepted.", "RunAction")}, 400, 401, 404, 409, 503),
)
async def cancel_run(request: Request) -> Response:
    Query(request, ()).check()
    state = api_state(request)
    await state.ready()
    from crew.engine.service import request_cancel

    run_id = request.path_params["run_id"]
    assert state.repo is not None  # ready() opened it
    status = await request_cancel(state.repo, run_id)
    body = {
        "run_id": run_id,
        "status": "canceled" if status == RunStatus.CANCELED else "cancel_requested",
        "location": f"/runs/{run_id}",
    }
    return render(body, 202, headers={"Location": _location(request, run_id)})


@endpoint(
    "POST",
    "/runs/{run_id}/resume",
    summary="Resume a failed, interrupted or canceled run in the background",
    tag="runs",
    params=[path_id("run_id", "run")],
    responses=replies({202: Reply("Resume accepted.", "RunAction")}, 400, 401, 404, 409, 503),
)
async def resume_run(request: Request) -> Response:
    Query(request, ()).check()
    state = api_state(request)
    status = await found(request, "run", ReadStore.run_status)
    run_id = request.path_params["run_id"]
    assert state.runs is not None
    if status not in RESUMABLE or state.runs.is_active(run_id):
        raise ApiError(
            409,
            f"run {run_id} is {status}; only failed, interrupted or canceled runs can be resumed",
            code="conflict",
        )
    await state.runs.resume(run_id)
    body = {"run_id": run_id, "status": "accepted", "location": f"/runs/{run_id}"}
    return render(body, 202, headers={"Location": _location(request, run_id)})


FINISHED = (
    RunStatus.COMPLETED.value,
    RunStatus.FAILED.value,
    RunStatus.CANCELED.value,
    RunStatus.INTERRUPTED.value,
)


@endpoint(
    "DELETE",
    "/runs/{run_id}",
    summary="Delete a finished run with its nodes, artifacts, events and files",
    tag="runs",
    params=[path_id("run_id", "run")],
    responses=replies(
        {200: Reply("Deleted; the space freed.", "RunDeleted")}, 400, 401, 404, 409, 503
    ),
)
async def delete_run(request: Request) -> Response:
    """Only a completed, failed, canceled or interrupted run: a queued or running one is a
    409 (cancel it first), and the status is checked again by the DELETE itself."""
    Query(request, ()).check()
    state = api_state(request)
    status = await found(request, "run", ReadStore.run_status)
    run_id = request.path_params["run_id"]
    assert state.runs is not None and state.repo is not None
    removed = None
    if status in FINISHED and not state.runs.is_active(run_id):
        from crew.engine.retention import delete_run as delete_finished

        removed = await delete_finished(state.repo.engine, state.settings.runs_root, run_id)
    if removed is None:
        raise ApiError(
            409,
            f"run {run_id} is {status}; only finished runs ({', '.join(FINISHED)}) can be "
            "deleted: cancel it first",
            code="conflict",
        )
    log.info(
        "run %s deleted by %s (%d bytes freed)",
        run_id,
        request.scope.get("crew.api_key", "anonymous"),
        removed.freed_bytes,
    )
    if removed.files_error:
        log.error("run %s: its files could not be deleted: %s", run_id, removed.files_error)
    body = {
        "run_id": run_id,
        "status": "deleted",
        "files_bytes": removed.files_bytes,
        "content_bytes": removed.content_bytes,
        "freed_bytes": removed.freed_bytes,
        "files_error": removed.files_error,
    }
    return render(body)


def _location(request: Request, run_id: str) -> str:
    return f"{request.scope.get('root_path', '')}/runs/{run_id}"


__all__ = ["Param"]
