"""`crew events tail`: JSON lines, `--since`, following, exit codes, id prefixes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from engine_support import Store, keyed, n, plan_dict, setup_cli_env, use_provider
from fakes import ScriptedProvider, unavailable
from typer.testing import CliRunner

from crew.cli.main import app

CHAIN = plan_dict(n("a"), n("b", "a"), n("c"))
EVENT_KEYS = {"id", "run_id", "timestamp", "type", "level", "node_key", "message", "payload"}


@pytest.fixture(autouse=True)
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup_cli_env(tmp_path, monkeypatch)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def start_run(tmp_path: Path, run_id: str, plan: dict[str, Any] = CHAIN, code: int = 0) -> None:
    path = tmp_path / f"{run_id}.json"
    path.write_text(json.dumps(plan), encoding="utf-8")
    result = invoke("run", "--task-file", str(path), "--run-id", run_id, "-q")
    assert result.exit_code == code, result.output


def lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_no_follow_json_prints_one_object_per_line(tmp_path: Path) -> None:
    start_run(tmp_path, "tail-1")
    result = invoke("events", "tail", "tail-1", "--no-follow", "--json")
    assert result.exit_code == 0, result.output
    events = lines(result)
    assert all(set(event) >= EVENT_KEYS for event in events)
    assert [e["type"] for e in events[:2]] == ["RUN_STARTED", "PLAN_CREATED"]
    assert events[-1]["type"] == "RUN_COMPLETED"
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {e["run_id"] for e in events} == {"tail-1"}
    assert all(e["payload"]["run_id"] == "tail-1" for e in events)
    assert len(events) == len(Store(tmp_path).events("tail-1"))
    assert datetime.fromisoformat(events[0]["timestamp"]).utcoffset() == timedelta(0)


def test_since_and_prefix(tmp_path: Path) -> None:
    start_run(tmp_path, "tail-since")
    start_run(tmp_path, "other")
    everything = lines(invoke("events", "tail", "tail-s", "--no-follow", "--json"))
    cursor = everything[4]["id"]
    after = lines(invoke("events", "tail", "tail-s", "--json", "--since", str(cursor)))
    assert after == everything[5:]
    assert lines(invoke("events", "tail", "tail-s", "--json", "--since", "999999")) == []


def test_text_lines(tmp_path: Path) -> None:
    start_run(tmp_path, "tail-text")
    result = invoke("events", "tail", "tail-text")
    assert result.exit_code == 0
    rows = result.stdout.splitlines()
    assert "RUN_STARTED" in rows[0] and "#" in rows[0]
    assert "NODE_COMPLETED [a]" in result.stdout
    assert "RUN_COMPLETED" in rows[-1]


def test_exit_code_follows_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_provider(
        monkeypatch, ScriptedProvider(default=keyed({"a": unavailable("400", retryable=False)}))
    )
    start_run(tmp_path, "bad", code=1)
    followed = invoke("events", "tail", "bad", "--json")
    assert followed.exit_code == 1
    assert lines(followed)[-1]["type"] == "RUN_FAILED"
    assert invoke("events", "tail", "bad", "--no-follow").exit_code == 1
    assert "run failed" in invoke("events", "tail", "bad").stderr


def test_unknown_run_exits_2() -> None:
    result = invoke("events", "tail", "nothing-here")
    assert result.exit_code == 2 and "nothing-here" in result.stderr


def test_a_run_whose_executor_died_is_followed_until_a_worker_finishes_it(
    tmp_path: Path,
) -> None:
    start_run(tmp_path, "dead", plan_dict(n("a"), n("b", "a")))
    store = Store(tmp_path)
    old = datetime.now(UTC) - timedelta(minutes=1)

    async def fake_dead_process(repo: Any) -> None:
        await repo.update_run(
            "dead",
            status="running",
            ended_at=None,
            owner="gone:1:x",
            heartbeat_at=old,
            lease_expires_at=old,
        )

    store.call(fake_dead_process)
    no_follow = invoke("events", "tail", "dead", "--no-follow", "--json")
    assert no_follow.exit_code == 0  # still running: a reader changes nothing
    assert lines(no_follow)[-1]["type"] == "RUN_COMPLETED"
    assert store.run("dead").status == "running"

    worked = invoke("worker", "--once", "--json")
    assert worked.exit_code == 0, worked.output
    assert json.loads(worked.stdout.splitlines()[-1])["recovered"] == 1

    followed = invoke("events", "tail", "dead", "--json")
    assert followed.exit_code == 0
    events = lines(followed)
    assert events[-1]["type"] == "RUN_COMPLETED"
    resumed = [e for e in events if e["type"] == "RUN_RESUMED"]
    assert resumed[-1]["payload"]["reason"] == "lease_expired"
    assert resumed[-1]["payload"]["previous_owner"] == "gone:1:x"


def test_no_follow_on_a_running_run_exits_0(tmp_path: Path) -> None:
    start_run(tmp_path, "busy", plan_dict(n("a")))
    now = datetime.now(UTC)

    async def fake_live_process(repo: Any) -> None:
        await repo.update_run("busy", status="running", owner="alive:1:x", heartbeat_at=now)

    Store(tmp_path).call(fake_live_process)
    assert invoke("events", "tail", "busy", "--no-follow").exit_code == 0


@pytest.mark.slow
def test_follows_a_run_executed_by_another_process(tmp_path: Path) -> None:
    plan = plan_dict(*(n(f"n{i}") for i in range(8)), n("fin", *(f"n{i}" for i in range(8))))
    (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    env = {**os.environ, "OFFLINE_LATENCY_MS": "150", "MAX_CONCURRENCY": "2"}
    with (tmp_path / "err.txt").open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "crew", "run", "--task-file", "plan.json", "--run-id", "far"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        store = Store(tmp_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            started = (tmp_path / "crew.db").exists() and "far" in store.run_ids()
            if started and any(e.type == "NODE_STARTED" for e in store.events("far")):
                break
            time.sleep(0.05)
        assert store.run("far").status == "running"  # still going when the tail starts
        result = invoke("events", "tail", "far", "--json")
        assert process.wait(timeout=30) == 0, (tmp_path / "err.txt").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert result.exit_code == 0, result.output
    events = lines(result)
    assert events[0]["type"] == "RUN_STARTED" and events[-1]["type"] == "RUN_COMPLETED"
    assert [e["id"] for e in events] == [e.id for e in store.events("far")]


def test_a_reader_that_stops_early_ends_the_tail_quietly(tmp_path: Path) -> None:
    """`crew events tail ID | head -1`: no error message, the status of SIGPIPE."""
    start_run(tmp_path, "long", plan_dict(*(n(f"n{i}") for i in range(120))))
    process = subprocess.Popen(
        [sys.executable, "-m", "crew", "events", "tail", "long", "--json", "--no-follow"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    first = json.loads(process.stdout.readline())
    assert first["type"] == "RUN_STARTED"
    process.stdout.close()  # ~600 events of JSON: far more than a pipe buffers
    with process.stderr:
        stderr = process.stderr.read().decode()
    assert process.wait(timeout=30) == 141, stderr
    assert stderr == ""
