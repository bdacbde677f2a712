"""Settings (DESIGN §3): sources, precedence, parsing and error reporting.

Every test passes `environ` explicitly and works in a temporary directory, so neither the
developer's environment nor a `.env` in the repository can change the outcome.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from crew.domain.errors import ConfigError
from crew.settings import (
    RoleSettings,
    Settings,
    load_settings,
    price_env_key,
    settings_from_values,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # load_settings reads ./.env by default: start every test from an empty folder.
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def write_env(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config_error(values: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        settings_from_values(values)
    return info.value


class RecordingValues(dict[str, str]):
    """A mapping that remembers every name looked up: the variables settings reads."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[str] = set()

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)


def variables_read() -> set[str]:
    values = RecordingValues()
    settings_from_values(values)
    return values.read


# --- defaults ---------------------------------------------------------------------------


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings == settings_from_values({})
    assert settings.api_keys == ()
    assert settings.runs_root == Path(".runs")
    assert settings.database_url == "sqlite+aiosqlite:///.runs/crew.db"
    assert settings.alembic_database_url is None
    assert settings.cors_origins == ()
    assert settings.llm_default_provider == "offline"
    assert settings.llm_default_model is None
    assert settings.llm_fallback_order == ()
    assert settings.llm_timeout_s == 120.0
    assert settings.llm_default_temperature == 0.2
    assert settings.llm_default_max_tokens == 2048
    assert settings.ollama_base_url == "http://localhost:11434"
    assert settings.openai_base_url == "https://api.openai.com/v1"
    assert settings.openai_api_key is None
    assert settings.max_concurrency == 4
    assert settings.node_retries == 2
    assert settings.retry_base_delay == 0.5
    assert settings.node_timeout_s is None
    assert settings.supervisor_max_attempts == 3
    assert settings.sidecar_prompt_max_chars == 4000
    assert settings.metrics_enabled is False
    assert settings.log_level == "INFO"
    assert settings.log_format == "text"
    assert settings.crew_language == "fr"
    assert settings.offline_latency_ms == 0
    assert settings.run_max_cost_usd is None
    assert settings.run_max_tokens is None
    assert settings.tasks_dir is None
    assert settings.tasks_rate_per_min == 60.0
    assert settings.tasks_rate_burst == 10
    assert settings.crew_execution == "local"
    assert settings.for_role_kind("supervisor") == RoleSettings()


def test_default_database_url_follows_runs_root(tmp_path: Path) -> None:
    settings = settings_from_values({"RUNS_ROOT": str(tmp_path / "runs")})
    assert settings.runs_root == tmp_path / "runs"
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'runs' / 'crew.db'}"
    assert settings.database_url.startswith("sqlite+aiosqlite:////")  # absolute path


def test_explicit_database_url_wins_over_runs_root() -> None:
    url = "postgresql+asyncpg://u@h:5432/db"
    settings = settings_from_values({"RUNS_ROOT": "/x", "DATABASE_URL": url})
    assert settings.database_url == url


# --- sources and precedence -------------------------------------------------------------


def test_precedence_overrides_then_environ_then_env_file_then_defaults(tmp_path: Path) -> None:
    env_file = write_env(
        tmp_path / "custom.env",
        "MAX_CONCURRENCY=2\nNODE_RETRIES=5\nLOG_LEVEL=debug\nCREW_LANGUAGE=en\n",
    )
    settings = load_settings(
        env_file=env_file,
        environ={"MAX_CONCURRENCY": "3", "NODE_RETRIES": "6", "LOG_LEVEL": "warning"},
        flags={"MAX_CONCURRENCY": 9, "NODE_RETRIES": None},
    )
    assert settings.max_concurrency == 9  # override beats environ and file
    assert settings.node_retries == 6  # None override is ignored: environ beats file
    assert settings.log_level == "WARNING"  # environ beats file
    assert settings.crew_language == "en"  # file beats default
    assert settings.offline_latency_ms == 0  # default


def test_dot_env_in_working_directory_is_read(_isolated_cwd: Path) -> None:
    write_env(_isolated_cwd / ".env", "OFFLINE_LATENCY_MS=25\nMAX_CONCURRENCY=7\n")
    settings = load_settings(environ={"MAX_CONCURRENCY": "8"})
    assert settings.offline_latency_ms == 25
    assert settings.max_concurrency == 8


