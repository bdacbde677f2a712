"""Provider faults, end to end: `crew run` against local servers speaking the OpenAI and
Ollama wire formats that drop connections mid-answer, stall past LLM_TIMEOUT_S, send
truncated JSON, fail with 500 then recover, or answer 429 with Retry-After.

What is checked is what a user relies on: the number of tries stays within
OPENAI_MAX_RETRIES / NODE_RETRIES (counted at the server, never by the clock), a
recovered call completes the run, and every failed try leaves its reason where people
look (the sidecar's `attempts_detail`, the node's error, NODE_RETRYING events). The one
timing check, that a Retry-After was honoured, compares the server's own arrival times
against a lower bound only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from engine_support import Store, setup_cli_env
from llm_servers import (
    FakeLLMServer,
    OllamaServer,
    OpenAIServer,
    Reply,
    openai_error_reply,
    rate_limited,
)
from typer.testing import CliRunner

from crew.cli.main import app

PROVIDER_RETRIES = 2
"""OPENAI_MAX_RETRIES (it applies to Ollama too): a call is tried at most 3 times."""
CALL_TRIES = 1 + PROVIDER_RETRIES
TIMEOUT_S = 0.4
STALL_S = 30.0
"""A stalled answer would come this late: far past every deadline set here."""
MARKDOWN = "## Partie\n\nUn paragraphe de rapport, assez long pour être une vraie réponse."


@pytest.fixture(params=["openai", "ollama"])
def server(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeLLMServer]:
    """A running server of either wire format, and a CLI environment pointing at it."""
    setup_cli_env(tmp_path, monkeypatch)
    running: FakeLLMServer = OpenAIServer() if request.param == "openai" else OllamaServer()
    with running:
        base = running.base_url if isinstance(running, OpenAIServer) else running.url
        env = {
            "LLM_DEFAULT_PROVIDER": request.param,
            "LLM_DEFAULT_MODEL": "gpt-4o-mini" if request.param == "openai" else "llama3.1:8b",
            "OPENAI_BASE_URL" if request.param == "openai" else "OLLAMA_BASE_URL": base,
            "OPENAI_MAX_RETRIES": str(PROVIDER_RETRIES),
            "OPENAI_BACKOFF_BASE_MS": "1",
            "NODE_RETRIES": "1",
            "LLM_TIMEOUT_S": str(TIMEOUT_S),
            "CREW_LANGUAGE": "en",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield running


@pytest.fixture
def openai_only(server: FakeLLMServer) -> OpenAIServer:
    if not isinstance(server, OpenAIServer):
        pytest.skip("429 with Retry-After is the OpenAI-compatible servers' rate limit")
    return server


def server_error(server: FakeLLMServer, status: int = 500) -> Reply:
    """The server's own shape of an internal error."""
    if isinstance(server, OpenAIServer):
        return openai_error_reply(
            status, "The server had an error while processing your request. Sorry about that!"
        )
    return Reply(status=status, body={"error": "model runner has unexpectedly stopped"})


def run_one_node(tmp_path: Path) -> tuple[Result, dict[str, Any]]:
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps({"title": "Rapport", "plan": [{"id": "part", "title": "Write a part"}]}),
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["run", "--task-file", str(plan), "--json", "-q"])
    assert result.stdout, result.output
    return result, json.loads(result.stdout)


def sidecar(tmp_path: Path, run_id: str) -> dict[str, Any]:
    path = tmp_path / "runs" / run_id / "nodes" / "part" / "artifact_part.llm.json"
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def events_of(tmp_path: Path, run_id: str, kind: str) -> list[Any]:
    return [e for e in Store(tmp_path).events(run_id) if e.type == kind]


def failed_tries(detail: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in detail if not a["ok"]]


# ---- faults that pass: the retry answers and the run completes ---------------------------


def test_a_connection_dropped_mid_answer_is_retried(server: FakeLLMServer, tmp_path: Path) -> None:
    server.enqueue(Reply(content=MARKDOWN, cut_after=25), Reply(content=MARKDOWN))
    result, summary = run_one_node(tmp_path)
    assert result.exit_code == 0, result.output
    assert len(server.chat_requests()) == 2
    detail = sidecar(tmp_path, summary["run_id"])["attempts_detail"]
    assert [a["ok"] for a in detail] == [False, True]
    assert detail[0]["retryable"] is True and "connection failed" in detail[0]["error"]


def test_a_stall_past_the_timeout_is_cut_and_retried(server: FakeLLMServer, tmp_path: Path) -> None:
    server.enqueue(Reply(content=MARKDOWN, delay_s=STALL_S), Reply(content=MARKDOWN))
    result, summary = run_one_node(tmp_path)
    assert result.exit_code == 0, result.output
    assert len(server.chat_requests()) == 2
    (stalled,) = failed_tries(sidecar(tmp_path, summary["run_id"])["attempts_detail"])
    assert f"did not answer within {TIMEOUT_S:g}s" in stalled["error"]


def test_a_trickled_answer_is_cut_at_the_deadline(server: FakeLLMServer, tmp_path: Path) -> None:
    """Bytes keep coming, each well within the deadline, the whole answer far beyond it:
    LLM_TIMEOUT_S bounds the exchange, not the gap between two bytes."""
    server.enqueue(Reply(content=MARKDOWN, trickle_s=0.05), Reply(content=MARKDOWN))
    result, summary = run_one_node(tmp_path)
    assert result.exit_code == 0, result.output
    assert len(server.chat_requests()) == 2
    (trickled,) = failed_tries(sidecar(tmp_path, summary["run_id"])["attempts_detail"])
    assert f"did not answer within {TIMEOUT_S:g}s" in trickled["error"]


