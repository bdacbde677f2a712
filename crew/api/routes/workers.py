"""The executing processes: which workers (and servers) are alive, and what they hold."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from crew.api.params import Query, localize, render, tz_of
from crew.api.spec import Reply, endpoint, replies
from crew.api.state import api_state
from crew.engine.views import worker_item


@endpoint(
    "GET",
    "/workers",
    summary="List the registered executors (workers, servers) and the runs they hold",
    tag="workers",
    responses=replies({200: Reply("The registered executors.", "WorkerList")}, 400, 401, 503),
)
async def list_workers(request: Request) -> Response:
    Query(request, ()).check()
    state = api_state(request)
    await state.ready()
    assert state.repo is not None
    workers = await state.repo.list_workers()
    held = await state.repo.runs_held_by([w.id for w in workers])
    zone = tz_of(request)
    items = [
        worker_item(localize(w, zone), held.get(w.id, []), state.settings.run_lease_s)
        for w in workers
    ]
    return render({"items": items, "total": len(items)})
