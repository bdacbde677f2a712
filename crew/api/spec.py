"""The route table: each endpoint once, with what the OpenAPI document says about it.

Routes register themselves with `endpoint(...)`; the app builds its Starlette routes and
`/openapi.json` from the same list, so the document cannot forget an endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    location: str  # "query", "path" or "header"
    schema: dict[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    description: str
    schema: str | None = None
    """A component name; None for no JSON body."""
    media_type: str = "application/json"
    headers: tuple[str, ...] = ()


@dataclass(slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    params: Sequence[Param] = ()
    body: str | None = None
    responses: dict[int, Reply] = field(default_factory=dict)
    public: bool = False


ENDPOINTS: list[Endpoint] = []


def endpoint(
    method: str,
    path: str,
    *,
    summary: str,
    tag: str,
    params: Sequence[Param] = (),
    body: str | None = None,
    responses: dict[int, Reply],
    public: bool = False,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ENDPOINTS.append(
            Endpoint(method, path, handler, summary, tag, params, body, responses, public)
        )
        return handler

    return register


def limit_offset() -> list[Param]:
    return [
        Param(
            "limit",
            "query",
            {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
            "Page size (1..200).",
        ),
        Param(
            "offset",
            "query",
            {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "default": 0},
            "Items to skip.",
        ),
    ]


def order_by(allowed: Sequence[str], default: str) -> Param:
    values = [*allowed, *(f"-{a}" for a in allowed)]
    return Param(
        "order_by",
        "query",
        {"type": "string", "enum": values, "default": default},
        f"Sort field ({', '.join(allowed)}); prefix with - for descending. "
        "Ties are broken by id. An unknown field is a 400 listing the allowed ones.",
    )


def text_param(name: str, description: str, enum: Sequence[str] | None = None) -> Param:
    schema: dict[str, Any] = {"type": "string", "maxLength": 256}
    if enum is not None:
        schema = {"type": "string", "enum": list(enum)}
    return Param(name, "query", schema, description)


def time_param(name: str, description: str) -> Param:
    return Param(
        name,
        "query",
        {"type": "string", "format": "date-time"},
        description + " ISO 8601; an offset is honoured (compared as an instant), none means UTC.",
    )


def path_id(name: str, what: str) -> Param:
    return Param(name, "path", {"type": "string", "maxLength": 128}, f"The {what} id.", True)


ERRORS = {
    400: Reply("Invalid request (query, body or X-Timezone).", "Error"),
    401: Reply("Missing or invalid X-API-Key.", "Error"),
    404: Reply("Not found.", "Error"),
    503: Reply("The database is unavailable.", "Error"),
}


def replies(ok: dict[int, Reply], *codes: int) -> dict[int, Reply]:
    result = dict(ok)
    for code in codes:
        result[code] = ERRORS[code] if code in ERRORS else Reply(f"Error {code}.", "Error")
    return result


def item_replies(description: str, schema: str) -> dict[int, Reply]:
    """The replies of one row named by the path: the row, or 404 when there is none."""
    return replies({200: Reply(description, schema)}, 400, 401, 404, 503)


def page_replies(what: str, schema: str, *, owned: bool = True) -> dict[int, Reply]:
    """The replies of a paged list of `what` (schema `schema`): the page with its
    X-Total-Count and Link headers, and 404 when the list belongs to a missing `owned` row."""
    page = Reply(f"A page of {what}.", schema, headers=("X-Total-Count", "Link"))
    return replies({200: page}, 400, 401, *((404,) if owned else ()), 503)
