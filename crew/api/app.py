"""The app factory: `create_app(settings) -> Starlette`.

Middleware, outermost first: CORS (so even a 401 carries its headers and preflights need
no key), the request pipeline (request id, time zone, auth, body limit, access log, JSON
errors), gzip for large responses (never for the event stream). The database opens in the
lifespan; shutting down cancels the runs in flight, which the engine leaves `interrupted`.

Observability hooks (crew.observability.hooks) come from the settings: the metrics and
Sentry modules are imported only when METRICS_ENABLED / SENTRY_DSN turn them on.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from crew.agents.roles import BUILTIN_ROLES
from crew.api.errors import ApiError, error_response
from crew.api.middleware import KeyChecker, RequestMiddleware
from crew.api.spec import ENDPOINTS
from crew.api.state import ApiState
from crew.domain.errors import ConfigError, CrewError
from crew.engine.gc_policy import freeze_long_lived_objects
from crew.observability.hooks import Hooks, server_hooks
from crew.settings import Settings

EXPOSED_HEADERS = ["X-Request-ID", "X-Total-Count", "Link", "Location", "Retry-After"]
GZIP_MIN_BYTES = 1024


def create_app(
    settings: Settings,
    *,
    insecure_no_auth: bool = False,
    heartbeat_s: float = 15.0,
    poll_s: float = 0.25,
    registry_factory: Callable[[Settings], Any] | None = None,
    hooks: Hooks | None = None,
) -> Starlette:
    """Build the API over `settings.database_url`.

    Without API keys the app refuses to build unless `insecure_no_auth` (the CLI only
    allows that on a loopback host). `heartbeat_s`/`poll_s` tune the event stream (tests
    shorten them); `registry_factory` builds the LLM provider registry (tests inject fakes);
    `hooks` defaults to what the settings turn on (metrics, Sentry).
    """
    if not settings.api_keys and not insecure_no_auth:
        raise ConfigError("no API key configured: set API_KEY (a comma-separated list is allowed)")
    from crew.api.routes import load

    load()
    hooks = hooks if hooks is not None else server_hooks(settings, BUILTIN_ROLES)
    state = ApiState(
        settings,
        heartbeat_s=heartbeat_s,
        poll_s=poll_s,
        registry_factory=registry_factory,
        hooks=hooks,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.open()
        # Everything loaded by now lives as long as the server: out of the collector's
        # full passes, which otherwise stall requests (the events p99) for tens of ms.
        freeze_long_lived_objects()
        try:
            yield
        finally:
            await state.close()
            for on_exit in hooks.on_exit:
                on_exit()

    routes = [Route(ep.path, ep.handler, methods=[ep.method]) for ep in ENDPOINTS]
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=[
                "X-API-Key",
                "X-Request-ID",
                "X-Timezone",
                "Content-Type",
                "Idempotency-Key",
                "Last-Event-ID",
            ],
            expose_headers=EXPOSED_HEADERS,
        ),
        Middleware(
            RequestMiddleware,
            keys=KeyChecker(settings.api_keys),
            routes=routes,
            observe=hooks.http,
            report_error=hooks.report_error,
        ),
        Middleware(GZipMiddleware, minimum_size=GZIP_MIN_BYTES),
    ]
    handlers: dict[Any, Any] = {
        HTTPException: _http_error,
        ApiError: _api_error,
        CrewError: _crew_error,
    }
    app = Starlette(
        routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan
    )
    app.state.crew = state
    return app


def _request_id(request: Request) -> str:
    return str(request.scope.get("crew.request_id", ""))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError(404, f"no such path: {request.url.path}", code="not_found")
    elif exc.status_code == 405:
        error = ApiError(
            405,
            f"method {request.method} not allowed on {request.url.path}",
            code="method_not_allowed",
            headers=dict(exc.headers or {}),
        )
    else:
        error = ApiError(exc.status_code, str(exc.detail))
    return error_response(error, _request_id(request))


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc, _request_id(request))


async def _crew_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CrewError)
    return error_response(ApiError.from_crew(exc), _request_id(request))


def app_from_environment() -> Starlette:
    """Factory for uvicorn's import string (`--workers N`, `--reload`): settings from env.

    Each worker process configures its own logging and Sentry, as `crew serve` does for
    a single process.
    """
    from pathlib import Path

    from crew.observability.logging import configure_logging
    from crew.settings import load_settings

    env_file = os.environ.get("CREW_SERVE_ENV_FILE")
    settings = load_settings(env_file=Path(env_file) if env_file else None)
    configure_logging(settings, verbose=os.environ.get("CREW_SERVE_VERBOSE") == "1")
    if settings.sentry_dsn:
        from crew.observability.sentry import init_sentry

        init_sentry(settings, component="serve")
    insecure = os.environ.get("CREW_SERVE_INSECURE_NO_AUTH") == "1"
    return create_app(settings, insecure_no_auth=insecure)
