"""`crew doctor`: one screen, exit 0 when all is well and 4 when something is not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from engine_support import setup_cli_env
from llm_servers import OllamaServer, OpenAIServer, refused_url
from typer.testing import CliRunner

from crew.cli.main import app

SECRET = "sk-test-0123456789abcdefSECRET"
SCREEN_LINES = 24


@pytest.fixture
def servers() -> Iterator[tuple[OpenAIServer, OllamaServer]]:
    with OpenAIServer(api_key=SECRET) as openai, OllamaServer(models=["llama3.1:8b"]) as ollama:
        yield openai, ollama


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    setup_cli_env(tmp_path, monkeypatch)
    return tmp_path


def doctor(*args: str) -> Result:
    return CliRunner().invoke(app, ["doctor", *args])


def configure(
    monkeypatch: pytest.MonkeyPatch, servers: tuple[OpenAIServer, OllamaServer], **values: str
) -> None:
    openai, ollama = servers
    base = {
        "LLM_DEFAULT_PROVIDER": "openai",
        "LLM_DEFAULT_MODEL": "gpt-4o-mini",
        "OPENAI_BASE_URL": openai.base_url,
        "OPENAI_API_KEY": SECRET,
        "OLLAMA_BASE_URL": ollama.url,
        "EXECUTOR_PROVIDER": "ollama",
        "EXECUTOR_MODEL": "llama3.1:8b",
        "LLM_FALLBACK_ORDER": "openai",
    }
    for name, value in {**base, **values}.items():
        monkeypatch.setenv(name, value)


def test_all_well(
    monkeypatch: pytest.MonkeyPatch, servers: tuple[OpenAIServer, OllamaServer]
) -> None:
    configure(monkeypatch, servers, EXECUTOR_TEMPERATURE="0.5")
    result = doctor()
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert len(out.splitlines()) <= SCREEN_LINES
    assert "executor    provider ollama [role]  model llama3.1:8b [role]" in out
    assert "temperature 0.5 [role]" in out
    assert "supervisor  provider openai [default]  model gpt-4o-mini [default]" in out
    assert "key accepted" in out and "all checks passed" in out
    assert SECRET not in out
    assert "created and migrated on first use" in out  # a fresh SQLite database is fine


def test_misconfigured(
    monkeypatch: pytest.MonkeyPatch, servers: tuple[OpenAIServer, OllamaServer]
) -> None:
    wrong = "sk-wrong-0000111122223333"
    configure(monkeypatch, servers, OPENAI_API_KEY=wrong, EXECUTOR_MODEL="mistral")
    result = doctor()
    assert result.exit_code == 4, result.output
    out = result.stdout
    assert len(out.splitlines()) <= SCREEN_LINES
    assert "`ollama pull mistral`" in out
    assert "rejected the API key" in out
    assert wrong not in out and SECRET not in out
    assert "2 problem(s): openai, ollama" in out


def test_unreachable_and_json(
    monkeypatch: pytest.MonkeyPatch, servers: tuple[OpenAIServer, OllamaServer]
) -> None:
    configure(
        monkeypatch,
        servers,
        OLLAMA_BASE_URL=refused_url(),
        DATABASE_URL="postgresql+asyncpg://crew@127.0.0.1:1/crew",
        LLM_FALLBACK_ORDER="openai,ollama",
    )
    monkeypatch.delenv("EXECUTOR_MODEL")
    result = doctor("--json")
    assert result.exit_code == 4, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False
    by_name = {c["name"]: c for c in report["providers"]}
    assert by_name["openai"]["ok"] is True
    assert by_name["ollama"]["ok"] is False
    assert "Ollama is not reachable" in by_name["ollama"]["detail"]
    assert report["database"]["ok"] is False
    executor = next(r for r in report["roles"] if r["role"] == "executor")
    assert executor["provider"] == "ollama" and executor["model"] is None
    assert report["fallback_order"] == [
        {"provider": "openai", "model": "gpt-4o-mini"},
        {"provider": "ollama", "model": None},
    ]


def test_offline_only_is_fine() -> None:
    result = doctor()
    assert result.exit_code == 0, result.output
    assert "offline" in result.stdout


def test_a_model_the_server_does_not_serve_fails_and_gets_no_list_price(
    monkeypatch: pytest.MonkeyPatch, servers: tuple[OpenAIServer, OllamaServer]
) -> None:
    openai, _ = servers
    openai.models = ["crew-tiny"]  # a local server that would answer under any name
    configure(monkeypatch, servers)
    result = doctor("--json")
    assert result.exit_code == 4, result.output
    report = json.loads(result.stdout)
    check = next(c for c in report["providers"] if c["name"] == "openai")
    assert check["ok"] is False
    assert (
        'does not serve model "gpt-4o-mini"' in check["detail"] and "crew-tiny" in check["detail"]
    )
    supervisor = next(r for r in report["roles"] if r["role"] == "supervisor")
    assert supervisor["price_source"] is None  # no list price for calls it will not make
    text = doctor().stdout
    assert "FAIL openai" in text and "price unknown" in text
