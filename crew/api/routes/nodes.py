"""Nodes of a run, and one node."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from crew.api.errors import ApiError
from crew.api.params import Query, localize, page_response, render, tz_of
from crew.api.spec import Reply, endpoint, limit_offset, order_by, path_id, replies, text_param
from crew.api.state import read_store
from crew.domain.status import NodeStatus
from crew.engine.views import jsonable
from crew.store.read_sql import NodeFilters

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
    responses=replies(
        {200: Reply("A page of nodes.", "NodePage", headers=("X-Total-Count", "Link"))},
        400,
        401,
        404,
        503,
    ),
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
    reads = await read_store(request)
    run_id = request.path_params["run_id"]
    page = await reads.list_nodes(run_id, filters, orders, limit, offset)
    if page is None:
        raise ApiError(404, f"no run with id {run_id!r}", code="not_found")
    zone = tz_of(request)
    items = [jsonable(localize(n, zone)) for n in page.items]
    return page_response(request, items, page.total, limit, offset)


@endpoint(
    "GET",
    "/nodes/{node_id}",
    summary="Show a node",
    tag="nodes",
    params=[path_id("node_id", "node")],
    responses=replies({200: Reply("The node.", "Node")}, 400, 401, 404, 503),
)
async def get_node(request: Request) -> Response:
    Query(request, ()).check()
    reads = await read_store(request)
    node_id = request.path_params["node_id"]
    node = await reads.get_node(node_id)
    if node is None:
        raise ApiError(404, f"no node with id {node_id!r}", code="not_found")
    return render(jsonable(localize(node, tz_of(request))))
