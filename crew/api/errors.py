"""One JSON error shape for every failure: `{"detail", "code", "request_id"}` (+ `errors`).

Handlers never include a traceback or a driver message: a client sees what it can act
on, the server log keeps the rest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import Response

from crew.domain.errors import CrewError, bounded_problems
from crew.domain.limits import MAX_MESSAGE_CHARS, cut, quote_cut

STATUS_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "unprocessable",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error the API answers with; `errors` lists validation problems."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str | None = None,
        errors: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        # Bounded whoever raised it, as CrewError is: no answer echoes a huge input whole.
        detail = cut(detail, MAX_MESSAGE_CHARS)
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code or STATUS_CODES.get(status, "error")
        self.errors = bounded_problems(errors) if errors is not None else None
        self.headers = dict(headers or {})

    @classmethod
    def invalid(cls, detail: str, errors: Sequence[str] | None = None) -> ApiError:
        return cls(400, detail, code="invalid_request", errors=errors or [detail])

    @classmethod
    def missing(cls, kind: str, identifier: str) -> ApiError:
        """404 for an id that names no row: `kind` is `run`, `node`, `artifact`..."""
        return cls(404, f"no {kind} with id {quote_cut(identifier)}", code="not_found")

    @classmethod
    def from_crew(cls, error: CrewError) -> ApiError:
        status = error.http_status if error.http_status in STATUS_CODES else 500
        if status >= 500 and status != 503:
            return cls(500, "internal error", code="internal_error")
        errors = error.problems or ([error.message] if status == 400 else None)
        return cls(status, error.message, code=error.code, errors=errors)


def error_body(error: ApiError, request_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": error.detail, "code": error.code, "request_id": request_id}
    if error.errors is not None:
        body["errors"] = error.errors
    return body


def error_response(error: ApiError, request_id: str) -> Response:
    headers = dict(error.headers)
    if error.status == 401:
        headers.setdefault("WWW-Authenticate", 'ApiKey header="X-API-Key"')
    return Response(
        json.dumps(error_body(error, request_id), ensure_ascii=False),
        status_code=error.status,
        headers=headers,
        media_type="application/json",
    )
