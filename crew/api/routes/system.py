"""Health, metrics and the OpenAPI document: the endpoints that need no API key."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from crew import __version__
from crew.api.errors import ApiError
from crew.api.openapi import document
from crew.api.params import render
from crew.api.spec import Reply, endpoint
from crew.api.state import api_state
from crew.domain.errors import UnavailableError
from crew.store.file_guard import DatabaseFileGoneError


@endpoint(
    "GET",
    "/health",
    summary="Liveness and database reachability",
    tag="system",
    public=True,
    responses={
        200: Reply("Healthy.", "Health"),
        503: Reply(
            "The database is unreachable, or its SQLite file was deleted or replaced.",
            "HealthUnavailable",
        ),
    },
)
async def health(request: Request) -> Response:
    state = api_state(request)
    try:
        await state.ready()
        assert state.reads is not None
        await state.reads.ping()
    except UnavailableError as error:
        # Never the driver's message: it can name hosts, users and paths. The file guard's
        # message names none, and says what to do.
        gone = isinstance(error, DatabaseFileGoneError)
        return render(
            {
                "status": "unavailable",
                "db": "unavailable",
                "version": __version__,
                "detail": error.message if gone else "the database is unavailable",
                "code": error.code if gone else "database_unavailable",
                "request_id": request.scope.get("crew.request_id", ""),
            },
            503,
        )
    return render({"status": "ok", "db": "ok", "version": __version__})


@endpoint(
    "GET",
    "/metrics",
    summary="Prometheus metrics (when METRICS_ENABLED=1)",
    tag="system",
    public=True,
    responses={
        200: Reply("Metrics in the Prometheus text format.", None, media_type="text/plain"),
        404: Reply("Metrics are disabled.", "Error"),
    },
)
async def metrics(request: Request) -> Response:
    if not api_state(request).settings.metrics_enabled:
        raise ApiError(404, "metrics are disabled; set METRICS_ENABLED=1", code="not_found")
    from crew.observability.metrics import exposition

    body, content_type = exposition()
    return Response(body, headers={"Content-Type": content_type})


@endpoint(
    "GET",
    "/openapi.json",
    summary="This API's OpenAPI 3.1 document",
    tag="system",
    public=True,
    responses={200: Reply("The document.", None)},
)
async def openapi(request: Request) -> Response:
    return render(document(request.scope.get("root_path", "")))
