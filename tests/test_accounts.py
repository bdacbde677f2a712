"""True accounts through `crew run` against local servers speaking the real wire formats:
every call that reached a server is recorded and counted (failed attempts included), a
server that reports more than `max_tokens` stops the run with the overshoot recorded,
errors say what happened, fallback is visible and quick, and `--json` always prints one
object."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from accounts import assert_totals_are_the_sum_of_calls
from click.testing import Result
from engine_support import Store, setup_cli_env, use_provider
from fakes import ScriptedProvider
from llm_servers import OllamaServer, OpenAIServer, RecordedRequest, Reply, openai_error_reply
from typer.testing import CliRunner

from crew.cli.main import app
from crew.llm.base import LLMRequest
from crew.llm.offline import read_context

MARKDOWN = "## Section\n\nDu texte utile pour le rapport, avec des accents : été, où, ça."


def kind_of(request: RecordedRequest) -> str | None:
    body = request.json or {}
    messages = body.get("messages", [])
    from crew.llm.base import Message

    context = read_context([Message(m["role"], m["content"]) for m in messages]) or {}
    kind = context.get("crew_context")
    return kind if isinstance(kind, str) else None


def good_plan() -> dict[str, Any]:
    return {
        "title": "Rapport",
        "plan": [
            {"id": "n1", "title": "Collect", "deps": []},
            {"id": "n2", "title": "Write", "type": "synthesis", "deps": ["n1"]},
        ],
    }


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        running.responder = lambda request: Reply(content=MARKDOWN)
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
        "RETRIES": "0",
    }.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def write_plan(tmp_path: Path, nodes: list[dict[str, Any]]) -> str:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"title": "Rapport test", "plan": nodes}), encoding="utf-8")
    return str(path)


def run_json(*args: str) -> tuple[Result, dict[str, Any]]:
    result = invoke("run", *args, "--json", "-q")
    return result, json.loads(result.stdout)


MANAGED = [
    {"id": "lead", "title": "Organise", "type": "manage"},
    {"id": "write", "title": "Write", "deps": ["lead"]},
]


def test_a_manager_that_never_validates_is_counted_and_recorded(
    cli_env: Path, server: OpenAIServer
) -> None:
    def answer(request: RecordedRequest) -> Reply:
        return Reply(content="I cannot do that." if kind_of(request) == "assign" else MARKDOWN)

    server.responder = answer
    result, summary = run_json("--task-file", write_plan(cli_env, MANAGED))
    assert result.exit_code == 1, result.output
    store = Store(cli_env)
    run_id = summary["run_id"]
    lead = store.nodes(run_id)["lead"]
    assert lead.status == "failed" and "no valid assignments" in lead.error
    assert lead.input_tokens > 0 and lead.output_tokens > 0  # spent, so counted
    calls = assert_totals_are_the_sum_of_calls(store, run_id)
    assert [e.node_key for e in calls] == ["lead"] * 3  # SUPERVISOR_MAX_ATTEMPTS tries
    assert summary["input_tokens"] == lead.input_tokens
    # the attempt's details stay in the database: a sidecar artifact with its content
    rows = [a for a in store.call(lambda repo: repo.list_artifacts(run_id=run_id))]
    failed = [a for a in rows if a.node_id == lead.id and a.type == "sidecar"]
    assert len(failed) == 1 and failed[0].content
    sidecar = json.loads(failed[0].content)
    assert sidecar["calls"] == 3 and sidecar["input_tokens"] == lead.input_tokens
    assert "no valid assignments" in sidecar["error"]


def test_supervisor_repairs_are_counted_on_a_supervised_run(
    cli_env: Path, server: OpenAIServer
) -> None:
    plans = iter(
        [Reply(content='{"title": "x", "plan": []}'), Reply(content=json.dumps(good_plan()))]
    )

    def answer(request: RecordedRequest) -> Reply:
        return next(plans) if kind_of(request) == "plan" else Reply(content=MARKDOWN)

    server.responder = answer
    result, summary = run_json("--use-supervisor", "--title", "Rapport")
    assert result.exit_code == 0, result.output
    store = Store(cli_env)
    calls = assert_totals_are_the_sum_of_calls(store, summary["run_id"])
    supervisor = json.loads(
        (cli_env / "runs" / summary["run_id"] / "supervisor.llm.json").read_text()
    )
    assert supervisor["calls"] == 2
    assert len([e for e in calls if e.node_key is None]) == 1  # one event, both calls
    assert summary["providers"] == {"openai": 4} and summary["fallback_calls"] == 0


def test_http_errors_before_an_answer_keep_their_details_and_time(
    cli_env: Path, server: OpenAIServer
) -> None:
    server.enqueue(openai_error_reply(500, "The server had an error processing your request."))
    result, summary = run_json("--task-file", write_plan(cli_env, [{"id": "a", "title": "A"}]))
    assert result.exit_code == 0, result.output
    assert_totals_are_the_sum_of_calls(Store(cli_env), summary["run_id"])
    path = next((cli_env / "runs" / summary["run_id"]).rglob("artifact_a.llm.json"))
    sidecar = json.loads(path.read_text())
    failed, answered = sidecar["attempts_detail"]
    assert failed["status"] == 500 and "processing your request" in failed["error"]
    assert failed["latency_ms"] is not None and answered["ok"] is True
    assert sidecar["elapsed_ms"] >= sidecar["latency_ms"] + failed["latency_ms"] * 0.999


def test_a_prompt_too_long_fails_the_node_with_the_numbers(
    cli_env: Path, server: OpenAIServer
) -> None:
    server.responder = lambda request: openai_error_reply(
        400,
        "This model's maximum context length is 512 tokens. However, you requested 900 "
        "tokens (644 in the messages, 256 in the completion).",
        "invalid_request_error",
        "context_length_exceeded",
    )
    result, summary = run_json("--task-file", write_plan(cli_env, [{"id": "a", "title": "A"}]))
    assert result.exit_code == 1, result.output  # a failed node, not an unavailable provider
    assert summary["error_code"] == "node_failed"
    assert len(server.chat_requests()) == 1  # not retried: it would fail the same way
    store = Store(cli_env)
    error = store.nodes(summary["run_id"])["a"].error
    assert "context window" in error and "maximum context length is 512" in error
    assert "bytes of prompt" in error and "max_tokens=" in error
    rows = store.call(lambda repo: repo.list_artifacts(run_id=summary["run_id"]))
    (failed,) = [a for a in rows if a.type == "sidecar"]
    detail = json.loads(failed.content)["failed_calls"][0]["attempts_detail"][0]
    assert detail["status"] == 400
    assert_totals_are_the_sum_of_calls(store, summary["run_id"])


def test_usage_reported_past_max_tokens_stops_the_run_with_the_overshoot(
    cli_env: Path, server: OpenAIServer
) -> None:
    server.responder = lambda request: Reply(content=MARKDOWN, completion_tokens=50_000)
    nodes = [{"id": k, "title": k.upper()} for k in ("a", "b", "c")]
    result, summary = run_json(
        "--task-file", write_plan(cli_env, nodes), "--max-concurrency", "1",
        "--max-tokens", "20000",
    )  # fmt: skip
    assert result.exit_code == 3, result.output
    assert summary["error"] == "budget_exceeded"
    assert len(server.chat_requests()) == 1  # nothing starts once the limit is passed
    store = Store(cli_env)
    (event,) = [e for e in store.events(summary["run_id"]) if e.type == "BUDGET_EXCEEDED"]
    assert event.payload["overshoot"] == summary["input_tokens"] + 50_000 - 20_000
    assert event.payload["limit"] == 20_000
    assert_totals_are_the_sum_of_calls(store, summary["run_id"])


def test_fallback_is_counted_and_an_open_circuit_skips_the_dead_provider(
    cli_env: Path, server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.responder = lambda request: openai_error_reply(503, "overloaded")
    with OllamaServer() as ollama:
        for name, value in {
            "LLM_FALLBACK_ORDER": "ollama",
            "OLLAMA_BASE_URL": ollama.url,
            "OLLAMA_FALLBACK_MODEL": "llama3.1:8b",
            "OPENAI_MAX_RETRIES": "1",
        }.items():
            monkeypatch.setenv(name, value)
        nodes = [{"id": k, "title": k.upper()} for k in ("a", "b", "c")]
        result, summary = run_json(
            "--task-file", write_plan(cli_env, nodes), "--max-concurrency", "1"
        )
        assert result.exit_code == 0, result.output
        # the first node spent the retry cycle; the circuit then sent the others on
        assert len(server.chat_requests()) == 2
        assert len(ollama.chat_requests()) == 3
    assert summary["providers"] == {"ollama": 3} and summary["fallback_calls"] == 3
    store = Store(cli_env)
    calls = assert_totals_are_the_sum_of_calls(store, summary["run_id"])
    assert {e.payload["fallback_from"] for e in calls} == {"openai"}
    shown = json.loads(invoke("runs", "show", summary["run_id"], "--json").stdout)
    assert (shown["providers"], shown["fallback_calls"]) == ({"ollama": 3}, 3)
    text = invoke("runs", "show", summary["run_id"]).stdout
    assert "answered by: ollama 3 (3 call(s) by a fallback provider)" in text
    human = invoke("run", "--task-file", write_plan(cli_env, nodes[:1]), "-q")
    assert "by a fallback provider" not in human.stdout  # -q prints nothing at all


def test_failed_planning_prints_one_json_object_and_exits_4(
    cli_env: Path, server: OpenAIServer
) -> None:
    server.responder = lambda request: Reply(content='{"plan": "nothing useful"}')
    result = invoke("run", "--use-supervisor", "--title", "Rapport", "--json", "-q")
    assert result.exit_code == 4, result.output
    failed = json.loads(result.stdout)
    assert failed["run_id"] is None and failed["status"] == "failed"
    assert failed["error_code"] == "invalid_model_answer" and failed["exit_code"] == 4
    assert failed["supervisor"]["calls"] == 3 and failed["supervisor"]["input_tokens"] > 0
    human = invoke("run", "--use-supervisor", "--title", "Rapport")
    assert human.exit_code == 4
    assert "supervisor: 3 call(s) answered" in human.stderr


def test_a_truncated_plan_names_the_setting_to_raise(cli_env: Path, server: OpenAIServer) -> None:
    server.responder = lambda request: Reply(content='{"title": "Rap', finish_reason="length")
    result = invoke("plan", "--title", "Rapport", "--json")
    assert result.exit_code == 4, result.output
    assert "truncated" in result.stderr and "SUPERVISOR_MAX_TOKENS" in result.stderr
    assert "Unterminated string" not in result.stderr
    assert len(server.chat_requests()) == 1  # repairing a cut-off answer would be cut off too
    assert "1 call(s) answered" in result.stderr
    verbose = invoke("-v", "plan", "--title", "Rapport", "--json")
    assert verbose.exit_code == 4
    assert '{"title": "Rap' in verbose.stderr  # -v shows the raw answer


def test_an_interrupted_run_prints_one_json_object_with_its_run_id(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_DEFAULT_PROVIDER", "offline")
    monkeypatch.delenv("LLM_DEFAULT_MODEL")

    async def stop_the_process(request: LLMRequest) -> str:
        os.kill(os.getpid(), signal.SIGTERM)  # what `kill PID` does: crew run cancels itself
        await asyncio.Event().wait()  # cancelled by the signal's handler
        raise AssertionError("not reached")

    use_provider(monkeypatch, ScriptedProvider([stop_the_process]))
    result = invoke(
        "run", "--task-file", write_plan(cli_env, [{"id": "a", "title": "A"}]), "--json"
    )
    assert result.exit_code == 130, result.output
    stopped = json.loads(result.stdout)
    assert stopped["status"] == "interrupted" and stopped["exit_code"] == 130
    assert stopped["run_id"] in Store(cli_env).run_ids()


def test_a_resumed_run_still_sums_its_calls(cli_env: Path, server: OpenAIServer) -> None:
    refuse = [True]

    def answer(request: RecordedRequest) -> Reply:
        if refuse[0] and kind_of(request) == "assign":
            return Reply(content='{"assignments": []}')  # invalid: no quality check
        return (
            Reply(content=MARKDOWN)
            if kind_of(request) != "assign"
            else Reply(
                content=json.dumps(
                    {
                        "assignments": [{"node_id": "write", "agent": "Writer_FR", "tooling": []}],
                        "quality_checks": ["sources"],
                        "integration_notes": "one voice",
                    }
                )
            )
        )

    server.responder = answer
    result, summary = run_json("--task-file", write_plan(cli_env, MANAGED))
    assert result.exit_code == 1, result.output
    refuse[0] = False
    result, resumed = run_json("--resume", summary["run_id"])
    assert result.exit_code == 0, result.output
    store = Store(cli_env)
    calls = assert_totals_are_the_sum_of_calls(store, summary["run_id"])
    assert len([e for e in calls if e.node_key == "lead"]) == 4  # 3 failed, 1 answered
    assert resumed["input_tokens"] == sum(e.payload["input_tokens"] for e in calls)


def test_a_truncated_manager_answer_fails_its_node_naming_the_setting(
    cli_env: Path, server: OpenAIServer
) -> None:
    def answer(request: RecordedRequest) -> Reply:
        if kind_of(request) == "assign":
            return Reply(content='{"assignments": [{"node_id": "wri', finish_reason="length")
        return Reply(content=MARKDOWN)

    server.responder = answer
    result, summary = run_json("--task-file", write_plan(cli_env, MANAGED))
    assert result.exit_code == 1, result.output
    store = Store(cli_env)
    error = store.nodes(summary["run_id"])["lead"].error
    assert "truncated" in error and "MANAGER_MAX_TOKENS" in error
    assert_totals_are_the_sum_of_calls(store, summary["run_id"])
