"""Operators see who executes what: the workers registry, `crew workers list`, GET /workers."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from api_helpers import H, api
from engine_support import harness, n, plan_dict, setup_cli_env
from typer.testing import CliRunner

from crew.cli.main import app
from crew.engine.worker import Worker, registered


async def test_a_worker_registers_beats_and_deregisters(tmp_path: Path, db_url: str) -> None:
    async with harness(tmp_path, db_url, RUN_LEASE_S="1") as h:
        worker = Worker(h.repo, h.settings, h.client, name="w-test", max_runs=3)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.started(), 10)
        (row,) = await h.repo.list_workers()
        assert (row.id, row.name, row.kind, row.max_runs) == (worker.id, "w-test", "worker", 3)
        first_beat = row.heartbeat_at
        for _ in range(100):  # the registry heartbeat runs every third of the lease
            await asyncio.sleep(0.05)
            (row,) = await h.repo.list_workers()
            if row.heartbeat_at > first_beat:
                break
        assert row.heartbeat_at > first_beat
        worker.shutdown()
        await asyncio.wait_for(task, 10)
        assert await h.repo.list_workers() == []


async def test_runs_held_are_listed_per_executor(tmp_path: Path, db_url: str) -> None:
    async with harness(tmp_path, db_url) as h:
        run_id = await h.create(plan_dict(n("a")))
        now = datetime.now(UTC)
        async with registered(
            h.repo,
            h.settings,
            worker_id="host-x:1:abc",
            name="run@host-x:1",
            kind="run",
            max_runs=1,
            state=lambda: (1, "running"),
        ):
            claim = await h.repo.claim_run(run_id, "host-x:1:abc", now, now + timedelta(seconds=60))
            assert claim is not None
            await h.repo.update_run(run_id, status="running")
            held = await h.repo.runs_held_by(["host-x:1:abc", "nobody"])
            assert held == {"host-x:1:abc": [run_id], "nobody": []}
        assert await h.repo.list_workers() == []


def test_workers_list_cli_and_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup_cli_env(tmp_path, monkeypatch)
    runner = CliRunner()
    empty = runner.invoke(app, ["workers", "list", "--json"])
    assert empty.exit_code == 0 and json.loads(empty.stdout) == []
    db = f"sqlite+aiosqlite:///{tmp_path / 'crew.db'}"
    with api(db, tmp_path) as client:  # its embedded worker registers itself
        for _ in range(200):  # it does so in its own task, just after the start
            page = client.get("/workers", headers=H)
            assert page.status_code == 200
            if page.json()["items"]:
                break
            time.sleep(0.02)
        (item,) = page.json()["items"]
        assert item["kind"] == "serve" and item["alive"] is True and item["runs"] == []
        assert item["heartbeat_at"] and item["max_runs"] == 4
        listed = runner.invoke(app, ["workers", "list", "--json"])
        assert listed.exit_code == 0
        assert [w["id"] for w in json.loads(listed.stdout)] == [item["id"]]
        assert client.get("/workers?x=1", headers=H).status_code == 400
        assert client.get("/workers").status_code == 401
    assert json.loads(runner.invoke(app, ["workers", "list", "--json"]).stdout) == []


async def test_a_budget_is_shared_by_every_process_acting_on_the_run(
    tmp_path: Path, db_url: str
) -> None:
    """Two budgets of one run (two processes, say the executor and an API action) see
    each other's reservations through the run row: together they stay within it."""
    from crew.engine.shared_budget import SharedRunBudget
    from crew.llm.base import LLMRequest, Message
    from crew.store.leases import Fence

    async with harness(tmp_path, db_url) as h:
        run_id = await h.create(plan_dict(n("a")))
        run = await h.repo.get_run(run_id)
        fence = Fence(run_id, "p1", 0)
        request = LLMRequest(
            role="Writer_FR",
            model="m",
            messages=(Message(role="user", content="x" * 400),),
            max_tokens=300,
        )
        first = SharedRunBudget.for_claimed_run(
            h.repo, fence, max_cost_usd=None, max_tokens=1000, run=run
        )
        second = SharedRunBudget.for_claimed_run(
            h.repo, fence, max_cost_usd=None, max_tokens=1000, run=run
        )
        assert first is not None and second is not None
        held = await first.reserve(request, None)
        stored = await h.repo.get_run(run_id)
        assert stored is not None and stored.reserved_tokens == held.tokens
        assert held.tokens * 2 > 1000  # two such calls do not fit together
        with pytest.raises(Exception, match="budget exceeded") as refused:
            await second.reserve(request, None)
        assert getattr(refused.value, "exit_code", None) == 3
        first.settle(held, None)
        await first.aclose()
        stored = await h.repo.get_run(run_id)
        assert stored is not None and stored.reserved_tokens == 0
