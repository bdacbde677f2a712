"""Resume through the service functions: what is re-run, what is kept, and why.

Provider calls are counted per node on a `ScriptedProvider`: a node that is kept makes
no call, so "not re-run" is asserted on calls, not on timestamps.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from engine_support import (
    TERMINAL,
    calls_by_node,
    harness,
    keyed,
    n,
    node_of,
    offline_text,
    plan_dict,
    read_json,
)
from fakes import ScriptedProvider, unavailable

from crew.engine.service import execute_run
from crew.llm.base import LLMRequest

CHAIN = plan_dict(n("a"), n("b", "a"), n("c", "b"), n("d"), n("e", "c", "d"))


def broken_at(key: str) -> ScriptedProvider:
    return ScriptedProvider(default=keyed({key: unavailable("400 invalid", retryable=False)}))


async def test_failed_run_resumes_only_failed_and_skipped_nodes(
    tmp_path: Path, db_url: str
) -> None:
    async with harness(tmp_path, db_url, broken_at("b")) as h:
        first = await h.run(CHAIN)
        assert first.status == "failed"
        assert await h.statuses(first.run_id) == {
            "a": "completed", "b": "failed", "c": "skipped", "d": "completed", "e": "skipped",
        }  # fmt: skip
        before = await h.events(first.run_id)

        fixed = ScriptedProvider(default=offline_text)
        h.use(fixed)
        outcome = await h.resume(first.run_id)
        assert outcome.status == "completed"
        assert not outcome.already_completed
        assert calls_by_node(fixed) == ["b", "c", "e"]
        assert set((await h.statuses(first.run_id)).values()) == {"completed"}

        events = await h.events(first.run_id)
        new = events[len(before) :]
        assert [e.id for e in events] == sorted(e.id for e in events)
        assert new[0].type == "RUN_RESUMED"
        assert new[0].payload["reset_nodes"] == ["b", "c", "e"]
        assert new[-1].type == "RUN_COMPLETED"
        started = [e.node_key for e in new if e.type == "NODE_STARTED"]
        assert started == ["b", "c", "e"]

        summary = read_json(h.runs_root / first.run_id / "summary.json")
        assert summary["status"] == "completed"
        assert summary["nodes"] == {"total": 5, "completed": 5, "failed": 0, "skipped": 0}
        assert outcome.summary["nodes"] == summary["nodes"]
        run = await h.repo.get_run(first.run_id)
        assert run is not None and run.status == "completed" and run.error is None
        for key in "abcde":
            assert (h.runs_root / first.run_id / f"nodes/{key}/artifact_{key}.md").is_file()


async def test_resuming_a_completed_run_does_nothing(tmp_path: Path, db_url: str) -> None:
    async with harness(tmp_path, db_url) as h:
        first = await h.run(CHAIN)
        count = len(await h.events(first.run_id))
        calls = h.provider.calls
        outcome = await h.resume(first.run_id)
        assert outcome.already_completed and outcome.status == "completed"
        assert outcome.summary["nodes"]["completed"] == 5
        assert h.provider.calls == calls
        assert len(await h.events(first.run_id)) == count


async def test_override_reruns_one_node_and_dependents_only_if_its_output_changed(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with harness(tmp_path, sqlite_url) as h:
        first = await h.run(CHAIN)
        assert first.status == "completed"

        same = ScriptedProvider(default=offline_text)  # same answer as before
        h.use(same)
        outcome = await h.resume(first.run_id, rerun=["b"])
        assert outcome.status == "completed"
        assert calls_by_node(same) == ["b"]

        counter = itertools.count()
        changed = ScriptedProvider(default=lambda r: f"# new output {next(counter)}")
        h.use(changed)
        outcome = await h.resume(first.run_id, rerun=["b"])
        assert outcome.status == "completed"
        assert calls_by_node(changed) == ["b", "c", "e"]  # a and d untouched
        text = (h.runs_root / first.run_id / "nodes/b/artifact_b.md").read_text(encoding="utf-8")
        assert text == "# new output 0"
        # Three runs of b wrote its files three times: each file still has one row, and
        # that row describes what is on disk now.
        rows = await h.repo.list_artifacts(run_id=first.run_id)
        assert len(rows) == len({row.path for row in rows}) == 2 * 5 + 1  # + summary.json
        for row in rows:
            data = (h.runs_root / row.path).read_bytes()
            assert (hashlib.sha256(data).hexdigest(), len(data)) == (row.sha256, row.size)
        events = await h.events(first.run_id)
        assert [e.type for e in events].count("RUN_RESUMED") == 2
        # the run's stored options do not keep the one-off override
        run = await h.repo.get_run(first.run_id)
        assert run is not None and run.options["rerun"] == []


async def test_changed_llm_settings_rerun_completed_nodes(tmp_path: Path, db_url: str) -> None:
    manager = {"manager": {"model": "manager-model"}}
    async with harness(tmp_path, db_url, broken_at("e")) as h:
        first = await h.run(CHAIN, llm=manager)
        assert first.status == "failed"
        fixed = ScriptedProvider(default=offline_text)
        h.use(fixed)
        changes = {"llm": {"executor": {"model": "bigger-model"}}}
        outcome = await h.resume(first.run_id, option_changes=changes)
        assert outcome.status == "completed"
        assert sorted(calls_by_node(fixed)) == ["a", "b", "c", "d", "e"]
        assert {r.model for r in fixed.requests} == {"bigger-model"}
        sidecar = read_json(h.runs_root / first.run_id / "nodes/a/artifact_a.llm.json")
        assert sidecar["model"] == "bigger-model"
        # what the run executed with is recorded, so a later resume keeps using it
        run = await h.repo.get_run(first.run_id)
        assert run is not None
        assert run.options["llm"] == {**manager, "executor": {"model": "bigger-model"}}

        again = ScriptedProvider(default=offline_text)
        h.use(again)
        outcome = await h.resume(first.run_id, rerun=["e"])
        assert outcome.status == "completed"
        assert calls_by_node(again) == ["e"]  # a..d keep their bigger-model output
        assert {r.model for r in again.requests} == {"bigger-model"}


async def test_interrupted_run_resumes_without_redoing_completed_nodes(
    tmp_path: Path, sqlite_url: str
) -> None:
    release = asyncio.Event()

    async def blocked(request: LLMRequest) -> str:
        await release.wait()
        return "never"

    provider = ScriptedProvider(default=keyed({"c": blocked}))
    async with harness(tmp_path, sqlite_url, provider) as h:
        run_id = await h.create(CHAIN, max_concurrency=2)
        task = asyncio.create_task(execute_run(h.repo, h.settings, h.client, run_id))
        for _ in range(500):
            if provider.in_flight and "c" in calls_by_node(provider):
                break
            await asyncio.sleep(0.01)
        task.cancel()  # what Ctrl-C / SIGTERM do to the command's task
        try:
            await task
        except asyncio.CancelledError:
            pass
        else:  # pragma: no cover - the engine must propagate the interruption
            raise AssertionError("an interrupted run must re-raise CancelledError")
        run = await h.repo.get_run(run_id)
        assert run is not None and run.status == "interrupted" and run.owner is None
        statuses = await h.statuses(run_id)
        assert statuses["c"] == "canceled"
        assert statuses["a"] == statuses["b"] == "completed"
        events = await h.events(run_id)
        assert events[-1].type == "RUN_INTERRUPTED" and "c" in events[-1].payload["canceled_nodes"]
        done_before = {k for k, v in statuses.items() if v == "completed"}

        fixed = ScriptedProvider(default=offline_text)
        h.use(fixed)
        outcome = await h.resume(run_id)
        assert outcome.status == "completed"
        assert not set(calls_by_node(fixed)) & done_before
        assert "c" in calls_by_node(fixed) and "e" in calls_by_node(fixed)
        types = await h.types(run_id)
        assert types[-1] == "RUN_COMPLETED"
        assert [t for t in types if t in TERMINAL] == ["RUN_INTERRUPTED", "RUN_COMPLETED"]


async def test_a_canceled_run_can_be_resumed(tmp_path: Path, sqlite_url: str) -> None:
    from crew.engine.service import request_cancel

    async with harness(tmp_path, sqlite_url) as h:
        run_id = await h.create(CHAIN)
        await request_cancel(h.repo, run_id)
        outcome = await h.resume(run_id)
        assert outcome.status == "completed"
        assert sorted(calls_by_node(h.provider)) == ["a", "b", "c", "d", "e"]
        assert (await h.types(run_id))[:3] == ["RUN_CANCELED", "RUN_RESUMED", "NODE_STARTED"]


async def test_override_whose_rerun_fails_skips_stale_dependents(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with harness(tmp_path, sqlite_url) as h:
        first = await h.run(CHAIN)
        h.use(broken_at("b"))
        outcome = await h.resume(first.run_id, rerun=["b"])
        assert outcome.status == "failed"
        statuses = await h.statuses(first.run_id)
        assert statuses == {
            "a": "completed", "b": "failed", "c": "skipped", "d": "completed", "e": "skipped",
        }  # fmt: skip
        assert calls_by_node(h.provider) == ["b"]
        assert node_of(h.provider.requests[0]) == "b"


class SlowBatches:
    """The repository, with one transaction made slow on demand (a busy database)."""

    def __init__(self, repo: Any) -> None:
        self._repo = repo
        self.slow_next = False
        self.slow_entered = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repo, name)

    @asynccontextmanager
    async def _slow(self, name: str, *args: Any) -> AsyncIterator[Any]:
        if self.slow_next:
            self.slow_next = False
            self.slow_entered.set()
            await asyncio.sleep(0.2)
        async with getattr(self._repo, name)(*args) as writer:
            yield writer

    def batch(self) -> Any:
        return self._slow("batch")

    def bulk(self, fence: Any = None) -> Any:  # the write queue's (fenced) transaction
        return self._slow("bulk", fence)


async def test_interrupt_while_a_completion_is_being_committed(
    tmp_path: Path, sqlite_url: str
) -> None:
    """The completion lands (it was queued first); the stop must not relabel it canceled."""
    state: dict[str, Any] = {}

    async def answer_then_slow_down(request: LLMRequest) -> str:
        # The node's start commits while its call runs: once it has, the next
        # transaction is this node's completion.
        while (await state["repo"].list_nodes(state["run_id"]))[0].status != "running":
            await asyncio.sleep(0.005)
        state["repo"].slow_next = True
        return "# a is done"

    provider = ScriptedProvider(default=keyed({"a": answer_then_slow_down}))
    async with harness(tmp_path, sqlite_url, provider) as h:
        repo = SlowBatches(h.repo)
        state["repo"] = repo
        run_id = state["run_id"] = await h.create(plan_dict(n("a"), n("b", "a")))
        task = asyncio.create_task(execute_run(repo, h.settings, h.client, run_id))
        await asyncio.wait_for(repo.slow_entered.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await h.statuses(run_id) == {"a": "completed", "b": "pending"}
        run = await h.repo.get_run(run_id)
        assert run is not None and run.status == "interrupted"

        outcome = await h.resume(run_id)
        assert outcome.status == "completed"
        assert calls_by_node(provider) == ["a", "b"]  # a was not executed again
        markdown = await h.repo.list_artifacts(run_id=run_id, type="markdown")
        assert len(markdown) == 2
