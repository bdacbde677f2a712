"""Sentry end to end: sentry-sdk sends to a local HTTP server standing in for Sentry.

Reported: an unhandled API error, a failed node and its failed run, with their tags.
Never sent: prompt text, the API key, the OpenAI key, the Authorization header.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from crew.llm.registry import ProviderRegistry
from crew.settings import Settings, settings_from_values
from tests.fakes import ScriptedProvider, unavailable

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

KEY = "sentry-test-api-key-0001"
OPENAI_KEY = "sk-test-0123456789abcdefSECRET"
PROMPT_MARK = "PROMPT-TEXT-7f3a"
PLAN = {
    "title": "Sentry plan",
    "plan": [
        {
            "id": "n1",
            "title": f"Write about {PROMPT_MARK}",
            "acceptance": [f"mentions {PROMPT_MARK}"],
            "suggested_agent_role": "Researcher",
        }
    ],
}


class _Collector(BaseHTTPRequestHandler):
    received: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        elif encoding == "br":
            import brotli  # type: ignore[import-not-found]

            body = brotli.decompress(body)
        self.server.received.append(body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def sentry_server() -> Iterator[tuple[str, list[bytes]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://publickey@127.0.0.1:{server.server_address[1]}/42", server.received  # type: ignore[attr-defined]
    finally:
        import sentry_sdk

        sentry_sdk.get_client().close(timeout=2)
        sentry_sdk.init(dsn=None)
        server.shutdown()
        server.server_close()


def _events(received: list[bytes]) -> list[dict[str, Any]]:
    """Every event item of every envelope received."""
    events = []
    for body in received:
        lines = body.split(b"\n")
        for index, line in enumerate(lines[1:], start=1):
            try:
                header = json.loads(line)
            except ValueError:
                continue
            if isinstance(header, dict) and header.get("type") == "event":
                events.append(json.loads(lines[index + 1]))
    return events


def _failing_registry(settings: Settings) -> ProviderRegistry:
    registry = ProviderRegistry(settings)
    registry.register(
        "offline", ScriptedProvider(default=unavailable("connection refused", retryable=False))
    )
    return registry


def test_errors_reach_sentry_with_tags_and_without_secrets(
    sentry_server: tuple[str, list[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sentry_sdk

    from crew.api import routes
    from crew.api.app import create_app
    from crew.observability.sentry import init_sentry

    dsn, received = sentry_server
    settings = settings_from_values(
        {
            "API_KEY": KEY,
            "OPENAI_API_KEY": OPENAI_KEY,
            "RUNS_ROOT": str(tmp_path / "runs"),
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'crew.db'}",
            "SENTRY_DSN": dsn,
            "SENTRY_ENV": "test",
            "RELEASE": "crew@test",
            "NODE_RETRIES": "0",
        }
    )
    assert init_sentry(settings, component="serve")

    routes.load()
    from crew.api.routes import system

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"render failed; key {KEY}, Authorization: Bearer {OPENAI_KEY}")

    monkeypatch.setattr(system, "render", broken)
    app = create_app(settings, registry_factory=_failing_registry, heartbeat_s=0.2, poll_s=0.02)
    headers = {"X-API-Key": KEY, "Authorization": f"Bearer {OPENAI_KEY}"}
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/health", headers={**headers, "X-Request-ID": "req-health-1"})
        assert r.status_code == 500 and "Traceback" not in r.text
        r = client.post(
            "/tasks",
            json={"title": "Sentry", "task_spec": PLAN},
            headers={**headers, "X-Request-ID": "req-task-1"},
        )
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        deadline = time.monotonic() + 10
        while client.get(f"/runs/{run_id}", headers=headers).json()["status"] != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.1)  # the RUN_FAILED listener runs right after the status commit
    sentry_sdk.flush(timeout=5)
    deadline = time.monotonic() + 5
    while len(_events(received)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)

    events = _events(received)
    raw = b"\n".join(received).decode("utf-8", "replace")
    for secret in (PROMPT_MARK, KEY, OPENAI_KEY):
        assert secret not in raw, f"{secret} was sent to Sentry"

    api_error = [e for e in events if e.get("exception")]
    assert len(api_error) == 1, events
    assert api_error[0]["tags"]["request_id"] == "req-health-1"
    assert api_error[0]["tags"]["route"] == "/health"
    assert api_error[0]["environment"] == "test" and api_error[0]["release"] == "crew@test"
    assert "[redacted]" in json.dumps(api_error[0]["exception"])

    def message(event: dict[str, Any]) -> str:
        return str(event.get("message") or (event.get("logentry") or {}).get("message") or "")

    node = [e for e in events if message(e).startswith("node n1 failed")]
    assert len(node) == 1, [message(e) for e in events]
    tags = node[0]["tags"]
    assert tags["run_id"] == run_id and tags["node_key"] == "n1"
    assert tags["role"] == "Researcher" and tags["request_id"] == "req-task-1"
    run = [e for e in events if message(e).startswith("run failed")]
    assert len(run) == 1
    assert run[0]["tags"]["run_id"] == run_id and run[0]["tags"]["request_id"] == "req-task-1"
    for event in events:
        assert "extra" not in event or not event["extra"]
        assert not (event.get("request") or {}).get("headers")
        assert not (event.get("request") or {}).get("data")


def test_scrubbing_removes_request_data_and_masks_secrets() -> None:
    from crew.observability.redact import Redactor
    from crew.observability.sentry import scrub_event

    event = {
        "extra": {"prompt": "the whole prompt"},
        "request": {
            "method": "POST",
            "url": "http://h/tasks?api_key=abc12345",
            "headers": {"Authorization": "Bearer xyz"},
            "data": {"title": "body"},
            "cookies": "c=1",
            "query_string": "api_key=abc12345",
        },
        "breadcrumbs": {"values": [{"message": f"key {KEY}", "data": {"body": "x"}}]},
        "exception": {"values": [{"stacktrace": {"frames": [{"vars": {"prompt": "p"}}]}}]},
        "message": f"failed with {KEY}",
    }
    cleaned = scrub_event(event, Redactor([KEY]))
    assert "extra" not in cleaned
    assert cleaned["request"] == {"method": "POST", "url": "http://h/tasks"}
    assert cleaned["breadcrumbs"]["values"] == [{"message": "key [redacted]"}]
    assert "vars" not in cleaned["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert cleaned["message"] == "failed with [redacted]"


def test_sentry_is_off_without_a_dsn() -> None:
    from crew.observability.sentry import init_sentry

    assert init_sentry(settings_from_values({}), component="run") is False
