"""Real `crew run` processes killed mid-run, then resumed.

SIGKILL leaves the run `running` with a heartbeat that stops: the run is refused to a
second process while the heartbeat is fresh, shows as `interrupted` once it is stale
(the test backdates it instead of waiting), and `crew run --resume` finishes it without
executing again any node that had completed. SIGINT / SIGTERM stop the run cleanly:
`interrupted`, exit 130, resumable.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from engine_support import TERMINAL, Store, n, plan_dict, setup_cli_env
from typer.testing import CliRunner

from crew.cli.main import app

pytestmark = pytest.mark.slow

PLAN = plan_dict(
    n("r1"), n("r2"), n("r3"), n("r4"),
    n("m1", "r1", "r2"), n("m2", "r3", "r4"),
    n("s1", "m1"), n("s2", "m2"),
    n("s3", "s1", "s2"),
    n("fin", "s3", type="synthesis"),
)  # fmt: skip
KEYS = [node["id"] for node in PLAN["plan"]]


@pytest.fixture(autouse=True)
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup_cli_env(tmp_path, monkeypatch)
    (tmp_path / "plan.json").write_text(json.dumps(PLAN), encoding="utf-8")


def crew(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """`python -m crew ARGS` in tmp_path with the environment the fixture prepared."""
    env = {**os.environ, "OFFLINE_LATENCY_MS": "200", "MAX_CONCURRENCY": "2"}
    out = (tmp_path / "out.txt").open("ab")
    err = (tmp_path / "err.txt").open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "crew", *args], cwd=tmp_path, env=env, stdout=out, stderr=err
        )
    finally:
        out.close()
        err.close()


def wait_for_completed(store: Store, run_id: str, count: int, process: Any) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be stopped"
        if store.run_ids() and run_id in store.run_ids():
            done = [e for e in store.events(run_id) if e.type == "NODE_COMPLETED"]
            if len(done) >= count:
                return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} nodes completed in time")


def completed_keys(store: Store, run_id: str) -> set[str]:
    return {e.node_key or "" for e in store.events(run_id) if e.type == "NODE_COMPLETED"}


def assert_complete_and_not_redone(
    tmp_path: Path, store: Store, run_id: str, done_before: set[str], *, interrupted: bool
) -> None:
    """`interrupted`: the run was stopped on purpose (RUN_INTERRUPTED); a process killed
    outright records nothing, and the run is simply resumed."""
    events = store.events(run_id)
    types = [e.type for e in events]
    assert types[:2] == ["RUN_STARTED", "PLAN_CREATED"]
    assert types[-1] == "RUN_COMPLETED"
    expected = ["RUN_INTERRUPTED", "RUN_COMPLETED"] if interrupted else ["RUN_COMPLETED"]
    assert [t for t in types if t in TERMINAL] == expected
    assert [e.id for e in events] == sorted({e.id for e in events})
    resumed_at = types.index("RUN_RESUMED")
    if interrupted:
        assert types.index("RUN_INTERRUPTED") < resumed_at
    # the marker: a node executes once per NODE_STARTED; a completed node never again
    after = [e.node_key for e in events[resumed_at:] if e.type == "NODE_STARTED"]
    assert not set(after) & done_before
    assert set(after) == set(KEYS) - done_before
    started = Counter(e.node_key for e in events if e.type == "NODE_STARTED")
    assert all(started[key] == 1 for key in done_before)
    # each node has produced exactly one answer (one LLM call recorded, one completion)
    assert Counter(e.node_key for e in events if e.type == "NODE_COMPLETED") == dict.fromkeys(
        KEYS, 1
    )
    assert Counter(e.node_key for e in events if e.type == "LLM_CALL") == dict.fromkeys(KEYS, 1)

    nodes = store.nodes(run_id)
    assert {key: node.status for key, node in nodes.items()} == dict.fromkeys(KEYS, "completed")
    artifacts = store.call(lambda repo: repo.list_artifacts(run_id=run_id))
    by_node = Counter((a.node_id, a.type) for a in artifacts)
    for key, node in nodes.items():
        assert by_node[(node.id, "markdown")] == 1, key
        assert by_node[(node.id, "sidecar")] == 1, key
    runs_root = tmp_path / "runs"
    for artifact in artifacts:
        data = (runs_root / artifact.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == artifact.sha256, artifact.path
    for key in KEYS:
        folder = runs_root / run_id / "nodes" / key
        assert (folder / f"artifact_{key}.md").is_file()
        sidecar = json.loads((folder / f"artifact_{key}.llm.json").read_text(encoding="utf-8"))
        assert sidecar["node_key"] == key and sidecar["run_id"] == run_id
    summary = json.loads((runs_root / run_id / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "completed"
    assert summary["nodes"] == {"total": 10, "completed": 10, "failed": 0, "skipped": 0}
    run = store.run(run_id)
    assert run.status == "completed" and run.owner is None


def test_sigkill_then_resume(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = crew(tmp_path, "run", "--task-file", "plan.json", "--run-id", "crash-1", "--json")
    try:
        wait_for_completed(store, "crash-1", 3, first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == -signal.SIGKILL
    done_before = completed_keys(store, "crash-1")
    assert 3 <= len(done_before) < len(KEYS)
    run = store.run("crash-1")
    assert run.status == "running" and run.owner  # nobody has noticed yet
    assert run.lease_expires_at is not None and run.lease_expires_at > datetime.now(UTC)

    # readers see who held it; its lease has not run out, but its owner ran on this host
    # and its pid is gone, so a resume does not have to wait for the lease
    shown = CliRunner().invoke(app, ["runs", "show", "crash", "--json"])
    assert shown.exit_code == 0
    data = json.loads(shown.stdout)
    assert data["status"] == "running" and data["owner"] == run.owner
    assert data["lease"] == "held" and data["lease_expires_at"]

    second = crew(tmp_path, "run", "--resume", "crash-1", "--json")
    assert second.wait(timeout=60) == 0, (tmp_path / "err.txt").read_text()
    lines = (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()
    summary = json.loads(lines[-1])
    assert summary["status"] == "completed" and summary["run_id"] == "crash-1"
    assert_complete_and_not_redone(tmp_path, store, "crash-1", done_before, interrupted=False)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_leave_the_run_interrupted_and_resumable(
    tmp_path: Path, signum: int
) -> None:
    store = Store(tmp_path)
    process = crew(tmp_path, "run", "--task-file", "plan.json", "--run-id", "stop-1")
    try:
        wait_for_completed(store, "stop-1", 2, process)
        process.send_signal(signum)
        code = process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = (tmp_path / "err.txt").read_text(encoding="utf-8")
    assert code == 130, stderr
    assert "Traceback" not in stderr
    run = store.run("stop-1")
    assert run.status == "interrupted" and run.owner is None
    events = store.events("stop-1")
    assert events[-1].type == "RUN_INTERRUPTED"
    in_flight = set(events[-1].payload["canceled_nodes"])
    nodes = store.nodes("stop-1")
    assert {k for k, node in nodes.items() if node.status == "canceled"} == in_flight
    assert not [k for k, node in nodes.items() if node.status == "running"]
    done_before = completed_keys(store, "stop-1")

    resumed = CliRunner().invoke(app, ["run", "--resume", "stop-1", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["status"] == "completed"
    assert_complete_and_not_redone(tmp_path, store, "stop-1", done_before, interrupted=True)