def test_explicit_env_file_replaces_dot_env(_isolated_cwd: Path) -> None:
    write_env(_isolated_cwd / ".env", "OFFLINE_LATENCY_MS=25\nNODE_RETRIES=4\n")
    other = write_env(_isolated_cwd / "other.env", "OFFLINE_LATENCY_MS=50\n")
    settings = load_settings(env_file=other, environ={})
    assert settings.offline_latency_ms == 50
    assert settings.node_retries == 2  # ./.env was not read at all


def test_missing_env_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.env"
    with pytest.raises(ConfigError) as info:
        load_settings(env_file=missing, environ={})
    assert str(missing) in str(info.value)
    assert info.value.exit_code == 2


def test_no_dot_env_is_fine() -> None:
    assert load_settings(environ={}).max_concurrency == 4


def test_process_environment_is_used_when_environ_is_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OFFLINE_LATENCY_MS", "12")
    assert load_settings().offline_latency_ms == 12


def test_env_file_does_not_leak_into_process_environment(
    _isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREW_TEST_ONLY_VARIABLE", raising=False)
    write_env(_isolated_cwd / ".env", "CREW_TEST_ONLY_VARIABLE=1\n")
    load_settings(environ={})
    assert "CREW_TEST_ONLY_VARIABLE" not in os.environ


def test_list_override_becomes_a_comma_list() -> None:
    settings = load_settings(environ={}, flags={"CORS_ORIGINS": ["http://a", "http://b"]})
    assert settings.cors_origins == ("http://a", "http://b")


def test_bool_override() -> None:
    settings = load_settings(environ={}, flags={"METRICS_ENABLED": True})
    assert settings.metrics_enabled is True


# --- invalid values ---------------------------------------------------------------------


def test_bad_integer_names_variable_and_accepted_values() -> None:
    error = config_error({"MAX_CONCURRENCY": "abc"})
    (problem,) = error.problems
    assert "MAX_CONCURRENCY" in problem
    assert "'abc'" in problem
    assert "integer >= 1" in problem
    assert error.exit_code == 2
    assert "MAX_CONCURRENCY" in str(error)


def test_unknown_provider_names_variable_and_accepted_values() -> None:
    error = config_error({"LLM_DEFAULT_PROVIDER": "foo"})
    (problem,) = error.problems
    assert "LLM_DEFAULT_PROVIDER" in problem
    assert "'foo'" in problem
    assert "offline, ollama, openai" in problem


def test_several_bad_values_are_reported_together() -> None:
    error = config_error(
        {
            "MAX_CONCURRENCY": "abc",
            "LLM_DEFAULT_PROVIDER": "foo",
            "LLM_DEFAULT_TEMPERATURE": "5",
            "METRICS_ENABLED": "maybe",
            "EXECUTOR_PROVIDER": "bar",
        }
    )
    text = str(error)
    for name in (
        "MAX_CONCURRENCY",
        "LLM_DEFAULT_PROVIDER",
        "LLM_DEFAULT_TEMPERATURE",
        "METRICS_ENABLED",
        "EXECUTOR_PROVIDER",
    ):
        assert name in text
    assert len(error.problems) == 5


def test_bad_value_in_env_file_is_reported(tmp_path: Path) -> None:
    env_file = write_env(tmp_path / "bad.env", "NODE_RETRIES=-1\n")
    with pytest.raises(ConfigError, match="NODE_RETRIES"):
        load_settings(env_file=env_file, environ={})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_CONCURRENCY", "0"),
        ("NODE_RETRIES", "1.5"),
        ("LLM_TIMEOUT_S", "0"),
        ("LLM_TIMEOUT_S", "-3"),
        ("LLM_DEFAULT_MAX_TOKENS", "many"),
        ("RETRY_BASE_DELAY", "-0.1"),
        ("NODE_TIMEOUT_S", "never"),
        ("LOG_LEVEL", "loud"),
        ("LOG_FORMAT", "xml"),
        ("CREW_LANGUAGE", "de"),
        ("CREW_EXECUTION", "cloud"),
        ("LLM_FALLBACK_ORDER", "ollama,acme"),
        ("CORS_ORIGINS", '["http://a", 3]'),
        ("CORS_ORIGINS", "[not json"),
        ("SUPERVISOR_TEMPERATURE", "2.5"),
        ("MANAGER_MAX_TOKENS", "0"),
        ("RECRUITER_TIMEOUT_S", "soon"),
        ("RUN_MAX_COST_USD", "-1"),
        ("OPENAI_PRICE_PROMPT_GPT_4O_PER_1K", "cheap"),
        ("TASKS_RATE_BURST", "0"),
    ],
)
def test_invalid_values(name: str, value: str) -> None:
    error = config_error({name: value})
    (problem,) = error.problems
    assert problem.startswith(f"{name}={value!r} is invalid: expected ")


