"""Against a real OpenAI-compatible server: the llama.cpp server with a tiny random model
(tests/realserver.py). Its answers are noise, but its usage is real (a real tokenizer
and chat template), it enforces JSON grammars, it has a context window, and it can be
killed. SKIPPED, with the reason, unless the `realserver` extra is installed; CI
installs it so these always run there (`nox -s realserver` runs them alone).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from accounts import assert_totals_are_the_sum_of_calls
from click.testing import Result
from engine_support import Store, setup_cli_env
from realserver import MODEL_ALIAS, N_CTX, RealServer, missing_reason, serving, tiny_model
from typer.testing import CliRunner

from crew.cli.main import app
from crew.engine.budget import COMPLETION_OVERRUN, prompt_tokens_worst
from crew.llm.base import LLMRequest, Message

pytestmark = [
    pytest.mark.realserver,
    pytest.mark.slow,
    pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason())),
]

FRENCH = (
    "Rédiger la synthèse détaillée : état des lieux, écarts constatés, "
    "préconisations chiffrées et échéancier réaliste pour l'équipe."
)


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    """One server for the tests that do not kill it."""
    folder = tmp_path_factory.mktemp("realserver")
    with serving(tiny_model(folder), folder / "server.log") as server:
        yield server


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Iterator[RealServer]:
    """A server of the test's own, which it may kill."""
    folder = tmp_path_factory.getbasetemp() / "realserver-model"
    folder.mkdir(exist_ok=True)
    with serving(tiny_model(folder), tmp_path / "server.log") as server:
        yield server


def use_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: RealServer) -> None:
    setup_cli_env(tmp_path, monkeypatch)
    for name, value in {
        "LLM_DEFAULT_PROVIDER": "openai",
        "LLM_DEFAULT_MODEL": MODEL_ALIAS,
        "OPENAI_BASE_URL": server.base_url,
        "OPENAI_BACKOFF_BASE_MS": "1",
        "OPENAI_MAX_RETRIES": "1",
        "OPENAI_MAX_CONCURRENCY": "1",  # the server answers one request at a time
        "EXECUTOR_MAX_TOKENS": "24",
        "EXECUTOR_TEMPERATURE": "1.0",
        "CREW_LANGUAGE": "fr",
        "RETRIES": "0",
        "SIDECAR_PROMPT_MAX_CHARS": "1000000",
    }.items():
        monkeypatch.setenv(name, value)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def write_plan(tmp_path: Path, nodes: list[dict[str, Any]]) -> str:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"title": "Rapport", "plan": nodes}), encoding="utf-8")
    return str(path)


def sidecars(tmp_path: Path, run_id: str) -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((tmp_path / "runs" / run_id).rglob("*.llm.json"))
    ]


def bound_of(sidecar: dict[str, Any]) -> int:
    """The reservation's prompt bound for the request a sidecar records."""
    prompts = sidecar["prompts"]
    request = LLMRequest(
        role="x", messages=(Message("system", prompts["system"]), Message("user", prompts["user"]))
    )
    return prompt_tokens_worst(request)


