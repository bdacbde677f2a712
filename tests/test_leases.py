"""Lease edge cases: cancels that race with claims, runs given back to the queue."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from engine_support import Store, harness, n, plan_dict, setup_cli_env
from typer.testing import CliRunner

from crew.cli.main import app
from crew.engine.service import execute_claimed, request_cancel


async def test_a_cancel_of_a_claimed_queued_run_is_honoured_by_its_executor(
    tmp_path: Path, db_url: str
) -> None:
    async with harness(tmp_path, db_url) as h:
        run_id = await h.create(plan_dict(n("a"), n("b", "a")))
        now = datetime.now(UTC)
        claim = await h.repo.claim_next_run("w:1:x", now, now + timedelta(seconds=60))
        assert claim is not None and claim.run_id == run_id
        # still `queued`, but claimed: not canceled on the spot, the executor is asked
        assert await request_cancel(h.repo, run_id) == "running"
        run = await h.repo.get_run(run_id)
        assert run is not None and run.status == "queued" and run.cancel_requested_at
        outcome = await execute_claimed(h.repo, h.settings, h.client, claim)
        assert outcome.status == "canceled"
        assert h.provider.calls == 0
        types = [e.type for e in await h.events(run_id)]
        assert types[:2] == ["RUN_STARTED", "PLAN_CREATED"] and types[-1] == "RUN_CANCELED"


async def test_canceling_a_run_given_back_to_the_queue_keeps_its_completed_nodes(
    tmp_path: Path, db_url: str
) -> None:
    async with harness(tmp_path, db_url) as h:
        run_id = await h.create(plan_dict(n("a"), n("b", "a")))
        nodes = {node.key: node for node in await h.repo.list_nodes(run_id)}
        await h.repo.update_node(nodes["a"].id, status="completed")
        await h.repo.update_run(run_id, started_at=datetime.now(UTC))  # it had run
        assert await request_cancel(h.repo, run_id) == "canceled"
        assert await h.statuses(run_id) == {"a": "completed", "b": "canceled"}
        (event,) = await h.events(run_id)
        assert event.type == "RUN_CANCELED" and event.payload["canceled_nodes"] == ["b"]
        run = await h.repo.get_run(run_id)
        assert run is not None and run.error_code == "canceled"


async def test_a_claim_needs_the_status_its_claimer_saw(tmp_path: Path, db_url: str) -> None:
    async with harness(tmp_path, db_url) as h:
        run_id = await h.create(plan_dict(n("a")))
        assert await request_cancel(h.repo, run_id) == "canceled"
        now = datetime.now(UTC)
        later = now + timedelta(seconds=60)
        assert await h.repo.claim_run(run_id, "w:1:x", now, later, when_status="queued") is None
        assert await h.repo.claim_next_run("w:1:x", now, later) is None


def test_detach_queues_the_run_and_a_worker_executes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup_cli_env(tmp_path, monkeypatch)
    runner = CliRunner()
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan_dict(n("a"), n("b", "a"))), encoding="utf-8")
    queued = runner.invoke(app, ["run", "--task-file", str(plan_file), "--detach", "--json"])
    assert queued.exit_code == 0, queued.output
    answer = json.loads(queued.stdout)
    assert answer["status"] == "queued" and set(answer) == {"run_id", "status"}
    run = Store(tmp_path).run(answer["run_id"])
    assert run.status == "queued" and run.owner is None
    plain = runner.invoke(app, ["run", "--task-file", str(plan_file), "--detach"])
    assert plain.exit_code == 0 and plain.stdout.strip() in Store(tmp_path).run_ids()

    worked = runner.invoke(app, ["worker", "--once", "--json"])
    assert worked.exit_code == 0, worked.output
    stats = json.loads(worked.stdout.splitlines()[-1])
    assert stats["claimed"] == 2 and stats["finished"] == {"completed": 2}
    assert Store(tmp_path).run(answer["run_id"]).status == "completed"

    refused = runner.invoke(app, ["run", "--resume", answer["run_id"], "--detach"])
    assert refused.exit_code == 2 and "--detach" in refused.stderr
    bad = runner.invoke(app, ["worker", "--max-runs", "0"])
    assert bad.exit_code == 2 and "--max-runs" in bad.stderr
    for flags, named in (
        (["--name", ""], "--name"),
        (["--name", "a\nb"], "--name"),
        (["--metrics-port", "0"], "--metrics-port"),
        (["--metrics-port", "70000"], "--metrics-port"),
    ):
        refused_flag = runner.invoke(app, ["worker", "--once", *flags])
        assert refused_flag.exit_code == 2 and named in refused_flag.stderr, flags
        assert "Traceback" not in refused_flag.output
