"""Query parameters, pagination, time zones and JSON rendering shared by the routes.

Every parameter is checked before a query runs: a bad value is a 400 naming the
parameter and what it accepts, never a 500 or a silently ignored filter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime, tzinfo
from typing import Any, TypeVar
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from crew.api.errors import ApiError
from crew.domain.limits import quote_cut, text_problem
from crew.store.read_sql import Order

T = TypeVar("T")

MAX_LIMIT = 200
MAX_INTEGER = 2**63 - 1
"""The largest integer both databases store (a 64-bit signed integer)."""
DEFAULT_LIMIT = 50


class Query:
    """Reads a request's query string, collecting every problem before failing."""

    def __init__(self, request: Request, allowed: Iterable[str]) -> None:
        self.params = request.query_params
        self.problems: list[str] = []
        unknown = sorted(set(self.params.keys()) - set(allowed) - {"api_key"})
        for name in unknown:
            self.problems.append(f"unknown query parameter {quote_cut(name)}")
        # A NUL reaching PostgreSQL is a driver error (a 500); no id or filter holds one.
        for name, value in self.params.multi_items():
            problem = text_problem(value)
            if problem is not None and name in allowed:
                self.problems.append(f"{name}: {problem}")

    def text(self, name: str, *, max_length: int = 256) -> str | None:
        value = self.params.get(name)
        if value is None or value == "":
            return None
        if len(value) > max_length:
            self.problems.append(f"{name}: at most {max_length} characters")
            return None
        return value

    def choice(self, name: str, choices: Sequence[str]) -> str | None:
        value = self.text(name)
        if value is not None and value not in choices:
            self.problems.append(f"{name}: {quote_cut(value)} is not one of {', '.join(choices)}")
            return None
        return value

    def integer(self, name: str, default: int | None, low: int, high: int = MAX_INTEGER) -> Any:
        raw = self.params.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < low or value > high:
            bound = f"from {low} to {high}"
            self.problems.append(f"{name}: expected an integer {bound}, got {quote_cut(raw)}")
            return default
        return value

    def timestamp(self, name: str) -> datetime | None:
        """An ISO 8601 instant; without an offset it is read as UTC."""
        raw = self.text(name)
        if raw is None:
            return None
        if "T" in raw and " " in raw:
            raw = raw.replace(" ", "+")  # an unencoded "+01:00" arrives as " 01:00"
        if raw.endswith(("Z", "z")):
            raw = raw[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(raw)
        except ValueError:
            self.problems.append(
                f"{name}: {quote_cut(raw)} is not an ISO 8601 timestamp "
                "(e.g. 2026-01-31T08:00:00+01:00)"
            )
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def order(self, allowed: Sequence[str], default: str) -> list[Order]:
        raw = self.params.get("order_by") or default
        orders: list[Order] = []
        for part in raw.split(","):
            part = part.strip()
            descending = part.startswith("-")
            column = part[1:] if descending else part
            if column not in allowed:
                self.problems.append(
                    f"order_by: unknown field {quote_cut(column)}; allowed: {', '.join(allowed)} "
                    "(prefix with - for descending)"
                )
                return []
            orders.append(Order(column, descending))
        return orders

    def page(self) -> tuple[int, int]:
        return (
            self.integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
            self.integer("offset", 0, 0),
        )

    def check(self) -> None:
        if self.problems:
            raise ApiError.invalid("invalid query parameters", self.problems)


def tz_of(request: Request) -> tzinfo | None:
    zone: tzinfo | None = request.scope.get("crew.tz")
    return zone


def localize(record: T, zone: tzinfo | None) -> T:
    """The record with its timestamps shown in `zone` (the same instants)."""
    if zone is None:
        return record
    changes = {
        f.name: value.astimezone(zone)
        for f in fields(record)  # type: ignore[arg-type]
        if isinstance(value := getattr(record, f.name), datetime)
    }
    return replace(record, **changes)  # type: ignore[type-var]


def render(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=_default)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


class Fragments:
    """Serialized JSON of list items, keyed by what determines them (FIFO-bounded).

    Building and encoding item dicts is most of a list request's cost; an event never
    changes and a run's row changes its `updated_at` whenever it changes, so their JSON
    can be reused across requests.
    """

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._data: dict[Any, str] = {}

    def get(self, key: Any, build: Callable[[], Any]) -> str:
        text = self._data.get(key)
        if text is None:
            text = json.dumps(build(), ensure_ascii=False, separators=(",", ":"), default=_default)
            if len(self._data) >= self.size:
                self._data.pop(next(iter(self._data)))
            self._data[key] = text
        return text


def page_response(
    request: Request,
    items: list[Any],
    total: int,
    limit: int,
    offset: int,
    *,
    next_params: Mapping[str, Any] | None = None,
) -> Response:
    """`{"items","total","limit","offset"}` with X-Total-Count and an RFC 8288 Link."""
    links = []
    base = str(request.url.path)
    query = {k: v for k, v in request.query_params.items() if k != "api_key"}
    if next_params is not None:
        links.append(_link(base, {**query, **next_params}, "next"))
    elif offset + len(items) < total:
        links.append(_link(base, {**query, "limit": limit, "offset": offset + limit}, "next"))
    if offset > 0:
        links.append(
            _link(base, {**query, "limit": limit, "offset": max(0, offset - limit)}, "prev")
        )
    headers = {"X-Total-Count": str(total)}
    if links:
        headers["Link"] = ", ".join(links)
    if items and isinstance(items[0], str):  # pre-serialized fragments
        text = f'{{"items":[{",".join(items)}],"total":{total},"limit":{limit},"offset":{offset}}}'
        return Response(text, headers=headers, media_type="application/json")
    body = {"items": items, "total": total, "limit": limit, "offset": offset}
    return render(body, headers=headers)


def _link(path: str, params: Mapping[str, Any], rel: str) -> str:
    return f'<{path}?{urlencode(params)}>; rel="{rel}"'


KEY_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def each(items: Iterable[T], view: Callable[[T], Any]) -> list[Any]:
    return [view(item) for item in items]