def test_a_run_completes_with_usage_from_the_server(
    real_server: RealServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, tmp_path, real_server)
    plan = write_plan(
        tmp_path,
        [
            {"id": "a", "title": FRENCH, "acceptance": [FRENCH]},
            {"id": "b", "title": "Relire", "type": "synthesis", "deps": ["a"]},
        ],
    )
    result = invoke("run", "--task-file", plan, "--json", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed" and summary["providers"] == {"openai": 2}
    assert summary["cost_usd"] is None  # no price for a local model nobody priced
    calls = assert_totals_are_the_sum_of_calls(Store(tmp_path), summary["run_id"])
    assert all(e.payload["usage_estimated"] is False for e in calls)
    # the server may finish a UTF-8 character past max_tokens (26 for 24): the budget's
    # reservation allows for it (COMPLETION_OVERRUN)
    assert all(e.payload["output_tokens"] <= 24 + COMPLETION_OVERRUN for e in calls)
    for sidecar in sidecars(tmp_path, summary["run_id"]):
        assert sidecar["usage_estimated"] is False and sidecar["model"] == MODEL_ALIAS
        # the reservation's bound holds against the server's own count of the prompt
        assert sidecar["input_tokens"] <= bound_of(sidecar)


def test_budgets_hold_against_real_token_counts(
    real_server: RealServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, tmp_path, real_server)
    nodes = [{"id": f"n{i}", "title": FRENCH, "acceptance": [FRENCH]} for i in range(1, 6)]
    plan = write_plan(tmp_path, nodes)
    limit = 6000
    result = invoke(
        "run", "--task-file", plan, "--json", "-q", "--max-tokens", str(limit),
        "--max-concurrency", "2",
    )  # fmt: skip
    summary = json.loads(result.stdout)
    spent = summary["input_tokens"] + summary["output_tokens"]
    assert spent <= limit  # never passed: the bound is a bound and the server keeps max_tokens
    assert result.exit_code == 3, result.output
    assert 0 < summary["nodes"]["completed"] < len(nodes)
    store = Store(tmp_path)
    (event,) = [e for e in store.events(summary["run_id"]) if e.type == "BUDGET_EXCEEDED"]
    assert event.payload["overshoot"] == 0
    assert_totals_are_the_sum_of_calls(store, summary["run_id"])


def test_the_random_model_yields_a_valid_plan_through_the_schema(
    real_server: RealServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, tmp_path, real_server)
    # the longest answer the schema allows fits: a grammar never cuts the plan short
    monkeypatch.setenv("SUPERVISOR_MAX_TOKENS", "10000")
    monkeypatch.setenv("SUPERVISOR_TEMPERATURE", "1.0")
    monkeypatch.setenv("SUPERVISOR_MAX_ATTEMPTS", "1")  # valid at once, no repair needed
    out = tmp_path / "plan.json"
    result = invoke("plan", "--title", "Rapport d'audit", "--json", "--out", str(out))
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["plan"] and plan["plan"][0]["id"] == "n1"
    sidecar = json.loads(out.with_suffix(".llm.json").read_text(encoding="utf-8"))
    # llama-cpp-python's server refuses "json_schema" with HTTP 500 and enforces the
    # other spelling: detected, tried once, and the answer is within the grammar
    assert sidecar["structured_output"] == "json_object_schema"
    assert sidecar["format_refusals"][0]["status"] == 500
    assert sidecar["finish_reason"] == "stop" and sidecar["usage_estimated"] is False


def test_a_prompt_beyond_the_context_window_fails_the_node_with_the_numbers(
    real_server: RealServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, tmp_path, real_server)
    notes = [FRENCH * 12] * 14  # about 23,000 bytes: past the 16,384-token window
    plan = write_plan(tmp_path, [{"id": "a", "title": "Trop long", "notes": notes}])
    result = invoke("run", "--task-file", plan, "--json", "-q")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["error_code"] == "node_failed"
    store = Store(tmp_path)
    error = store.nodes(summary["run_id"])["a"].error
    assert f"maximum context length is {N_CTX} tokens" in error and "bytes of prompt" in error
    assert_totals_are_the_sum_of_calls(store, summary["run_id"])


CHAIN = [
    {"id": "a", "title": "Collecter"},
    {"id": "b", "title": "Écrire", "deps": ["a"]},
    {"id": "c", "title": "Relire", "deps": ["b"]},
]


async def run_and_kill_after_a(tmp_path: Path, server: RealServer) -> dict[str, Any]:
    """Run CHAIN through the engine; the server is killed once node `a` completed."""
    from crew.domain.plan import parse_plan
    from crew.engine.options import RunOptions
    from crew.engine.service import create_run, execute_run
    from crew.llm.client import LLMClient
    from crew.llm.registry import ProviderRegistry
    from crew.settings import load_settings
    from crew.store.database import open_repository

    settings = load_settings()
    plan = parse_plan({"title": "Rapport", "plan": CHAIN})

    def kill_after_a(event: Any) -> None:
        if event.type.value == "NODE_COMPLETED" and event.node_key == "a":
            server.kill()

    registry = ProviderRegistry(settings)
    try:
        async with open_repository(settings) as repo:
            run_id = await create_run(
                repo, settings, plan, options=RunOptions.from_settings(settings)
            )
            outcome = await execute_run(
                repo, settings, LLMClient(settings, registry), run_id, listeners=[kill_after_a]
            )
            return outcome.summary
    finally:
        await registry.aclose()


def test_server_killed_mid_run_without_a_fallback(
    own_server: RealServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, tmp_path, own_server)
    summary = asyncio.run(run_and_kill_after_a(tmp_path, own_server))
    assert summary["status"] == "failed" and summary["error_code"] == "provider_unavailable"
    assert summary["nodes"] == {"total": 3, "completed": 1, "failed": 1, "skipped": 1}
    assert summary["providers"] == {"openai": 1}
    assert_totals_are_the_sum_of_calls(Store(tmp_path), summary["run_id"])


def test_server_killed_mid_run_with_a_fallback(
    own_server: RealServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_server(monkeypatch, tmp_path, own_server)
    monkeypatch.setenv("LLM_FALLBACK_ORDER", "offline")
    summary = asyncio.run(run_and_kill_after_a(tmp_path, own_server))
    assert summary["status"] == "completed", summary
    assert summary["providers"] == {"openai": 1, "offline": 2}
    assert summary["fallback_calls"] == 2
    by_node = {s["node_key"]: s for s in sidecars(tmp_path, summary["run_id"])}
    tried = [a["provider"] for a in by_node["b"]["attempts_detail"]]
    assert tried == ["openai", "openai", "offline"]  # b spent the retries
    # c went straight to the fallback: the circuit was open
    assert [a["provider"] for a in by_node["c"]["attempts_detail"]] == ["offline"]
    assert_totals_are_the_sum_of_calls(Store(tmp_path), summary["run_id"])
