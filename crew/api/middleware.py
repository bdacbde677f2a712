"""The request pipeline every route shares, as one pure ASGI middleware.

In order: a request id (the client's if it is well formed, also put in the logging
context), 405 for a method the path does not declare (before any header is judged: the
answer depends on the route table only), the X-Timezone check, the API key, 404 for a
path holding a NUL (no id holds one; PostgreSQL would fail on it), the body size limit;
then the route; then
the X-Request-ID header on whatever answer went out, one access-log line, the request's
metrics (when METRICS_ENABLED) and a JSON 500 (never a traceback) when a route raised
something unexpected, reported to Sentry when SENTRY_DSN is set. One middleware rather
than five keeps the per-request cost of the read path low; the metrics and Sentry hooks
are None when those are off, so they cost nothing then.

The route is the route's template (`/runs/{run_id}`), never the raw path, in the access
line and the metrics alike; a path no route matches is `unmatched`.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crew.api.errors import ApiError, error_response
from crew.api.params import KEY_PATTERN
from crew.domain.errors import CrewError
from crew.domain.limits import quote_cut
from crew.observability import context
from crew.observability.hooks import ErrorReporter, HttpObserver

log = logging.getLogger("crew.api")
access_log = logging.getLogger("crew.api.access")

MAX_BODY_BYTES = 1024 * 1024
UNMATCHED = "unmatched"
PUBLIC_PATHS = frozenset({"/health", "/metrics", "/openapi.json"})
QUERY_KEY_PATHS = frozenset({"/events/stream"})
"""Browsers' EventSource cannot send headers: this path also takes `?api_key=`."""


class _BodyTooLarge(Exception):
    pass


class KeyChecker:
    """Constant-time comparison against every configured key (rotation)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [key.encode() for key in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def match(self, candidate: str | None) -> int | None:
        """The index of the matching key; every key is compared, so timing says nothing."""
        if candidate is None:
            return None
        given = candidate.encode()
        found = None
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(given, key) and found is None:
                found = index
        return found


@lru_cache(maxsize=1)
def zone_names() -> tuple[str, ...]:
    """The IANA zone names X-Timezone accepts, sorted; /openapi.json lists the same."""
    return tuple(sorted(available_timezones()))


@lru_cache(maxsize=1)
def _zone_set() -> frozenset[str]:
    return frozenset(zone_names())


def _zone(name: str) -> ZoneInfo:
    # Only listed names: ZoneInfo would also open other files of the zone database.
    if name not in _zone_set():
        raise ValueError(name)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(name) from None


class RequestMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keys: KeyChecker,
        routes: Sequence[BaseRoute] = (),
        observe: HttpObserver | None = None,
        report_error: ErrorReporter | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.routes = list(routes)
        self.observe = observe
        self.report_error = report_error
        self._zones: dict[str, ZoneInfo] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = _headers(scope)
        request_id = headers.get("x-request-id", "")
        if not KEY_PATTERN.match(request_id):
            request_id = uuid.uuid4().hex
        scope["crew.request_id"] = request_id
        token = context.request_id.set(request_id)
        outcome = {"status": 500, "started": False}
        header_value = request_id.encode()

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"] = message["status"]
                outcome["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", header_value)]
            await send(message)

        try:
            self._check_method(scope)
            self._check(scope, headers)
            receive = self._limited(headers, receive)
            await self.app(scope, receive, send_wrapped)
        except ApiError as error:
            await self._answer(error, scope, receive, send_wrapped, outcome)
        except _BodyTooLarge:
            await self._answer(_too_large(), scope, receive, send_wrapped, outcome)
        except CrewError as error:
            await self._answer(ApiError.from_crew(error), scope, receive, send_wrapped, outcome)
        except Exception as error:
            log.exception(
                "unhandled error in %s %s (request %s)", scope["method"], scope["path"], request_id
            )
            if self.report_error is not None:
                self.report_error(
                    error,
                    {"request_id": request_id, "route": self._template(scope)},
                )
            internal = ApiError(500, "internal error", code="internal_error")
            await self._answer(internal, scope, receive, send_wrapped, outcome)
        finally:
            elapsed = time.perf_counter() - started
            template = self._template(scope)
            if self.observe is not None:
                self.observe(scope["method"], template, outcome["status"], elapsed)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %s %.1fms request_id=%s",
                    scope["method"],
                    template,
                    outcome["status"],
                    elapsed * 1000,
                    request_id,
                    extra={
                        "method": scope["method"],
                        "route": template,
                        "status": outcome["status"],
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )
            context.request_id.reset(token)

    def _template(self, scope: Scope) -> str:
        """The matched route's template; for a request refused before routing (401, 413,
        a bad X-Timezone) the route it was meant for; `unmatched` when none fits."""
        route = scope.get("route")
        if route is None:
            for candidate in self.routes:
                match, _ = candidate.matches(scope)
                if match is not Match.NONE:
                    route = candidate
                    break
        return getattr(route, "path", None) or UNMATCHED

    def _check_method(self, scope: Scope) -> None:
        """405 when routes match the path but none the method, whatever the headers say."""
        allowed: set[str] = set()
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return
            if match is Match.PARTIAL:
                allowed.update(getattr(route, "methods", None) or ())
        if allowed:
            raise ApiError(
                405,
                f"method {quote_cut(scope['method'])} not allowed on {quote_cut(scope['path'])}",
                code="method_not_allowed",
                headers={"Allow": ", ".join(sorted(allowed))},
            )

    def _check(self, scope: Scope, headers: dict[str, str]) -> None:
        zone_name = headers.get("x-timezone")
        if zone_name is not None:
            zone = self._zones.get(zone_name)
            if zone is None:
                try:
                    zone = _zone(zone_name)
                except ValueError:
                    raise ApiError(
                        400,
                        f"X-Timezone {quote_cut(zone_name)} is not an IANA time zone "
                        "(e.g. Europe/Paris, UTC)",
                        code="invalid_timezone",
                        errors=["X-Timezone: unknown time zone"],
                    ) from None
                if len(self._zones) < 1024:
                    self._zones[zone_name] = zone
            scope["crew.tz"] = zone
        path = scope["path"]
        if not self.keys.enabled or path in PUBLIC_PATHS or scope["method"] == "OPTIONS":
            scope["crew.api_key"] = "anonymous"
            return
        given = headers.get("x-api-key")
        if given is None and path in QUERY_KEY_PATHS:
            given = _query_value(scope, "api_key")
        index = self.keys.match(given)
        if index is None:
            detail = "missing X-API-Key header" if given is None else "invalid API key"
            raise ApiError(401, detail, code="unauthorized")
        scope["crew.api_key"] = f"key{index}"
        if "\x00" in path:
            raise ApiError(404, f"no such path: {quote_cut(path)}", code="not_found")

    def _limited(self, headers: dict[str, str], receive: Receive) -> Receive:
        length = headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise ApiError.invalid("invalid Content-Length header") from None
            if declared > MAX_BODY_BYTES:
                raise _BodyTooLarge()
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise _BodyTooLarge()
            return message

        return receive_limited

    async def _answer(
        self, error: ApiError, scope: Scope, receive: Receive, send: Send, outcome: dict[str, Any]
    ) -> None:
        if outcome["started"]:  # too late for an error response: the client sees a cut
            return
        await error_response(error, scope["crew.request_id"])(scope, receive, send)


def _too_large() -> ApiError:
    return ApiError(
        413, f"request body larger than {MAX_BODY_BYTES} bytes", code="payload_too_large"
    )


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _query_value(scope: Scope, name: str) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0] if values else None
