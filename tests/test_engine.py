"""The run engine through its service functions: scheduling, failures, retries, timeouts,
managers, roles, prompts, files, events, cancel and ownership.

Every test drives the real engine and repository; the only fake is the LLM provider
(`ScriptedProvider`, registered under the `offline` name), which records each request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from engine_support import (
    TERMINAL,
    Harness,
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

from crew.agents.prompts import render
from crew.domain.errors import ConflictError, InvalidInputError
from crew.engine.journal import EngineEvent
from crew.engine.service import execute_claimed, execute_run, request_cancel
from crew.llm.base import LLMRequest

SIDECAR_FIELDS = {
    "schema_version", "run_id", "node_key", "role", "provider", "model", "response_model",
    "operation", "temperature", "max_tokens", "input_tokens", "output_tokens", "cost_usd",
    "price_source", "latency_ms", "attempts", "finish_reason", "fallback_from", "started_at",
    "ended_at", "prompts", "error",
}  # fmt: skip
SUMMARY_FIELDS = {
    "run_id", "status", "title", "nodes", "artifacts", "final", "input_tokens",
    "output_tokens", "cost_usd", "duration_ms",
}  # fmt: skip


# ---- scheduling -----------------------------------------------------------------------


async def test_ties_are_broken_by_file_order(tmp_path: Path, sqlite_url: str) -> None:
    async with harness(tmp_path, sqlite_url) as h:
        # independent nodes: file order, whatever their names
        outcome = await h.run(plan_dict(n("k3"), n("k1"), n("k2")), max_concurrency=1)
        assert outcome.status == "completed"
        assert calls_by_node(h.provider) == ["k3", "k1", "k2"]
        # y and x become ready together when r completes: y is first in the file
        h.use(ScriptedProvider(default=offline_text))
        outcome = await h.run(plan_dict(n("y", "r"), n("x", "r"), n("r")), max_concurrency=1)
        assert calls_by_node(h.provider) == ["r", "y", "x"]


async def test_listing_order_does_not_change_what_runs_before_what(
    tmp_path: Path, sqlite_url: str
) -> None:
    nodes = [n("a"), n("b", "a"), n("c", "b"), n("d", "a", "c")]
    async with harness(tmp_path, sqlite_url) as h:
        for ordering in (nodes, list(reversed(nodes))):
            h.use(ScriptedProvider(default=offline_text))
            outcome = await h.run(plan_dict(*ordering), max_concurrency=4)
            assert outcome.status == "completed"
            assert calls_by_node(h.provider) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("limit", [1, 3])
async def test_concurrency_bound_is_respected_and_reached(
    tmp_path: Path, sqlite_url: str, limit: int
) -> None:
    provider = ScriptedProvider(default=offline_text, delay_s=0.03)
    plan = plan_dict(*(n(f"w{i}") for i in range(10)))
    async with harness(tmp_path, sqlite_url, provider) as h:
        outcome = await h.run(plan, max_concurrency=limit)
        assert outcome.status == "completed"
        assert provider.calls == 10
        assert provider.max_in_flight == limit


# ---- failures, retries, timeouts ------------------------------------------------------


async def test_failure_skips_transitive_dependents_only(tmp_path: Path, db_url: str) -> None:
    plan = plan_dict(
        n("a"), n("b", "a"), n("c", "b"), n("d", "a"), n("x"), n("y", "x"), n("z", "y", "c")
    )
    provider = ScriptedProvider(default=keyed({"a": unavailable("bad request", retryable=False)}))
    async with harness(tmp_path, db_url, provider) as h:
        outcome = await h.run(plan)
        assert outcome.status == "failed"
        assert outcome.summary["nodes"] == {"total": 7, "completed": 2, "failed": 1, "skipped": 4}
        nodes = {node.key: node for node in await h.repo.list_nodes(outcome.run_id)}
        assert nodes["a"].status == "failed"
        assert "bad request" in (nodes["a"].error or "")
        for key in ("b", "c", "d", "z"):
            assert nodes[key].status == "skipped"
            assert nodes[key].error == "dependency a failed"
        assert nodes["x"].status == nodes["y"].status == "completed"
        assert sorted(calls_by_node(provider)) == ["a", "x", "y"]  # not retried
        events = await h.events(outcome.run_id)
        skipped = {e.node_key: e.payload["reason"] for e in events if e.type == "NODE_SKIPPED"}
        assert skipped == dict.fromkeys(("b", "c", "d", "z"), "dependency a failed")
        assert not [e for e in events if e.type == "NODE_RETRYING"]
        assert events[-1].type == "RUN_FAILED"
        run = await h.repo.get_run(outcome.run_id)
        assert run is not None and run.status == "failed" and "a" in (run.error or "")


async def test_retryable_errors_are_retried_with_backoff(tmp_path: Path, sqlite_url: str) -> None:
    failures = [unavailable("503 upstream"), unavailable("connection reset")]

    def flaky(request: LLMRequest) -> str:
        if failures:
            raise failures.pop(0)
        return "# recovered"

    provider = ScriptedProvider(default=keyed({"a": flaky}))
    async with harness(tmp_path, sqlite_url, provider, RETRY_BASE_DELAY="0.01") as h:
        outcome = await h.run(plan_dict(n("a"), n("b", "a")), retries=2)
        assert outcome.status == "completed"
        assert calls_by_node(provider) == ["a", "a", "a", "b"]
        events = await h.events(outcome.run_id)
        retries = [e.payload for e in events if e.type == "NODE_RETRYING"]
        assert [r["attempt"] for r in retries] == [1, 2]
        assert [r["node_key"] for r in retries] == ["a", "a"]
        # exponential with jitter in [0.5, 1] x base x 2^(n-1)
        assert 0.005 <= retries[0]["delay_s"] <= 0.01
        assert 0.01 <= retries[1]["delay_s"] <= 0.02
        assert "503 upstream" in retries[0]["error"]
        assert [e.type for e in events if e.node_key == "a"].count("NODE_STARTED") == 1
        node = await h.repo.get_node_by_key(outcome.run_id, "a")
        assert node is not None and node.attempts == 3 and node.status == "completed"
        sidecar = read_json(h.runs_root / outcome.run_id / "nodes/a/artifact_a.llm.json")
        assert sidecar["error"] is None


async def test_retries_run_out_then_the_node_fails(tmp_path: Path, sqlite_url: str) -> None:
    provider = ScriptedProvider(default=keyed({"a": unavailable("timeout talking to server")}))
    async with harness(tmp_path, sqlite_url, provider) as h:
        outcome = await h.run(plan_dict(n("a"), n("b")), retries=1)
        assert outcome.status == "failed"
        assert calls_by_node(provider).count("a") == 2
        types = [e.type for e in await h.events(outcome.run_id) if e.node_key == "a"]
        assert types == ["NODE_STARTED", "NODE_RETRYING", "NODE_FAILED"]
        assert (await h.statuses(outcome.run_id)) == {"a": "failed", "b": "completed"}


async def test_non_retryable_error_fails_at_once(tmp_path: Path, sqlite_url: str) -> None:
    provider = ScriptedProvider(default=keyed({"a": unavailable("401 bad key", retryable=False)}))
    async with harness(tmp_path, sqlite_url, provider) as h:
        outcome = await h.run(plan_dict(n("a")), retries=5)
        assert outcome.status == "failed"
        assert provider.calls == 1
        failed = [e for e in await h.events(outcome.run_id) if e.type == "NODE_FAILED"]
        assert len(failed) == 1 and "401 bad key" in failed[0].payload["error"]


async def test_node_timeout_is_retried_then_fails(tmp_path: Path, sqlite_url: str) -> None:
    provider = ScriptedProvider(
        default=offline_text, delay=lambda r: 5.0 if node_of(r) == "slow" else 0.0
    )
    async with harness(tmp_path, sqlite_url, provider) as h:
        outcome = await h.run(
            plan_dict(n("slow"), n("after", "slow"), n("other")), node_timeout_s=0.05, retries=1
        )
        assert outcome.status == "failed"
        assert calls_by_node(provider).count("slow") == 2
        events = await h.events(outcome.run_id)
        retrying = [e for e in events if e.type == "NODE_RETRYING"]
        assert len(retrying) == 1 and "timed out" in retrying[0].payload["error"]
        statuses = await h.statuses(outcome.run_id)
        assert statuses == {"slow": "failed", "after": "skipped", "other": "completed"}
        node = await h.repo.get_node_by_key(outcome.run_id, "slow")
        assert node is not None and "timed out after 0.05s" in (node.error or "")
        assert provider.in_flight == 0  # the timed-out calls were cancelled, not left running


# ---- managers, roles, prompts ---------------------------------------------------------


def manager_answer(
    assignments: dict[str, str], checks: tuple[str, ...] = ("sources cited",)
) -> str:
    return json.dumps(
        {
            "assignments": [
                {"node_id": k, "agent": v, "tooling": []} for k, v in assignments.items()
            ],
            "quality_checks": list(checks),
            "integration_notes": "keep one voice",
        }
    )


async def test_manager_assigns_roles_before_dependents_run(tmp_path: Path, db_url: str) -> None:
    seen: dict[str, Any] = {}
    state: dict[str, Any] = {}

    async def record(request: LLMRequest) -> str:
        key = node_of(request)
        node = await state["h"].repo.get_node_by_key(state["run_id"], key)
        seen[key] = {"db_role": node.role, "request_role": request.role, "system": request.system}
        return f"# output of {key}"

    provider = ScriptedProvider(
        default=keyed(
            {
                "m": manager_answer({"w": "Writer_Tech", "r": "reviewer_senior"}),
                "w": record,
                "r": record,
            }
        )
    )
    plan = plan_dict(
        n("m", type="manage"), n("w", "m"), n("r", "m", "w", suggested_agent_role="Researcher")
    )
    async with harness(tmp_path, db_url, provider) as h:
        state["h"] = h
        run_id = await h.create(plan)
        state["run_id"] = run_id
        outcome = await execute_run(h.repo, h.settings, h.client, run_id)
        assert outcome.status == "completed"
        # stored on the node rows before the dependents' calls were made
        assert seen["w"]["db_role"] == seen["w"]["request_role"] == "Writer_Tech"
        assert seen["r"]["db_role"] == seen["r"]["request_role"] == "reviewer_senior"
        assert seen["w"]["system"] == render("en", "executor_system_writer", role="Writer_Tech")
        assert seen["r"]["system"] == render(
            "en", "executor_system_reviewer", role="reviewer_senior"
        )
        folder = h.runs_root / run_id / "nodes" / "m"
        answer = read_json(folder / "manager_m.json")
        assert answer["quality_checks"] == ["sources cited"]
        sidecar = read_json(folder / "manager_m.llm.json")
        assert sidecar["node_key"] == "m" and sidecar["role"] == "Manager_Generic"
        events = await h.events(run_id)
        assigned = [e for e in events if e.type == "MANAGER_ASSIGNED"]
        assert len(assigned) == 1
        assert assigned[0].payload["assignments"] == {"w": "Writer_Tech", "r": "reviewer_senior"}
        assert assigned[0].node_key == "m"
        kinds = {a.type for a in await h.repo.list_artifacts(run_id=run_id)}
        assert {"manager", "sidecar", "markdown", "summary"} <= kinds
        # the manager's instructions reach the nodes under it
        assert "sources cited" in provider.requests[1].last_user


async def test_manager_answer_with_unknown_node_gets_a_repair_request(
    tmp_path: Path, sqlite_url: str
) -> None:
    answers = [
        manager_answer({"w": "Writer_FR", "ghost": "Researcher"}),
        manager_answer({"w": "Research_Legal"}),
    ]
    provider = ScriptedProvider(default=keyed({"m": lambda r: answers.pop(0)}))
    async with harness(tmp_path, sqlite_url, provider) as h:
        outcome = await h.run(plan_dict(n("m", type="manage"), n("w", "m")))
        assert outcome.status == "completed"
        manager_calls = [r for r in provider.requests if node_of(r) == "m"]
        assert len(manager_calls) == 2
        repair = manager_calls[1].last_user
        assert "ghost" in repair and "The expected ids are exactly: w" in repair
        node = await h.repo.get_node_by_key(outcome.run_id, "w")
        assert node is not None and node.role == "Research_Legal"
        sidecar = read_json(h.runs_root / outcome.run_id / "nodes/m/manager_m.llm.json")
        assert sidecar["attempts"] == 2


async def test_manager_that_never_answers_validly_fails_its_node(
    tmp_path: Path, sqlite_url: str
) -> None:
    provider = ScriptedProvider(default=keyed({"m": "not json at all"}))
    async with harness(tmp_path, sqlite_url, provider) as h:
        outcome = await h.run(plan_dict(n("m", type="manage"), n("w", "m")), retries=3)
        assert outcome.status == "failed"
        assert await h.statuses(outcome.run_id) == {"m": "failed", "w": "skipped"}
        # invalid answers are not retried by the engine: only the agent's repair loop ran
        assert calls_by_node(provider).count("m") == h.settings.supervisor_max_attempts


async def test_unknown_role_is_recruited_by_prefix(tmp_path: Path, sqlite_url: str) -> None:
    plan = plan_dict(
        n("r", suggested_agent_role="research_analyst"),
        n("g", suggested_agent_role="Data_Wrangler"),
    )
    async with harness(tmp_path, sqlite_url) as h:
        outcome = await h.run(plan)
        assert outcome.status == "completed"
        by_node = {node_of(r): r for r in h.provider.requests}
        assert by_node["r"].role == "research_analyst"
        assert by_node["r"].system == render(
            "en", "executor_system_researcher", role="research_analyst"
        )
        assert by_node["g"].system == render("en", "executor_system_generic", role="Data_Wrangler")
        sidecar = read_json(h.runs_root / outcome.run_id / "nodes/r/artifact_r.llm.json")
        assert sidecar["role"] == "research_analyst"
        node = await h.repo.get_node_by_key(outcome.run_id, "r")
        assert node is not None and node.role == "research_analyst"


async def test_dependency_outputs_appear_in_dependents_prompts(
    tmp_path: Path, sqlite_url: str
) -> None:
    long_text = "L" * 7000
    provider = ScriptedProvider(
        default=keyed({"a": "MARKER-FROM-A", "b": "MARKER-FROM-B", "long": long_text})
    )
    plan = plan_dict(
        n("a", acceptance=["three sources"], notes=["NOTE-1"], risks=["RISK-1"]),
        n("b", assumptions=["ASSUME-1"]),
        n("long"),
        n("c", "a", notes=["NOTE-C"]),
        n("fin", "a", "b", "c", "long", type="synthesis"),
    )
    async with harness(tmp_path, sqlite_url, provider) as h:
        outcome = await h.run(plan)
        assert outcome.status == "completed"
        by_node = {node_of(r): r.last_user for r in provider.requests}
        assert "MARKER-FROM-A" in by_node["c"]
        assert "MARKER-FROM-B" not in by_node["c"]  # only direct dependencies
        assert "NOTE-C" in by_node["c"] and "Title c" in by_node["c"]
        assert "Rapport test" in by_node["c"]  # the run's goal
        assert "three sources" in by_node["a"] and "RISK-1" in by_node["a"]
        assert "ASSUME-1" in by_node["b"]
        final = by_node["fin"]
        assert "MARKER-FROM-A" in final and "MARKER-FROM-B" in final
        assert render("en", "truncated", count=1000).strip() in final  # bounded, cut marked
        assert long_text not in final
        assert outcome.summary["final"] == [
            str(h.runs_root / outcome.run_id / "nodes/fin/artifact_fin.md")
        ]


# ---- files, database rows, summary, events --------------------------------------------


async def test_artifacts_and_sidecars_on_disk_and_in_the_database(
    tmp_path: Path, db_url: str
) -> None:
    plan = plan_dict(n("m", type="manage"), n("a", "m"), n("s", "a", type="synthesis"))
    async with harness(tmp_path, db_url) as h:
        outcome = await h.run(plan, request_id="req-42")
        run_id = outcome.run_id
        assert outcome.status == "completed"
        folder = h.runs_root / run_id
        assert read_json(folder / "plan.json")["title"] == "Rapport test"
        expected = {
            ("m", "manager"): f"{run_id}/nodes/m/manager_m.json",
            ("m", "sidecar"): f"{run_id}/nodes/m/manager_m.llm.json",
            ("a", "markdown"): f"{run_id}/nodes/a/artifact_a.md",
            ("a", "sidecar"): f"{run_id}/nodes/a/artifact_a.llm.json",
            ("s", "markdown"): f"{run_id}/nodes/s/artifact_s.md",
            ("s", "sidecar"): f"{run_id}/nodes/s/artifact_s.llm.json",
            (None, "summary"): f"{run_id}/summary.json",
        }
        keys = {node.id: node.key for node in await h.repo.list_nodes(run_id)}
        rows = await h.repo.list_artifacts(run_id=run_id)
        found = {(keys.get(r.node_id or ""), r.type): r for r in rows}
        assert {k: r.path for k, r in found.items()} == expected
        for row in rows:
            data = (h.runs_root / row.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row.sha256
            assert len(data) == row.size
        markdown = found[("a", "markdown")]
        assert markdown.content == (h.runs_root / markdown.path).read_text(encoding="utf-8")
        leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
        assert leftovers == []

        for key, name in (("a", "artifact_a.llm.json"), ("m", "manager_m.llm.json")):
            sidecar = read_json(folder / "nodes" / key / name)
            assert set(sidecar) >= SIDECAR_FIELDS
            assert sidecar["schema_version"] == 1
            assert sidecar["run_id"] == run_id and sidecar["node_key"] == key
            assert sidecar["provider"] == "offline" and sidecar["operation"] == "chat"
            assert sidecar["input_tokens"] > 0 and sidecar["output_tokens"] > 0
            assert sidecar["cost_usd"] == 0.0 and sidecar["price_source"] == "local"
            assert sidecar["attempts"] == 1 and sidecar["finish_reason"] == "stop"
            assert sidecar["fallback_from"] is None and sidecar["error"] is None
            assert sidecar["temperature"] == h.settings.llm_default_temperature
            assert sidecar["max_tokens"] == h.settings.llm_default_max_tokens
            started = datetime.fromisoformat(sidecar["started_at"])
            ended = datetime.fromisoformat(sidecar["ended_at"])
            assert started.tzinfo is not None and started <= ended
            assert set(sidecar["prompts"]) == {"system", "user"} and sidecar["prompts"]["user"]
        assert read_json(folder / "nodes/a/artifact_a.llm.json")["role"] == "Writer_FR"

        summary = read_json(folder / "summary.json")
        assert set(summary) >= SUMMARY_FIELDS
        assert {k: summary[k] for k in SUMMARY_FIELDS} == {
            k: outcome.summary[k] for k in SUMMARY_FIELDS
        }
        assert summary["nodes"] == {"total": 3, "completed": 3, "failed": 0, "skipped": 0}
        assert summary["final"] == [str(h.runs_root / f"{run_id}/nodes/s/artifact_s.md")]
        assert len(summary["artifacts"]) == 3
        run = await h.repo.get_run(run_id)
        assert run is not None
        assert summary["input_tokens"] == run.input_tokens > 0
        nodes = await h.repo.list_nodes(run_id)
        assert sum(node.input_tokens for node in nodes) == run.input_tokens
        assert all(node.checksum and node.started_at and node.ended_at for node in nodes)
        assert run.owner is None and run.heartbeat_at is None  # released at the end


async def test_event_order_ids_and_payloads(tmp_path: Path, db_url: str) -> None:
    plan = plan_dict(n("m", type="manage"), n("a", "m"), n("b", "m"), n("s", "a", "b"))
    async with harness(tmp_path, db_url) as h:
        outcome = await h.run(plan, request_id="req-7")
        events = await h.events(outcome.run_id)
    types = [e.type for e in events]
    assert types[:2] == ["RUN_STARTED", "PLAN_CREATED"]
    assert types[-1] == "RUN_COMPLETED"
    assert sum(t in TERMINAL for t in types) == 1
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for event in events:
        assert event.payload["run_id"] == outcome.run_id
        assert event.payload["request_id"] == "req-7" == event.request_id
        assert event.timestamp.tzinfo is not None
        if event.type.startswith("NODE_") or event.type in ("LLM_CALL", "MANAGER_ASSIGNED"):
            assert event.node_key and event.payload["node_key"] == event.node_key
    position = {(e.type, e.node_key): i for i, e in enumerate(events)}
    for key in ("m", "a", "b", "s"):
        node_events = [i for i, e in enumerate(events) if e.node_key == key]
        assert types.count("NODE_STARTED") == 4
        started, completed = position[("NODE_STARTED", key)], position[("NODE_COMPLETED", key)]
        assert node_events[0] == started and node_events[-1] == completed
    for child, parent in (("a", "m"), ("b", "m"), ("s", "a"), ("s", "b")):
        assert position[("NODE_COMPLETED", parent)] < position[("NODE_STARTED", child)]
    plan_event = events[1].payload
    assert [node["key"] for node in plan_event["nodes"]] == ["m", "a", "b", "s"]


async def test_a_failing_listener_is_dropped_and_the_run_goes_on(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    told: list[str] = []

    def breaks_on_the_second_event(event: EngineEvent) -> None:
        seen.append(event.type.value)
        if len(seen) == 2:
            raise OSError("the terminal went away")

    async with harness(tmp_path, sqlite_url) as h:
        run_id = await h.create(plan_dict(n("a"), n("b", "a"), n("c")))
        outcome = await execute_run(
            h.repo,
            h.settings,
            h.client,
            run_id,
            listeners=[breaks_on_the_second_event, lambda event: told.append(event.type.value)],
        )
        events = await h.events(run_id)
    assert outcome.status == "completed"
    assert len(seen) == 2  # told nothing after it failed
    assert told == [e.type for e in events]  # the other listener heard every event
    assert "an event listener of run" in caplog.text and "the terminal went away" in caplog.text


async def test_dry_run_stores_the_run_and_calls_nothing(tmp_path: Path, sqlite_url: str) -> None:
    async with harness(tmp_path, sqlite_url) as h:
        outcome = await h.run(plan_dict(n("a"), n("b", "a")), dry_run=True)
        assert outcome.status == "completed"
        assert h.provider.calls == 0
        run = await h.repo.get_run(outcome.run_id)
        assert run is not None and run.options["dry_run"] is True
        assert await h.statuses(outcome.run_id) == {"a": "skipped", "b": "skipped"}
        types = await h.types(outcome.run_id)
        assert types == [
            "RUN_STARTED",
            "PLAN_CREATED",
            "NODE_SKIPPED",
            "NODE_SKIPPED",
            "RUN_COMPLETED",
        ]


async def test_invalid_run_id_and_unknown_override_are_refused(
    tmp_path: Path, sqlite_url: str
) -> None:
    async with harness(tmp_path, sqlite_url) as h:
        for bad in ("..", "a/b", "-x", ""):
            with pytest.raises(InvalidInputError):
                await h.create(plan_dict(n("a")), run_id=bad)
        run_id = await h.create(plan_dict(n("a")), run_id="mine")
        with pytest.raises(ConflictError, match="taken"):
            await h.create(plan_dict(n("a")), run_id="mine")
        with pytest.raises(InvalidInputError, match="nope"):
            await h.resume(run_id, rerun=["nope"])
        assert await h.repo.count_runs() == 1


# ---- cancel, ownership, staleness -----------------------------------------------------


async def test_cancel_a_queued_run(tmp_path: Path, db_url: str) -> None:
    async with harness(tmp_path, db_url) as h:
        run_id = await h.create(plan_dict(n("a"), n("b", "a")))
        assert await request_cancel(h.repo, run_id) == "canceled"
        run = await h.repo.get_run(run_id)
        assert run is not None and run.status == "canceled" and run.ended_at is not None
        assert await h.statuses(run_id) == {"a": "canceled", "b": "canceled"}
        events = await h.events(run_id)
        assert [e.type for e in events] == ["RUN_CANCELED"]
        assert events[0].payload["run_id"] == run_id
        with pytest.raises(ConflictError):
            await execute_run(h.repo, h.settings, h.client, run_id)
        with pytest.raises(ConflictError):
            await request_cancel(h.repo, run_id)
        assert h.provider.calls == 0


async def _start_blocked(h: Harness, plan: dict[str, Any], **kwargs: Any) -> tuple[str, Any]:
    """Start executing `plan` in a task; returns once a provider call is in flight."""
    run_id = await h.create(plan)
    task = asyncio.create_task(execute_run(h.repo, h.settings, h.client, run_id, **kwargs))
    for _ in range(500):
        if h.provider.in_flight:
            break
        await asyncio.sleep(0.01)
    assert h.provider.in_flight, "the run never reached its provider call"
    return run_id, task


@pytest.mark.parametrize("from_another_process", [False, True])
async def test_cancel_a_running_run(
    tmp_path: Path, sqlite_url: str, from_another_process: bool
) -> None:
    release = asyncio.Event()

    async def blocked(request: LLMRequest) -> str:
        await release.wait()
        return "never"

    provider = ScriptedProvider(default=keyed({"slow": blocked}))
    plan = plan_dict(n("fast"), n("slow", "fast"), n("later", "slow"))
    async with harness(tmp_path, sqlite_url, provider) as h:
        run_id, task = await _start_blocked(h, plan, heartbeat_interval_s=0.02)
        if from_another_process:
            # what request_cancel does for a run this process does not execute
            await h.repo.update_run(run_id, cancel_requested_at=datetime.now(UTC))
        else:
            assert await request_cancel(h.repo, run_id) == "running"
        outcome = await asyncio.wait_for(task, 10)
        assert outcome.status == "canceled"
        assert await h.statuses(run_id) == {
            "fast": "completed",
            "slow": "canceled",
            "later": "canceled",
        }
        events = await h.events(run_id)
        assert events[-1].type == "RUN_CANCELED"
        assert sorted(events[-1].payload["canceled_nodes"]) == ["later", "slow"]
        run = await h.repo.get_run(run_id)
        assert run is not None and run.status == "canceled" and run.owner is None
        assert provider.in_flight == 0
        assert read_json(h.runs_root / run_id / "summary.json")["status"] == "canceled"


async def test_a_live_run_cannot_be_executed_twice(tmp_path: Path, sqlite_url: str) -> None:
    release = asyncio.Event()

    async def blocked(request: LLMRequest) -> str:
        await release.wait()
        return "# done"

    provider = ScriptedProvider(default=keyed({"a": blocked}))
    async with harness(tmp_path, sqlite_url, provider) as h:
        run_id, task = await _start_blocked(h, plan_dict(n("a")))
        run = await h.repo.get_run(run_id)
        assert run is not None and run.owner
        with pytest.raises(ConflictError) as caught:
            await h.resume(run_id)
        assert run.owner in str(caught.value)
        assert caught.value.exit_code == 2
        release.set()
        outcome = await asyncio.wait_for(task, 10)
        assert outcome.status == "completed"
        assert provider.calls == 1


async def _fake_dead_owner(h: Harness, run_id: str, lease_until: datetime) -> None:
    """Leave `run_id` as a process on another host that claimed it would, its lease
    running out at `lease_until`."""
    now = datetime.now(UTC)
    claim = await h.repo.claim_run(run_id, "ghost-host:4242:deadbeef", now, lease_until)
    assert claim is not None
    await h.repo.update_run(run_id, status="running", started_at=now)


async def test_a_run_whose_lease_expired_is_recovered(tmp_path: Path, db_url: str) -> None:
    async with harness(tmp_path, db_url) as h:
        now = datetime.now(UTC)
        stale = await h.create(plan_dict(n("a"), n("b", "a")), request_id="req-s")
        live = await h.create(plan_dict(n("a")))
        await _fake_dead_owner(h, stale, now - timedelta(seconds=1))
        await _fake_dead_owner(h, live, now + timedelta(seconds=60))

        with pytest.raises(ConflictError, match="ghost-host:4242") as refused:
            await h.resume(live)  # its lease still holds: refused, naming the holder
        assert "on another host" in str(refused.value) and "lease runs out" in str(refused.value)

        claim = await h.repo.claim_next_run("worker-1:1:w", now, now + timedelta(seconds=15))
        assert claim is not None and claim.run_id == stale
        assert claim.previous_owner == "ghost-host:4242:deadbeef"
        assert claim.previous_status == "running" and claim.recoveries == 1
        # the live run is nobody else's to take, and the stale one is taken now
        assert await h.repo.claim_next_run("worker-2:2:w", now, now) is None

        outcome = await execute_claimed(h.repo, h.settings, h.client, claim)
        assert outcome.status == "completed"
        assert calls_by_node(h.provider) == ["a", "b"]
        resumed = [e for e in await h.events(stale) if e.type == "RUN_RESUMED"]
        assert len(resumed) == 1
        assert resumed[0].payload["reason"] == "lease_expired"
        assert resumed[0].payload["previous_owner"] == "ghost-host:4242:deadbeef"
        assert resumed[0].payload["request_id"] == "req-s"
        run = await h.repo.get_run(stale)
        assert run is not None and run.status == "completed" and run.owner is None
        assert run.recoveries == 1
        still = await h.repo.get_run(live)
        assert still is not None and still.status == "running"


async def test_a_process_that_lost_its_run_stops_executing(tmp_path: Path, sqlite_url: str) -> None:
    release = asyncio.Event()

    async def blocked(request: LLMRequest) -> str:
        await release.wait()
        return "# late"

    provider = ScriptedProvider(default=keyed({"a": blocked}))
    async with harness(tmp_path, sqlite_url, provider) as h:
        run_id, task = await _start_blocked(
            h, plan_dict(n("a"), n("b", "a")), heartbeat_interval_s=0.02
        )
        # a reader declared it dead and another process claimed it (e.g. after a long pause)
        await h.repo.update_run(run_id, owner="thief:1:x", heartbeat_at=datetime.now(UTC))
        with pytest.raises(ConflictError, match="taken over"):
            await asyncio.wait_for(task, 10)
        assert provider.in_flight == 0 and provider.calls == 1
        run = await h.repo.get_run(run_id)
        assert run is not None and run.status == "running" and run.owner == "thief:1:x"
        assert not set(await h.types(run_id)) & TERMINAL
        assert (await h.statuses(run_id))["b"] == "pending"