# --- parsing ----------------------------------------------------------------------------


def test_empty_values_mean_unset() -> None:
    settings = settings_from_values(
        {
            "MAX_CONCURRENCY": "",
            "LLM_DEFAULT_PROVIDER": "  ",
            "LLM_DEFAULT_MODEL": "",
            "DATABASE_URL": "",
            "NODE_TIMEOUT_S": "",
            "SUPERVISOR_PROVIDER": "",
            "CORS_ORIGINS": "",
            "API_KEY": "",
        }
    )
    assert settings == settings_from_values({})


def test_cors_origins_comma_list() -> None:
    settings = settings_from_values({"CORS_ORIGINS": "http://a:3000, https://b.example ,"})
    assert settings.cors_origins == ("http://a:3000", "https://b.example")


def test_cors_origins_json_list() -> None:
    settings = settings_from_values({"CORS_ORIGINS": '["http://a:3000", "https://b.example"]'})
    assert settings.cors_origins == ("http://a:3000", "https://b.example")


def test_api_key_list_for_rotation() -> None:
    settings = settings_from_values({"API_KEY": "old-key,new-key"})
    assert settings.api_keys == ("old-key", "new-key")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_bool_parsing(value: str, expected: bool) -> None:
    assert settings_from_values({"METRICS_ENABLED": value}).metrics_enabled is expected


def test_choices_are_case_insensitive() -> None:
    settings = settings_from_values(
        {
            "LLM_DEFAULT_PROVIDER": "Ollama",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
            "CREW_LANGUAGE": "EN",
            "CREW_EXECUTION": "Workers",
        }
    )
    assert settings.llm_default_provider == "ollama"
    assert settings.log_level == "DEBUG"
    assert settings.log_format == "json"
    assert settings.crew_language == "en"
    assert settings.crew_execution == "workers"


def test_fallback_order() -> None:
    settings = settings_from_values({"LLM_FALLBACK_ORDER": "OpenAI, ollama"})
    assert settings.llm_fallback_order == ("openai", "ollama")


def test_base_urls_lose_trailing_slash() -> None:
    settings = settings_from_values(
        {"OLLAMA_BASE_URL": "http://gpu:11434/", "OPENAI_BASE_URL": "http://local:8000/v1/"}
    )
    assert settings.ollama_base_url == "http://gpu:11434"
    assert settings.openai_base_url == "http://local:8000/v1"


def test_price_variables() -> None:
    settings = settings_from_values(
        {
            f"OPENAI_PRICE_PROMPT_{price_env_key('gpt-4o-mini')}_PER_1K": "0.00015",
            f"OPENAI_PRICE_COMPLETION_{price_env_key('gpt-4o-mini')}_PER_1K": "0.0006",
            "OPENAI_PRICE_PROMPT_OTHER_PER_1K": "",
        }
    )
    assert price_env_key("gpt-4o-mini") == "GPT_4O_MINI"
    assert price_env_key("llama3.1:8b") == "LLAMA3_1_8B"
    assert settings.openai_prompt_prices == {"GPT_4O_MINI": 0.00015}
    assert settings.openai_completion_prices == {"GPT_4O_MINI": 0.0006}


