"""Runs through `crew run` against a local OpenAI-compatible server: routing, concurrency
across nodes, cost in sidecars and totals, budgets, and one end-to-end supervisor run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from engine_support import Store, setup_cli_env
from llm_servers import OpenAIServer, RecordedRequest, Reply
from typer.testing import CliRunner

from crew.cli.main import app
from crew.engine.budget import prompt_tokens_worst
from crew.llm.base import LLMRequest, Message
from crew.llm.offline import read_context
from crew.llm.pricing import Price, worst_case_cost

MARKDOWN = "## Section\n\n" + "Du texte utile pour le rapport. " * 12


def fenced(data: dict[str, Any]) -> str:
    return "```json\n" + json.dumps(data) + "\n```"


def crew_answer(request: RecordedRequest) -> Reply:
    """A plan for the supervisor, assignments for a manager, markdown otherwise."""
    body = request.json or {}
    messages = [Message(m["role"], m["content"]) for m in body.get("messages", [])]
    context = read_context(messages) or {}
    kind = context.get("crew_context")
    if kind == "plan":
        plan = {
            "title": "Rapport 80p",
            "plan": [
                {"id": "collect", "title": "Collect sources", "suggested_agent_role": "Researcher"},
                {"id": "lead", "title": "Organise the writing", "type": "manage",
                 "deps": ["collect"]},
                {"id": "write", "title": "Write the report", "deps": ["lead"]},
                {"id": "final", "title": "Final synthesis", "type": "synthesis",
                 "deps": ["write"]},
            ],
        }  # fmt: skip
        return Reply(content=fenced(plan))
    if kind == "assign":
        nodes = [n["id"] for n in context.get("nodes", [])]
        answer = {
            "assignments": [{"node_id": key, "agent": "Writer_FR"} for key in nodes],
            "quality_checks": ["every claim has a source"],
            "integration_notes": "keep one voice",
        }
        return Reply(content=json.dumps(answer))
    return Reply(content=MARKDOWN)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        running.responder = crew_answer
        yield running


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: OpenAIServer) -> Path:
    setup_cli_env(tmp_path, monkeypatch)
    for name, value in {
        "LLM_DEFAULT_PROVIDER": "openai",
        "LLM_DEFAULT_MODEL": "gpt-4o-mini",
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_BACKOFF_BASE_MS": "1",
        "CREW_LANGUAGE": "en",
    }.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def write_plan(tmp_path: Path, nodes: list[dict[str, Any]]) -> str:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"title": "Rapport test", "plan": nodes}), encoding="utf-8")
    return str(path)


def sidecars(tmp_path: Path, run_id: str) -> dict[str, dict[str, Any]]:
    found = {}
    for path in (tmp_path / "runs" / run_id).rglob("*.llm.json"):
        found[path.name] = json.loads(path.read_text(encoding="utf-8"))
    return found


def test_end_to_end_supervisor_run_against_the_openai_server(
    cli_env: Path, server: OpenAIServer
) -> None:
    result = invoke("run", "--use-supervisor", "--title", "Rapport 80p", "--json", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["nodes"]["completed"] == 4
    assert summary["input_tokens"] > 0 and summary["output_tokens"] > 0
    assert summary["cost_usd"] > 0
    found = sidecars(cli_env, summary["run_id"])
    assert set(found) == {
        "supervisor.llm.json",
        "manager_lead.llm.json",
        "artifact_collect.llm.json",
        "artifact_write.llm.json",
        "artifact_final.llm.json",
    }
    for sidecar in found.values():
        assert sidecar["provider"] == "openai" and sidecar["model"] == "gpt-4o-mini"
        assert sidecar["response_model"] == "gpt-4o-mini-2024-07-18"
        assert sidecar["input_tokens"] > 0 and sidecar["output_tokens"] > 0
        assert sidecar["cost_usd"] > 0 and sidecar["price_source"].startswith("table:")
        assert sidecar["usage_estimated"] is False
        assert sidecar["attempts_detail"][-1]["ok"] is True
    total = sum(s["cost_usd"] for s in found.values())
    assert summary["cost_usd"] == pytest.approx(total)
    supervisor_body = server.chat_requests()[0].json
    assert supervisor_body["response_format"]["type"] == "json_schema"  # the plan's schema
    assert supervisor_body["response_format"]["json_schema"]["name"] == "plan"


def test_flags_node_llm_and_role_settings_reach_the_body(
    cli_env: Path, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXECUTOR_TEMPERATURE", "0.6")
    monkeypatch.setenv("EXECUTOR_MAX_TOKENS", "300")
    plan = write_plan(
        cli_env,
        [
            {"id": "a", "title": "Alpha part", "llm": {"model": "gpt-4o", "temperature": 0.9}},
            {"id": "b", "title": "Beta part", "llm": {"max_tokens": 55}},
        ],
    )
    result = invoke("run", "--task-file", plan, "--json", "-q", "--executor-model", "gpt-4.1-mini")
    assert result.exit_code == 0, result.output
    bodies = {
        ("A" if "Alpha part" in json.dumps(r.json) else "B"): r.json for r in server.chat_requests()
    }
    assert (bodies["A"]["model"], bodies["A"]["temperature"], bodies["A"]["max_tokens"]) == (
        "gpt-4.1-mini",  # the CLI flag beats the node
        0.9,  # the node beats EXECUTOR_TEMPERATURE
        300,
    )
    assert (bodies["B"]["model"], bodies["B"]["temperature"], bodies["B"]["max_tokens"]) == (
        "gpt-4.1-mini",
        0.6,
        55,
    )


def test_provider_concurrency_across_nodes_and_env_prices(
    cli_env: Path, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_MAX_CONCURRENCY", "2")
    monkeypatch.setenv("OPENAI_PRICE_PROMPT_GPT_4O_MINI_PER_1K", "0.5")
    monkeypatch.setenv("OPENAI_PRICE_COMPLETION_GPT_4O_MINI_PER_1K", "1.5")
    server.responder = lambda request: Reply(content=MARKDOWN, delay_s=0.05)
    plan = write_plan(cli_env, [{"id": f"n{i}", "title": f"Part {i}"} for i in range(6)])
    result = invoke("run", "--task-file", plan, "--json", "-q", "--max-concurrency", "6")
    assert result.exit_code == 0, result.output
    assert len(server.chat_requests()) == 6
    assert server.max_in_flight == 2
    summary = json.loads(result.stdout)
    found = sidecars(cli_env, summary["run_id"]).values()
    for sidecar in found:
        assert sidecar["price_source"] == "env"
        expected = (sidecar["input_tokens"] * 0.5 + sidecar["output_tokens"] * 1.5) / 1000
        assert sidecar["cost_usd"] == pytest.approx(expected)
    assert summary["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in found))
    run = Store(cli_env).run(summary["run_id"])
    assert run.cost_usd == pytest.approx(summary["cost_usd"])
    assert run.input_tokens == sum(s["input_tokens"] for s in found)


def test_a_cost_budget_stops_the_run_midway(cli_env: Path, server: OpenAIServer) -> None:
    nodes = [{"id": f"n{i}", "title": f"Part {i}", "llm": {"max_tokens": 120}} for i in range(8)]
    plan = write_plan(cli_env, nodes)
    free = invoke("run", "--task-file", plan, "--json", "-q", "--max-concurrency", "2")
    assert free.exit_code == 0, free.output
    per_call = json.loads(free.stdout)["cost_usd"] / len(nodes)
    server.requests.clear()

    limit = round(per_call * 3.5, 9)
    result = invoke(
        "run", "--task-file", plan, "--json", "-q", "--max-concurrency", "2",
        "--max-cost", str(limit),
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "failed" and summary["error"] == "budget_exceeded"
    store = Store(cli_env)
    run_id = summary["run_id"]
    assert store.run(run_id).error == "budget_exceeded"
    statuses = {key: node.status for key, node in store.nodes(run_id).items()}
    completed = [k for k, s in statuses.items() if s == "completed"]
    skipped = [k for k, s in statuses.items() if s == "skipped"]
    assert completed and skipped and len(completed) + len(skipped) == len(nodes)
    assert all(store.nodes(run_id)[k].error == "budget exceeded" for k in skipped)
    assert len(server.chat_requests()) == len(completed)  # a refused call is never sent
    events = store.events(run_id)
    budget_events = [e for e in events if e.type == "BUDGET_EXCEEDED"]
    assert len(budget_events) == 1
    payload = budget_events[0].payload
    assert payload["limit"] == pytest.approx(limit)
    assert payload["would_spend"] > limit and payload["spent"] <= limit
    assert events[-1].type == "RUN_FAILED"

    # overshoot bound: spent <= limit + concurrency x the worst case of one call
    price = Price(0.00015, 0.0006, "table")
    worst = max(
        worst_case_cost(
            price,
            prompt_tokens_worst(
                LLMRequest(
                    role="Writer",
                    messages=tuple(Message(m["role"], m["content"]) for m in r.json["messages"]),
                    max_tokens=120,
                )
            ),
            120,
        )
        for r in server.chat_requests()
    )
    assert summary["cost_usd"] <= limit + 2 * worst
    assert summary["cost_usd"] <= limit  # reservations make it hold without overshoot


def test_a_token_budget_too_small_for_the_supervisor_exits_3(cli_env: Path) -> None:
    result = invoke("run", "--use-supervisor", "--max-tokens", "50", "--json", "-q")
    assert result.exit_code == 3, result.output
    assert "token budget exceeded" in result.stderr


@pytest.mark.parametrize(
    ("flag", "value"), [("--max-cost", "-1"), ("--max-tokens", "-5"), ("--max-tokens", "0")]
)
def test_negative_budgets_are_refused(cli_env: Path, flag: str, value: str) -> None:
    result = invoke("run", "--use-supervisor", flag, value)
    assert result.exit_code == 2
    assert flag in result.stderr


def test_budget_flags_show_their_variables() -> None:
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert "[env: RUN_MAX_COST_USD]" in result.stdout
    assert "[env: RUN_MAX_TOKENS]" in result.stdout


def test_unreachable_provider_during_a_run_exits_4(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_servers import refused_url

    monkeypatch.setenv("OPENAI_BASE_URL", refused_url("/v1"))
    monkeypatch.setenv("OPENAI_MAX_RETRIES", "0")
    plan = write_plan(cli_env, [{"id": "a", "title": "A"}])
    result = invoke("run", "--task-file", plan, "--json", "-q")
    assert result.exit_code == 4, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "failed"
    assert "is not reachable" in (Store(cli_env).nodes(summary["run_id"])["a"].error or "")
    assert os.environ["LLM_DEFAULT_PROVIDER"] == "openai"
