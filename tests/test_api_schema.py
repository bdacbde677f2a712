"""Property-based: every operation of /openapi.json, with generated inputs, against a live
server. No 5xx, and every response matches the document (status, content type, schema)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crew.api.app import create_app
from crew.settings import settings_from_values
from tests.api_server import serve_in_thread

KEY = "schema-key"
MAX_EXAMPLES = 20


@pytest.mark.slow
def test_openapi_document_holds_for_generated_requests(tmp_path: Path) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    values = {
        "API_KEY": KEY,
        "RUNS_ROOT": str(tmp_path / "runs"),
        "TASKS_RATE_BURST": "1000",
        "TASKS_RATE_PER_MIN": "6000",
    }
    app = create_app(settings_from_values(values), heartbeat_s=0.1, poll_s=0.02)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    with serve_in_thread(app) as base_url:
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        tested: list[str] = []
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path == "/events/stream":
                continue  # an endless stream for live runs; covered by the SSE tests

            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy())
            def check(case: schemathesis.Case) -> None:
                response = case.call(base_url=base_url, headers={"X-API-Key": KEY}, timeout=10)
                case.validate_response(response, checks=checks)

            check()
            tested.append(f"{operation.method.upper()} {operation.path}")
        from crew.api.spec import ENDPOINTS

        expected = {f"{e.method} {e.path}" for e in ENDPOINTS} - {
            "GET /events/stream",
            "GET /openapi.json",
        }
        assert set(tested) == expected, expected - set(tested)
