"""Starting, following, cancelling and resuming runs through the API (ASGI app)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.api_helpers import (
    KEY,
    H,
    api,
    assert_error,
    call,
    repo,
    seed_run,
    sse_events,
    wait_status,
)

DEMO = {"title": "Demo", "task_spec": {"type": "demo"}}
DONE = {"completed", "failed", "canceled", "interrupted"}


@pytest.fixture
def client(sqlite_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    with api(sqlite_url, tmp_path) as c:
        yield c


def test_demo_task_runs_and_request_id_reaches_every_event(db_url: str, tmp_path: Path) -> None:
    with api(db_url, tmp_path) as client:
        r = client.post("/tasks", headers={**H, "X-Request-ID": "req-42"}, json=DEMO)
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "accepted" and body["location"] == f"/runs/{body['run_id']}"
        assert r.headers["location"] == body["location"]
        run = wait_status(client, body["run_id"], DONE)
        assert run["status"] == "completed" and run["request_id"] == "req-42"
        events, _ = sse_events(client, f"/events/stream?run_id={body['run_id']}")
        assert [e["event"] for e in events][:2] == ["RUN_STARTED", "PLAN_CREATED"]
        assert events[-1]["event"] == "RUN_COMPLETED"
        assert all(e["data"]["request_id"] == "req-42" for e in events)
        assert all(e["data"]["payload"]["request_id"] == "req-42" for e in events)


def test_sse_resumes_after_last_event_id_and_accepts_query_key(client) -> None:  # type: ignore[no-untyped-def]
    run_id = client.post("/tasks", headers=H, json=DEMO).json()["run_id"]
    wait_status(client, run_id, DONE)
    events, _ = sse_events(client, f"/events/stream?run_id={run_id}")
    ids = [e["id"] for e in events]
    again, _ = sse_events(
        client, f"/events/stream?run_id={run_id}", {**H, "Last-Event-ID": str(ids[2])}
    )
    assert [e["id"] for e in again] == ids[3:]
    after, _ = sse_events(
        client, f"/events/stream?run_id={run_id}&after_id={ids[-2]}&api_key={KEY}", {}
    )
    assert [e["id"] for e in after] == ids[-1:]
    assert_error(client.get("/events/stream?run_id=nope", headers=H), 404)
    assert_error(client.get(f"/events/stream?run_id={run_id}&api_key=wrong"), 401)
    assert_error(client.get("/events/stream", headers=H), 400)


def test_stream_heartbeats_then_ends_when_a_queued_run_is_canceled(
    sqlite_url: str, tmp_path: Path
) -> None:
    # queue-only server: the seeded run (it has no real plan) must stay queued
    with api(sqlite_url, tmp_path, SERVE_EMBEDDED_WORKER="false") as client:
        _stream_until_canceled(client)


def _stream_until_canceled(client) -> None:  # type: ignore[no-untyped-def]
    run_id = call(client, seed_run, repo(client), status="queued", started=None, events=0)
    import threading

    def cancel_later() -> None:
        import time

        time.sleep(0.6)
        assert client.post(f"/runs/{run_id}/cancel", headers=H).status_code == 202

    thread = threading.Thread(target=cancel_later)
    thread.start()
    events, comments = sse_events(client, f"/events/stream?run_id={run_id}")
    thread.join()
    assert ": heartbeat" in comments
    assert [e["event"] for e in events] == ["RUN_CANCELED"]
    assert_error(client.post(f"/runs/{run_id}/cancel", headers=H), 409, "conflict")
    assert_error(client.post("/runs/nope/cancel", headers=H), 404)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"title": "x"}, "exactly one plan source"),
        ({"task": {"type": "demo"}, "task_spec": {"type": "demo"}}, "given: task, task_spec"),
        ({"task": "a plan"}, "expected a plan object"),
        (
            {
                "task": {
                    "plan": [
                        {"id": "a", "title": "A", "deps": ["b"]},
                        {"id": "b", "title": "B", "deps": ["a"]},
                    ]
                }
            },
            "cycle",
        ),
        ({"task": {"plan": [{"id": "a", "title": "A", "deps": ["zz"]}]}}, "unknown dependency"),
        ({"task": {"plan": []}}, "empty"),
        ({"task": {"plan": [{"id": "../x", "title": "A"}]}}, "'../x'"),
        ({**DEMO, "options": {"dry_run": "yes"}}, "options.dry_run"),
        ({**DEMO, "options": {"llm": {"executor": {"provider": "nope"}}}}, "unknown provider"),
        ({**DEMO, "options": {"llm": {"boss": {}}}}, "unknown role"),
        ({**DEMO, "options": {"max_tokens": 0}}, "max_tokens"),
        ({**DEMO, "options": {"max_cost_usd": -1}}, "max_cost_usd"),
        ({**DEMO, "options": {"resume": True}}, "resume"),
        ({**DEMO, "options": []}, "options: expected an object"),
        ({**DEMO, "extra": 1}, "unknown field 'extra'"),
        ({**DEMO, "request_id": "has space"}, "request_id"),
        ({"task_file": "plan.json"}, "TASKS_DIR"),
        ({"title": 3, "task": {"type": "demo"}}, "title"),
    ],
)
def test_invalid_task_bodies_are_400_with_problems(client, body, fragment) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/tasks", headers=H, json=body)
    errors = assert_error(r, 400)["errors"]
    assert isinstance(errors, list) and any(fragment in e for e in errors), errors


def test_bodies_that_are_not_objects(client) -> None:  # type: ignore[no-untyped-def]
    for raw in (b"", b"[1]", b"{not json", b"\xff\xfe", b"null", b"42"):
        r = client.post("/tasks", headers={**H, "Content-Type": "application/json"}, content=raw)
        assert_error(r, 400)
    big = b'{"title": "' + b"x" * (1024 * 1024) + b'"}'
    assert_error(client.post("/tasks", headers=H, content=big), 413, "payload_too_large")
    # Also without a Content-Length (chunked): counted while reading.
    chunks = iter([b'{"title": "', b"x" * (1024 * 1024), b'"}'])
    assert_error(client.post("/tasks", headers=H, content=chunks), 413)


def test_task_file_only_inside_tasks_dir(sqlite_url: str, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    plan = {"title": "From file", "plan": [{"id": "a", "title": "A"}]}
    (tasks / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    (tmp_path / "secret.json").write_text(json.dumps(plan), encoding="utf-8")
    (tasks / "link.json").symlink_to(tmp_path / "secret.json")
    with api(sqlite_url, tmp_path, TASKS_DIR=tasks) as client:
        r = client.post("/tasks", headers=H, json={"task_file": "plan.json"})
        assert r.status_code == 202, r.text
        assert wait_status(client, r.json()["run_id"], DONE)["title"] == "From file"
        for name in ("../secret.json", str(tmp_path / "secret.json"), "link.json", "nope.json"):
            assert_error(client.post("/tasks", headers=H, json={"task_file": name}), 400)


def test_supervisor_options_and_dry_run(client) -> None:  # type: ignore[no-untyped-def]
    body = {
        "title": "Rapport",
        "description": "a report",
        "acceptance": ["sourced"],
        "options": {
            "use_supervisor": True,
            "dry_run": True,
            "max_tokens": 5000,
            "llm": {"executor": {"provider": "offline", "model": "m1"}},
        },
    }
    r = client.post("/tasks", headers=H, json=body)
    assert r.status_code == 202, r.text
    run = wait_status(client, r.json()["run_id"], DONE)
    assert run["status"] == "completed" and run["options"]["dry_run"] is True
    assert run["options"]["max_tokens"] == 5000
    from crew.api.routes.tasks import LLM_FIELD

    assert run["options"][LLM_FIELD] == {"executor": {"provider": "offline", "model": "m1"}}
    assert run["summary"]["nodes_skipped"] == run["summary"]["nodes_total"] > 0


def test_idempotency_key_returns_the_same_run(client) -> None:  # type: ignore[no-untyped-def]
    first = client.post("/tasks", headers={**H, "Idempotency-Key": "k-1"}, json=DEMO)
    again = client.post("/tasks", headers={**H, "Idempotency-Key": "k-1"}, json=DEMO)
    assert first.status_code == again.status_code == 202
    assert first.json()["run_id"] == again.json()["run_id"]
    other_key = client.post(
        "/tasks", headers={"X-API-Key": "second-key", "Idempotency-Key": "k-1"}, json=DEMO
    )
    assert other_key.json()["run_id"] != first.json()["run_id"]
    assert client.get("/runs", headers=H).json()["total"] == 2


def test_rate_limit_per_key_and_invalid_requests_are_free(sqlite_url: str, tmp_path: Path) -> None:
    with api(sqlite_url, tmp_path, TASKS_RATE_BURST=2, TASKS_RATE_PER_MIN=1) as client:
        for _ in range(5):
            assert_error(client.post("/tasks", headers=H, json={"title": "x"}), 400)
        assert client.post("/tasks", headers=H, json=DEMO).status_code == 202
        assert client.post("/tasks", headers=H, json=DEMO).status_code == 202
        limited = client.post("/tasks", headers=H, json=DEMO)
        assert_error(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) >= 1
        other = client.post("/tasks", headers={"X-API-Key": "second-key"}, json=DEMO)
        assert other.status_code == 202


def test_a_failing_run_does_not_break_later_requests(client) -> None:  # type: ignore[no-untyped-def]
    bad = {
        "task": {"title": "Bad", "plan": [{"id": "a", "title": "A", "llm": {"provider": "openai"}}]}
    }
    r = client.post("/tasks", headers=H, json=bad)
    assert r.status_code == 202
    assert wait_status(client, r.json()["run_id"], DONE)["status"] == "failed"
    ok = client.post("/tasks", headers=H, json=DEMO)
    assert ok.status_code == 202
    assert wait_status(client, ok.json()["run_id"], DONE)["status"] == "completed"
    assert client.get("/health").status_code == 200


def test_queue_bound_cancel_and_resume(sqlite_url: str, tmp_path: Path) -> None:
    with api(sqlite_url, tmp_path, SERVE_MAX_CONCURRENT_RUNS=1, OFFLINE_LATENCY_MS=400) as client:
        first = client.post("/tasks", headers=H, json=DEMO).json()["run_id"]
        second = client.post("/tasks", headers=H, json=DEMO).json()["run_id"]
        wait_status(client, first, {"running"})
        assert client.get(f"/runs/{second}", headers=H).json()["status"] == "queued"
        r = client.post(f"/runs/{first}/cancel", headers=H)
        assert r.status_code == 202 and r.json()["status"] == "cancel_requested"
        assert wait_status(client, first, DONE)["status"] == "canceled"
        assert wait_status(client, second, DONE)["status"] == "completed"
        assert_error(client.post(f"/runs/{second}/resume", headers=H), 409, "conflict")
        resumed = client.post(f"/runs/{first}/resume", headers=H)
        assert resumed.status_code == 202 and resumed.headers["location"] == f"/runs/{first}"
        assert wait_status(client, first, {"completed"})["status"] == "completed"
        assert_error(client.post("/runs/nope/resume", headers=H), 404)


def test_shutdown_gives_runs_back_to_the_queue(sqlite_url: str, tmp_path: Path) -> None:
    """A deploy: the server stops, its run goes back to `queued`, and the next server
    finishes it without anyone resuming anything."""
    with api(sqlite_url, tmp_path, OFFLINE_LATENCY_MS=5000, WORKER_SHUTDOWN_GRACE_S=0) as client:
        run_id = client.post("/tasks", headers=H, json=DEMO).json()["run_id"]
        wait_status(client, run_id, {"running"})
    with api(sqlite_url, tmp_path) as client:
        done = wait_status(client, run_id, {"completed", "failed", "interrupted"})
        assert done["status"] == "completed" and done["lease"] == "free"
        events = client.get(f"/runs/{run_id}/events?limit=200", headers=H).json()["items"]
        types = [e["type"] for e in events]
        assert "RUN_INTERRUPTED" not in types
        released = types.index("RUN_RELEASED")
        resumed = [e for e in events if e["type"] == "RUN_RESUMED"]
        assert len(resumed) == 1 and resumed[0]["payload"]["reason"] == "released"
        assert types.index("RUN_RESUMED") > released


def test_the_supervisor_of_a_request_is_kept_within_its_budget(client) -> None:  # type: ignore[no-untyped-def]
    """The supervisor's calls are reserved against the run's budget in the API too."""
    body = {"title": "Rapport", "options": {"use_supervisor": True, "max_tokens": 10}}
    refused = client.post("/tasks", headers=H, json=body)
    assert refused.status_code == 400, refused.text
    assert refused.json()["code"] == "budget_exceeded" and "budget" in refused.json()["detail"]
    assert client.get("/runs", headers=H).json()["total"] == 0  # no run without a plan
    fits = {"title": "Rapport", "options": {"use_supervisor": True, "max_tokens": 1_000_000}}
    assert client.post("/tasks", headers=H, json=fits).status_code == 202
