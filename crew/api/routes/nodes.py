"""Nodes of a run, and one node."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from crew.api.params import Query, localize, page_response, render, tz_of
from crew.api.spec import (
    endpoint,
    item_replies,
    limit_offset,
    order_by,
    page_replies,
    path_id,
    text_param,
)
from crew.api.state import found
from crew.domain.status import NodeStatus
from crew.engine.views import jsonable
from crew.store.read_sql import NodeFilters
from crew.store.reads import ReadStore

NODE_ORDER = ("position", "key", "status", "title", "role", "started_at", "ended_at")
NODE_STATUSES = tuple(s.value for s in NodeStatus)


@endpoint(
    "GET",
    "/runs/{run_id}/nodes",
    summary="List a run's nodes",
    tag="nodes",
    params=[
        path_id("run_id", "run"),
        text_param("status", "Only nodes with this status.", NODE_STATUSES),
        text_param("key", "Only the node with this key."),
        text_param("role", "Only nodes with this agent role."),
        text_param("title_contains", "Case-insensitive substring of the title."),
        order_by(NODE_ORDER, "position"),
        *limit_offset(),
    ],
    responses=page_replies("nodes", "NodePage"),
)
async def list_nodes(request: Request) -> Response:
    q = Query(request, ("status", "key", "role", "title_contains", "order_by", "limit", "offset"))
    filters = NodeFilters(
        status=q.choice("status", NODE_STATUSES),
        key=q.text("key"),
        role=q.text("role"),
        title_contains=q.text("title_contains"),
    )
    orders = q.order(NODE_ORDER, "position")
    limit, offset = q.page()
    q.check()
    page = await found(
        request, "run", lambda reads, run: reads.list_nodes(run, filters, orders, limit, offset)
    )
    zone = tz_of(request)
    items = [jsonable(localize(n, zone)) for n in page.items]
    return page_response(request, items, page.total, limit, offset)


@endpoint(
    "GET",
    "/nodes/{node_id}",
    summary="Show a node",
    tag="nodes",
    params=[path_id("node_id", "node")],
    responses=item_replies("The node.", "Node"),
)
async def get_node(request: Request) -> Response:
    Query(request, ()).check()
    node = await found(request, "node", ReadStore.get_node)
    return render(jsonable(localize(node, tz_of(request))))