def test_500_then_recovery(server: FakeLLMServer, tmp_path: Path) -> None:
    server.enqueue(server_error(server), server_error(server, 503), Reply(content=MARKDOWN))
    result, summary = run_one_node(tmp_path)
    assert result.exit_code == 0, result.output
    assert len(server.chat_requests()) == CALL_TRIES
    data = sidecar(tmp_path, summary["run_id"])
    assert data["attempts"] == CALL_TRIES
    detail = data["attempts_detail"]
    assert [(a["ok"], a["status"]) for a in detail] == [(False, 500), (False, 503), (True, None)]
    assert all(a["error"] for a in detail[:2])
    assert Store(tmp_path).nodes(summary["run_id"])["part"].attempts == 1


def test_429_waits_at_least_retry_after(openai_only: OpenAIServer, tmp_path: Path) -> None:
    openai_only.enqueue(rate_limited("1"), Reply(content=MARKDOWN))
    result, summary = run_one_node(tmp_path)
    assert result.exit_code == 0, result.output
    first, second = openai_only.chat_requests()
    assert second.received_at - first.received_at >= 0.9  # a lower bound only
    (limited,) = failed_tries(sidecar(tmp_path, summary["run_id"])["attempts_detail"])
    assert limited["status"] == 429 and limited["wait_s"] >= 1.0
    assert "Rate limit" in limited["error"]


def test_a_node_timeout_is_a_node_retry_with_its_reason(
    server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NODE_TIMEOUT_S shorter than the provider's deadline: the engine cuts the node, says
    why in NODE_RETRYING, and the node's second attempt gets the answer."""
    monkeypatch.setenv("LLM_TIMEOUT_S", str(STALL_S * 2))
    monkeypatch.setenv("NODE_TIMEOUT_S", str(TIMEOUT_S))
    server.enqueue(Reply(content=MARKDOWN, delay_s=STALL_S), Reply(content=MARKDOWN))
    result, summary = run_one_node(tmp_path)
    assert result.exit_code == 0, result.output
    assert len(server.chat_requests()) == 2
    (retrying,) = events_of(tmp_path, summary["run_id"], "NODE_RETRYING")
    assert retrying.node_key == "part" and "timed out" in retrying.payload["error"]
    assert Store(tmp_path).nodes(summary["run_id"])["part"].attempts == 2


# ---- faults that last: the tries are bounded and the reason is on the node ---------------


def test_500_forever_stops_after_the_provider_retries(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    server.responder = lambda _request: server_error(server)
    result, summary = run_one_node(tmp_path)
    assert result.exit_code == 4, result.output  # the provider could not answer
    # Retries are not multiplied: the node is not retried on top of the call's retries.
    assert len(server.chat_requests()) == CALL_TRIES
    node = Store(tmp_path).nodes(summary["run_id"])["part"]
    assert node.status == "failed" and node.attempts == 1
    expected = "processing your request" if isinstance(server, OpenAIServer) else "runner"
    assert expected in (node.error or "")
    assert not events_of(tmp_path, summary["run_id"], "NODE_RETRYING")


def test_drops_forever_stop_after_the_provider_retries(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    server.responder = lambda _request: Reply(content=MARKDOWN, cut_after=10)
    result, summary = run_one_node(tmp_path)
    assert result.exit_code == 4, result.output
    assert len(server.chat_requests()) == CALL_TRIES
    node = Store(tmp_path).nodes(summary["run_id"])["part"]
    assert node.status == "failed" and "connection failed" in (node.error or "")


def test_429_forever_stops_after_the_provider_retries(
    openai_only: OpenAIServer, tmp_path: Path
) -> None:
    openai_only.responder = lambda _request: rate_limited("0")
    result, summary = run_one_node(tmp_path)
    assert result.exit_code == 4, result.output
    assert len(openai_only.chat_requests()) == CALL_TRIES
    node = Store(tmp_path).nodes(summary["run_id"])["part"]
    assert node.status == "failed" and "Rate limit" in (node.error or "")


def test_a_truncated_json_body_is_not_retried(server: FakeLLMServer, tmp_path: Path) -> None:
    """A complete 200 answer whose JSON is cut short: the server would most likely do it
    again, so it is one try, and the node says the body was not JSON."""
    body = '{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"mess'
    if isinstance(server, OllamaServer):
        body = '{"model": "llama3.1:8b", "message": {"role": "assistant", "cont'
    server.responder = lambda _request: Reply(body=body)
    result, summary = run_one_node(tmp_path)
    assert result.exit_code == 4, result.output
    assert len(server.chat_requests()) == 1
    node = Store(tmp_path).nodes(summary["run_id"])["part"]
    assert node.status == "failed" and "malformed response" in (node.error or "")
    assert "not JSON" in (node.error or "")


def test_retry_after_beyond_the_cap_ends_the_retries(
    openai_only: OpenAIServer, tmp_path: Path
) -> None:
    """A server asking for ten minutes is not waited for: one try, the reason kept."""
    openai_only.responder = lambda _request: rate_limited("600")
    result, summary = run_one_node(tmp_path)
    assert result.exit_code == 4, result.output
    assert len(openai_only.chat_requests()) == 1
    node = Store(tmp_path).nodes(summary["run_id"])["part"]
    assert node.status == "failed" and "Rate limit" in (node.error or "")
