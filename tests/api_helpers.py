"""Helpers for the API tests: an app over a fresh database, seeding through the repository."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    # The test client warns that it prefers another HTTP package; httpx is what crew has.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from crew.api.app import create_app
from crew.settings import settings_from_values
from crew.store.records import NewEvent, NewNode

KEY = "test-key-1"
H = {"X-API-Key": KEY}
T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


@contextmanager
def api(db_url: str, tmp_path: Path, *, migrate: bool = True, **env: Any) -> Iterator[TestClient]:
    values = {
        "API_KEY": f"{KEY},second-key",
        "RUNS_ROOT": str(tmp_path / "runs"),
        "DATABASE_URL": db_url,
        **{k: str(v) for k, v in env.items()},
    }
    if migrate and db_url.startswith("postgresql"):
        from crew.store import migrate as migrations

        migrations.upgrade(db_url)
    app = create_app(settings_from_values(values), heartbeat_s=0.2, poll_s=0.02)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def repo(client: TestClient) -> Any:
    return client.app.state.crew.repo  # type: ignore[attr-defined]


def call(client: TestClient, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a coroutine function on the app's event loop."""
    assert client.portal is not None
    return client.portal.call(lambda: fn(*args, **kwargs))


async def seed_run(
    r: Any,
    *,
    run_id: str | None = None,
    title: str = "Run",
    status: str = "completed",
    created: datetime = T0,
    started: datetime | None = T0,
    ended: datetime | None = None,
    nodes: int = 2,
    events: int = 3,
    **columns: Any,
) -> str:
    run_id = run_id or str(uuid.uuid4())
    new_nodes = [
        NewNode(
            key=f"n{i}",
            position=i,
            title=f"Node {i}",
            type="task",
            role="Writer_FR",
            deps=[],
            spec={"id": f"n{i}", "title": f"Node {i}"},
            status="completed",
        )
        for i in range(nodes)
    ]
    await r.create_run(
        run_id=run_id,
        title=title,
        status=status,
        options={},
        task_spec={},
        request_id=None,
        nodes=new_nodes,
    )
    await r.update_run(run_id, created_at=created, started_at=started, ended_at=ended, **columns)
    batch = [
        NewEvent(
            run_id=run_id,
            type="LLM_CALL" if i % 2 else "NODE_STARTED",
            level="warning" if i == 1 else "info",
            message=f"event number {i}",
            payload={"i": i},
            node_key="n0" if i % 2 else None,
            timestamp=T0 + timedelta(minutes=i),
        )
        for i in range(events)
    ]
    await r.add_events(batch)
    return run_id


def wait_status(client: TestClient, run_id: str, statuses: set[str], timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        data = client.get(f"/runs/{run_id}", headers=H).json()
        if data.get("status") in statuses:
            return dict(data)
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} stayed {data.get('status')}")
        time.sleep(0.05)


def assert_error(response: Any, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"detail", "code", "request_id"}, body
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    if code is not None:
        assert body["code"] == code, body
    return dict(body)


def sse_events(client: TestClient, url: str, headers: dict[str, str] | None = None) -> list:
    """The (id, event, data, comments) of a stream, read until the server closes it."""
    import json

    events: list[dict[str, Any]] = []
    comments: list[str] = []
    current: dict[str, Any] = {}
    with client.stream("GET", url, headers=headers or H) as stream:
        assert stream.status_code == 200, stream.read()
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith(":"):
                comments.append(line)
            elif line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and current:
                events.append(current)
                current = {}
    return [events, comments]