def test_role_settings() -> None:
    settings = settings_from_values(
        {
            "SUPERVISOR_PROVIDER": "openai",
            "SUPERVISOR_MODEL": "gpt-4o-mini",
            "SUPERVISOR_TIMEOUT_S": "30",
            "SUPERVISOR_TEMPERATURE": "0",
            "SUPERVISOR_MAX_TOKENS": "4096",
            "EXECUTOR_MODEL": "llama3.1:8b",
        }
    )
    assert settings.for_role_kind("supervisor") == RoleSettings(
        provider="openai", model="gpt-4o-mini", timeout_s=30.0, temperature=0.0, max_tokens=4096
    )
    assert settings.for_role_kind("executor") == RoleSettings(model="llama3.1:8b")
    assert settings.for_role_kind("manager") == RoleSettings()
    assert settings.for_role_kind("recruiter") == RoleSettings()
    assert settings.for_role_kind("someone-else") == RoleSettings()


def test_numbers_and_optionals() -> None:
    settings = settings_from_values(
        {
            "NODE_TIMEOUT_S": "90",
            "RUN_MAX_COST_USD": "1.5",
            "RUN_MAX_TOKENS": "100000",
            "TASKS_DIR": "/srv/tasks",
            "OFFLINE_LATENCY_MS": "20",
            "SIDECAR_PROMPT_MAX_CHARS": "0",
            "OPENAI_MAX_RETRIES": "0",
            "OPENAI_BACKOFF_FACTOR": "1.5",
        }
    )
    assert settings.node_timeout_s == 90.0
    assert settings.run_max_cost_usd == 1.5
    assert settings.run_max_tokens == 100000
    assert settings.tasks_dir == Path("/srv/tasks")
    assert settings.offline_latency_ms == 20
    assert settings.sidecar_prompt_max_chars == 0
    assert settings.openai_max_retries == 0
    assert settings.openai_backoff_factor == 1.5


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.max_concurrency = 8  # type: ignore[misc]


# --- the shipped example and the documentation ------------------------------------------


def test_env_example_loads() -> None:
    settings = load_settings(env_file=ROOT / ".env.example", environ={})
    assert settings.llm_default_provider == "offline"
    assert settings.api_keys == ()  # no default key is shipped
    assert settings.cors_origins == ("http://localhost:3000", "http://127.0.0.1:3000")


def test_env_example_values_match_defaults_except_cors() -> None:
    # The file documents the defaults: copying it to .env must not change behaviour
    # beyond the example CORS origins.
    settings = load_settings(env_file=ROOT / ".env.example", environ={})
    assert settings == replace(settings_from_values({}), cors_origins=settings.cors_origins)


def _uncommented(block: str) -> str:
    return "\n".join(line.removeprefix("# ") for line in block.splitlines())


@pytest.mark.parametrize(
    ("marker", "provider", "model"),
    [
        ("# --- DEV : Ollama only ---", "ollama", "llama3.1:8b"),
        ("# --- PROD : OpenAI only ---", "openai", "gpt-4o-mini"),
    ],
)
def test_env_example_presets_parse_when_uncommented(
    tmp_path: Path, marker: str, provider: str, model: str
) -> None:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    start = text.index("\n", text.index(marker)) + 1  # the lines after the marker
    end = text.find("\n\n", start)
    block = text[start : end if end != -1 else len(text)]
    env_file = write_env(tmp_path / "preset.env", text + "\n" + _uncommented(block) + "\n")
    settings = load_settings(env_file=env_file, environ={})
    assert settings.llm_default_provider == provider
    assert settings.llm_default_model == model


def test_every_variable_is_in_env_example_and_documented() -> None:
    names = variables_read()
    assert {"MAX_CONCURRENCY", "SUPERVISOR_MAX_TOKENS", "TASKS_RATE_BURST"} <= names
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    docs = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    in_example = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE))
    missing_example = sorted(names - in_example)
    missing_docs = sorted(n for n in names if f"`{n}`" not in docs)
    assert not missing_example, f"not in .env.example: {missing_example}"
    assert not missing_docs, f"not in docs/configuration.md: {missing_docs}"
    # And nothing documented that settings does not read (prices are a pattern).
    unknown = sorted(n for n in in_example - names if not n.startswith("OPENAI_PRICE_"))
    assert not unknown, f".env.example names unknown variables: {unknown}"
