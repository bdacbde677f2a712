"""Events: pages by keyset (`after_id`), and a Server-Sent Events stream that follows a run."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from crew.api.errors import ApiError
from crew.api.params import Query, localize, page_response, tz_of
from crew.api.spec import (
    Param,
    Reply,
    endpoint,
    limit_offset,
    order_by,
    page_replies,
    path_id,
    replies,
    text_param,
    time_param,
)
from crew.api.state import api_state, read_store
from crew.domain.events import TERMINAL_RUN_EVENTS, EventLevel, EventType
from crew.domain.status import TERMINAL_RUN_STATUSES
from crew.engine.views import jsonable
from crew.store.read_sql import EventFilters

EVENT_TYPES = tuple(t.value for t in EventType)
EVENT_LEVELS = tuple(level.value for level in EventLevel)
TERMINAL_TYPES = frozenset(t.value for t in TERMINAL_RUN_EVENTS)
TERMINAL_STATUSES = frozenset(s.value for s in TERMINAL_RUN_STATUSES)
STREAM_BATCH = 500
AFTER_ID = Param(
    "after_id",
    "query",
    {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    "Only events with a larger id (the cursor for tailing).",
)
FILTERS = [
    text_param("type", "Only events of this type.", EVENT_TYPES),
    text_param("level", "Only events of this level.", EVENT_LEVELS),
    text_param("node_key", "Only events of this node."),
    text_param("q", "Case-insensitive substring of the message."),
    time_param("ts_from", "Events at or after this instant."),
    time_param("ts_to", "Events at or before this instant."),
    AFTER_ID,
    order_by(("id",), "id"),
    *limit_offset(),
]
FILTER_NAMES = (
    "type",
    "level",
    "node_key",
    "q",
    "ts_from",
    "ts_to",
    "after_id",
    "order_by",
    "limit",
    "offset",
)
PAGE_REPLIES = page_replies("events", "EventPage")


def event_view(event: Any, zone: Any) -> dict[str, Any]:
    return jsonable(localize(event, zone))


async def _events(request: Request, run_id: str | None, q: Query) -> Response:
    filters = EventFilters(
        type=q.choice("type", EVENT_TYPES),
        level=q.choice("level", EVENT_LEVELS),
        node_key=q.text("node_key"),
        q=q.text("q"),
        ts_from=q.timestamp("ts_from"),
        ts_to=q.timestamp("ts_to"),
    )
    after_id = q.integer("after_id", None, 0)
    orders = q.order(("id",), "id")
    limit, offset = q.page()
    if run_id is None:
        q.problems.append("run_id: required")
    q.check()
    assert run_id is not None
    reads = await read_store(request)
    descending = bool(orders and orders[0].descending)
    status, page = await reads.list_events(
        run_id, filters, after_id=after_id, limit=limit, offset=offset, descending=descending
    )
    if status is None:
        raise ApiError.missing("run", run_id)
    zone = tz_of(request)
    cache = api_state(request).fragments
    zone_key = str(zone)
    items = [
        cache.get(("event", e.id, zone_key), functools.partial(event_view, e, zone))
        for e in page.items
    ]
    next_params = None
    if not descending and offset == 0 and page.items and len(page.items) < page.total:
        # Keyset, not OFFSET: the next page starts after the last id seen.
        next_params = {"after_id": page.items[-1].id, "offset": 0}
    return page_response(request, items, page.total, limit, offset, next_params=next_params)


@endpoint(
    "GET",
    "/events",
    summary="List a run's events (ascending id by default)",
    tag="events",
    params=[
        Param("run_id", "query", {"type": "string", "maxLength": 128}, "The run.", True),
        *FILTERS,
    ],
    responses=PAGE_REPLIES,
)
async def list_events(request: Request) -> Response:
    q = Query(request, ("run_id", *FILTER_NAMES))
    return await _events(request, q.text("run_id", max_length=128), q)


@endpoint(
    "GET",
    "/runs/{run_id}/events",
    summary="List a run's events (alias of /events)",
    tag="events",
    params=[path_id("run_id", "run"), *FILTERS],
    responses=PAGE_REPLIES,
)
async def list_run_events(request: Request) -> Response:
    q = Query(request, FILTER_NAMES)
    return await _events(request, request.path_params["run_id"], q)


@endpoint(
    "GET",
    "/events/stream",
    summary="Follow a run's events (Server-Sent Events)",
    tag="events",
    params=[
        Param("run_id", "query", {"type": "string", "maxLength": 128}, "The run.", True),
        AFTER_ID,
        Param(
            "Last-Event-ID",
            "header",
            {"type": "string", "pattern": "^[0-9]{1,18}$"},
            "Resume after this event id (set by EventSource on reconnect).",
        ),
        Param(
            "api_key",
            "query",
            {"type": "string"},
            "The API key, for clients that cannot send X-API-Key (EventSource).",
        ),
    ],
    responses=replies(
        {
            200: Reply(
                "An event stream: `id:`, `event:` and `data:` (the event as "
                "JSON) per event, `:` comment heartbeats; it ends after the "
                "run's terminal event.",
                None,
                media_type="text/event-stream",
            )
        },
        400,
        401,
        404,
        503,
    ),
)
async def stream_events(request: Request) -> Response:
    q = Query(request, ("run_id", "after_id"))
    run_id = q.text("run_id", max_length=128)
    after_id = q.integer("after_id", None, 0)
    last = request.headers.get("last-event-id")
    if last is not None:
        if not last.isdigit() or len(last) > 18:
            q.problems.append("Last-Event-ID: expected an event id")
        else:
            after_id = int(last)
    if run_id is None:
        q.problems.append("run_id: required")
    q.check()
    assert run_id is not None
    reads = await read_store(request)
    if await reads.run_status(run_id) is None:
        raise ApiError.missing("run", run_id)
    stream = _follow(request, run_id, after_id or 0)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


async def _follow(request: Request, run_id: str, cursor: int) -> AsyncIterator[str]:
    """Events after `cursor` as they are committed; ends after the run's terminal event.

    The run's status is read before its events, so a terminal status means every event up
    to the terminal one is already visible to the events query that follows.
    """
    state = api_state(request)
    reads = await read_store(request)
    zone = tz_of(request)
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    yield ": stream open\n\n"
    while True:
        status, page = await reads.list_events(
            run_id, EventFilters(), after_id=cursor, limit=STREAM_BATCH, with_total=False
        )
        if status is None:  # the run was deleted
            return
        for event in page.items:
            cursor = event.id
            data = json.dumps(event_view(event, zone), ensure_ascii=False, separators=(",", ":"))
            yield f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n"
        if page.items:
            quiet_since = loop.time()
        if len(page.items) == STREAM_BATCH:
            continue
        ended = not page.items or page.items[-1].type in TERMINAL_TYPES
        if status in TERMINAL_STATUSES and ended:
            return
        if state.shutting_down.is_set() and not page.items:
            yield ": server shutting down\n\n"
            return
        if loop.time() - quiet_since >= state.heartbeat_s:
            quiet_since = loop.time()
            yield ": heartbeat\n\n"
        await asyncio.sleep(state.poll_s)
