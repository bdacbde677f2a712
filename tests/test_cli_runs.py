"""`crew runs list` and `crew runs show`: JSON shapes, filters, prefixes, exit codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from engine_support import Store, keyed, n, plan_dict, setup_cli_env, use_provider
from fakes import ScriptedProvider, unavailable
from typer.testing import CliRunner

from crew.cli.main import app

CHAIN = plan_dict(n("m", type="manage"), n("a", "m"), n("b", "a"))


@pytest.fixture(autouse=True)
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup_cli_env(tmp_path, monkeypatch)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def start_run(tmp_path: Path, run_id: str, *extra: str, code: int = 0) -> dict[str, Any]:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(CHAIN), encoding="utf-8")
    result = invoke("run", "--task-file", str(path), "--run-id", run_id, "--json", *extra)
    assert result.exit_code == code, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_runs_list_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start_run(tmp_path, "first")
    use_provider(
        monkeypatch, ScriptedProvider(default=keyed({"a": unavailable("400", retryable=False)}))
    )
    start_run(tmp_path, "second", code=1)
    result = invoke("runs", "list", "--json")
    assert result.exit_code == 0
    items = json.loads(result.stdout)
    assert [item["id"] for item in items] == ["second", "first"]  # newest first
    required = {"id", "title", "status", "created_at", "started_at", "ended_at", "nodes"}
    assert all(required | {"cost_usd"} <= set(item) for item in items)
    second, first = items
    assert first["status"] == "completed" and second["status"] == "failed"
    assert first["nodes"] == {"total": 3, "completed": 3, "failed": 0, "skipped": 0}
    assert second["nodes"] == {"total": 3, "completed": 1, "failed": 1, "skipped": 1}
    assert first["cost_usd"] == 0.0 and first["title"] == "Rapport test"
    for key in ("created_at", "started_at", "ended_at"):
        assert datetime.fromisoformat(first[key]).utcoffset() == timedelta(0)
    assert "owner" not in first and "heartbeat_at" not in first

    failed = json.loads(invoke("runs", "list", "--json", "--status", "failed").stdout)
    assert [item["id"] for item in failed] == ["second"]
    limited = json.loads(invoke("runs", "list", "--json", "--limit", "1").stdout)
    assert [item["id"] for item in limited] == ["second"]
    assert invoke("runs", "list", "--status", "nope").exit_code == 2
    assert invoke("runs", "list", "--limit", "0").exit_code == 2

    table = invoke("runs", "list")
    assert table.exit_code == 0 and "second" in table.stdout and "failed" in table.stdout


def test_runs_list_empty() -> None:
    result = invoke("runs", "list", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    assert invoke("runs", "list").exit_code == 0


def test_runs_show_json_with_a_prefix(tmp_path: Path) -> None:
    summary = start_run(tmp_path, "show-me-1")
    result = invoke("runs", "show", "show-me", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["id"] == summary["run_id"] and data["status"] == "completed"
    assert data["title"] == "Rapport test"
    assert data["input_tokens"] == summary["input_tokens"] and data["cost_usd"] == 0.0
    assert data["options"]["max_concurrency"] == 4
    assert data["owner"] is None and data["lease"] == "free" and "heartbeat_at" not in data
    nodes = data["nodes"]
    assert [node["key"] for node in nodes] == ["m", "a", "b"]
    for node in nodes:
        assert {"status", "role", "attempts", "started_at", "ended_at", "error"} <= set(node)
        assert node["status"] == "completed" and node["attempts"] == 1
    assert nodes[0]["role"] == "Manager_Generic"
    by_type: dict[str, list[dict[str, Any]]] = {}
    for artifact in data["artifacts"]:
        by_type.setdefault(artifact["type"], []).append(artifact)
        assert (tmp_path / "runs" / artifact["path"]).is_file()
        assert "content" not in artifact
    assert [a["node_key"] for a in by_type["markdown"]] == ["a", "b"]
    assert [a["node_key"] for a in by_type["manager"]] == ["m"]
    assert len(by_type["sidecar"]) == 3 and len(by_type["summary"]) == 1

    human = invoke("runs", "show", "show-me")
    assert human.exit_code == 0
    assert "show-me-1" in human.stdout and "markdown" in human.stdout


def test_runs_show_unknown_or_ambiguous_exits_2(tmp_path: Path) -> None:
    start_run(tmp_path, "twin-1")
    start_run(tmp_path, "twin-2")
    unknown = invoke("runs", "show", "nope", "--json")
    assert unknown.exit_code == 2 and unknown.stdout == "" and "nope" in unknown.stderr
    ambiguous = invoke("runs", "show", "twin")
    assert ambiguous.exit_code == 2 and "twin-1" in ambiguous.stderr


def test_readers_show_a_dead_executor_without_changing_the_run(tmp_path: Path) -> None:
    """A run whose executor died stays `running` for the worker that will recover it;
    readers show whose lease expired, and write nothing."""
    start_run(tmp_path, "dead", "--dry-run")
    store = Store(tmp_path)
    old = datetime.now(UTC) - timedelta(minutes=5)
    before = [e.type for e in store.events("dead")]

    async def fake_dead_process(repo: Any) -> None:
        await repo.update_run(
            "dead", status="running", owner="gone:1:x", heartbeat_at=old, lease_expires_at=old
        )

    store.call(fake_dead_process)
    items = json.loads(invoke("runs", "list", "--json").stdout)
    assert items[0]["status"] == "running"
    data = json.loads(invoke("runs", "show", "dead", "--json").stdout)
    assert data["status"] == "running" and data["owner"] == "gone:1:x"
    assert data["lease"] == "expired"
    shown = " ".join(invoke("runs", "show", "dead").stdout.split())  # unwrapped
    assert "gone:1:x" in shown and "a worker will take the run over" in shown
    assert [e.type for e in store.events("dead")] == before
