"""Settings (DESIGN §3): one typed, immutable object built from layered sources.

Precedence, lowest to highest: defaults, the `.env` file, the process environment, CLI
flags. Names are the prototype's so an existing `.env` keeps working. Every bad value is
reported at once, each naming its variable and what it accepts; crew never guesses.

Hand-written rather than built on a settings library: this module is imported on every
command, and parsing a few dozen strings does not justify the import cost.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from crew.domain.errors import ConfigError
from crew.domain.providers import BUILTIN_PROVIDERS, PROVIDER_NAMES
from crew.domain.vocabulary import LANGUAGES, ROLE_KINDS

T = TypeVar("T")

ROLE_NAMES = ROLE_KINDS
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS: tuple[str, ...] = ("text", "json")
EXECUTION_MODES: tuple[str, ...] = ("local", "workers")
_PRICE_VAR = re.compile(r"^OPENAI_PRICE_(PROMPT|COMPLETION)_(.+)_PER_1K$")


def price_env_key(model: str) -> str:
    """The `<MODEL>` part of an OPENAI_PRICE_* variable: upper-cased, non-alphanumerics as _."""
    return re.sub(r"[^A-Z0-9]", "_", model.upper())


@dataclass(frozen=True, slots=True)
class RoleSettings:
    """`<ROLE>_{PROVIDER,MODEL,TIMEOUT_S,TEMPERATURE,MAX_TOKENS}`; None means "not set"."""

    provider: str | None = None
    model: str | None = None
    timeout_s: float | None = None
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    api_keys: tuple[str, ...] = ()
    database_url: str = ""
    alembic_database_url: str | None = None
    cors_origins: tuple[str, ...] = ()
    runs_root: Path = Path(".runs")
    llm_default_provider: str = "offline"
    llm_default_model: str | None = None
    llm_fallback_order: tuple[str, ...] = ()
    llm_timeout_s: float = 120.0
    llm_default_temperature: float = 0.2
    llm_default_max_tokens: int = 2048
    roles: Mapping[str, RoleSettings] = field(default_factory=dict)
    ollama_base_url: str = "http://localhost:11434"
    ollama_fallback_model: str | None = None
    ollama_max_concurrency: int = 2
    openai_api_key: str | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    openai_max_retries: int = 3
    openai_backoff_base_ms: int = 500
    openai_backoff_factor: float = 2.0
    openai_fallback_model: str | None = None
    openai_max_concurrency: int = 8
    openai_prompt_prices: Mapping[str, float] = field(default_factory=dict)
    openai_completion_prices: Mapping[str, float] = field(default_factory=dict)
    max_concurrency: int = 4
    node_retries: int = 2
    retry_base_delay: float = 0.5
    node_timeout_s: float | None = None
    supervisor_max_attempts: int = 3
    sidecar_prompt_max_chars: int = 4000
    metrics_enabled: bool = False
    sentry_dsn: str | None = None
    sentry_env: str | None = None
    release: str | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    crew_language: str = "fr"
    offline_latency_ms: int = 0
    run_max_cost_usd: float | None = None
    run_max_tokens: int | None = None
    serve_max_concurrent_runs: int = 4
    tasks_dir: Path | None = None
    tasks_rate_per_min: float = 60.0
    tasks_rate_burst: int = 10
    crew_execution: str = "local"
    serve_embedded_worker: bool = True
    run_lease_s: float = 15.0
    run_max_recoveries: int = 3
    worker_shutdown_grace_s: float = 30.0
    worker_poll_s: float = 0.5
    artifact_max_bytes: int = 8 * 1024 * 1024
    values: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    """Every raw variable, merged from the sources: what provider plugins read (value())."""

    def value(self, name: str) -> str | None:
        """The raw value of variable `name` (stripped; None when unset or empty), for the
        settings a provider plugin declares."""
        raw = self.values.get(name)
        return (raw.strip() or None) if raw is not None else None

    @property
    def embedded_worker(self) -> bool:
        """Whether `crew serve` executes runs itself; CREW_EXECUTION=workers turns it off."""
        return self.serve_embedded_worker and self.crew_execution != "workers"

    def for_role_kind(self, kind: str) -> RoleSettings:
        """`<KIND>_{PROVIDER,MODEL,...}` of a role kind (`executor`, `manager`...)."""
        return self.roles.get(kind, RoleSettings())


class _Reader:
    """Reads raw strings from the merged sources and converts them, collecting errors."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = values
        self.errors: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.values.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None  # an empty value means "not set", as in the prototype's .env

    def get(
        self,
        name: str,
        convert: Callable[[str], T],
        default: T,
        accepted: str | Callable[[], str],
    ) -> T:
        """`accepted` may be a function: a list that is costly to build (the installed
        providers) is only built for the error message."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            return convert(value)
        except (ValueError, TypeError):
            wanted = accepted if isinstance(accepted, str) else accepted()
            self.errors.append(f"{name}={value!r} is invalid: expected {wanted}")
            return default

    def optional(
        self, name: str, convert: Callable[[str], T], accepted: str | Callable[[], str]
    ) -> T | None:
        return self.get(name, convert, None, accepted)

    def choice(self, name: str, choices: tuple[str, ...], default: str, upper: bool = False) -> str:
        def convert(value: str) -> str:
            normalized = value.upper() if upper else value.lower()
            if normalized not in choices:
                raise ValueError(value)
            return normalized

        return self.get(name, convert, default, "one of " + ", ".join(choices))


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(value)
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError(value)
    return number


def _temperature(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 2:
        raise ValueError(value)
    return number


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(value)


def _string_list(value: str) -> tuple[str, ...]:
    """A comma-separated list; a JSON list of strings is accepted too."""
    if value.startswith("["):
        decoded = json.loads(value)
        if not isinstance(decoded, list) or not all(isinstance(v, str) for v in decoded):
            raise ValueError(value)
        return tuple(v.strip() for v in decoded if v.strip())
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _provider_list(value: str) -> tuple[str, ...]:
    names = tuple(name.lower() for name in _string_list(value))
    if any(name not in PROVIDER_NAMES for name in names):
        raise ValueError(value)
    return names


def _providers_accepted() -> str:
    return "one of " + PROVIDER_NAMES.accepted()


def _provider_list_accepted() -> str:
    return "a comma-separated list of " + PROVIDER_NAMES.accepted()


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a dotenv file without touching os.environ."""
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_settings(
    *,
    env_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Build Settings from defaults < env file < environment < flags (CLI flags).

    `env_file` None means `.env` in the working directory if it exists; an explicit
    path that does not exist is an error. `flags` maps variable names to values;
    None values are ignored so CLI options left unset do not mask anything.
    """
    if env_file is None:
        default = Path(".env")
        file_values = read_env_file(default) if default.is_file() else {}
    elif not env_file.is_file():
        raise ConfigError(f"env file not found: {env_file}")
    else:
        file_values = read_env_file(env_file)
    merged: dict[str, str] = dict(file_values)
    merged.update(os.environ if environ is None else environ)
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            # A repeatable CLI option arrives as a sequence; list settings are comma lists.
            merged[name] = ",".join(str(item) for item in value)
        else:
            merged[name] = str(value)
    return settings_from_values(merged)


def settings_from_values(values: Mapping[str, str]) -> Settings:
    """Convert raw variable values into Settings; raises ConfigError listing every problem."""
    r = _Reader(values)
    runs_root = Path(r.raw("RUNS_ROOT") or ".runs")
    roles = {
        kind: RoleSettings(
            provider=r.optional(f"{kind.upper()}_PROVIDER", _provider, _providers_accepted),
            model=r.raw(f"{kind.upper()}_MODEL"),
            timeout_s=r.optional(f"{kind.upper()}_TIMEOUT_S", _positive_float, "seconds > 0"),
            temperature=r.optional(
                f"{kind.upper()}_TEMPERATURE", _temperature, "a number from 0 to 2"
            ),
            max_tokens=r.optional(f"{kind.upper()}_MAX_TOKENS", _positive_int, "an integer >= 1"),
        )
        for kind in ROLE_KINDS
    }
    prompt_prices, completion_prices = _prices(values, r)
    settings = Settings(
        api_keys=r.get("API_KEY", _string_list, (), "a comma-separated list of keys"),
        database_url=r.raw("DATABASE_URL") or f"sqlite+aiosqlite:///{runs_root / 'crew.db'}",
        alembic_database_url=r.raw("ALEMBIC_DATABASE_URL"),
        cors_origins=r.get(
            "CORS_ORIGINS", _string_list, (), "a comma-separated list or a JSON list of origins"
        ),
        runs_root=runs_root,
        llm_default_provider=r.get(
            "LLM_DEFAULT_PROVIDER", _provider, BUILTIN_PROVIDERS[0], _providers_accepted
        ),
        llm_default_model=r.raw("LLM_DEFAULT_MODEL"),
        llm_fallback_order=r.get(
            "LLM_FALLBACK_ORDER",
            _provider_list,
            (),
            _provider_list_accepted,
        ),
        llm_timeout_s=r.get("LLM_TIMEOUT_S", _positive_float, 120.0, "seconds > 0"),
        llm_default_temperature=r.get(
            "LLM_DEFAULT_TEMPERATURE", _temperature, 0.2, "a number from 0 to 2"
        ),
        llm_default_max_tokens=r.get(
            "LLM_DEFAULT_MAX_TOKENS", _positive_int, 2048, "an integer >= 1"
        ),
        roles=roles,
        ollama_base_url=(r.raw("OLLAMA_BASE_URL") or "http://localhost:11434").rstrip("/"),
        ollama_fallback_model=r.raw("OLLAMA_FALLBACK_MODEL"),
        ollama_max_concurrency=r.get("OLLAMA_MAX_CONCURRENCY", _positive_int, 2, "an integer >= 1"),
        openai_api_key=r.raw("OPENAI_API_KEY"),
        openai_base_url=(r.raw("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/"),
        openai_max_retries=r.get("OPENAI_MAX_RETRIES", _non_negative_int, 3, "an integer >= 0"),
        openai_backoff_base_ms=r.get(
            "OPENAI_BACKOFF_BASE_MS", _non_negative_int, 500, "an integer >= 0 (milliseconds)"
        ),
        openai_backoff_factor=r.get("OPENAI_BACKOFF_FACTOR", _positive_float, 2.0, "a number > 0"),
        openai_fallback_model=r.raw("OPENAI_FALLBACK_MODEL"),
        openai_max_concurrency=r.get("OPENAI_MAX_CONCURRENCY", _positive_int, 8, "an integer >= 1"),
        openai_prompt_prices=prompt_prices,
        openai_completion_prices=completion_prices,
        max_concurrency=r.get("MAX_CONCURRENCY", _positive_int, 4, "an integer >= 1"),
        node_retries=r.get("NODE_RETRIES", _non_negative_int, 2, "an integer >= 0"),
        retry_base_delay=r.get(
            "RETRY_BASE_DELAY", _non_negative_float, 0.5, "a number of seconds >= 0"
        ),
        node_timeout_s=r.optional("NODE_TIMEOUT_S", _positive_float, "seconds > 0"),
        supervisor_max_attempts=r.get(
            "SUPERVISOR_MAX_ATTEMPTS", _positive_int, 3, "an integer >= 1"
        ),
        sidecar_prompt_max_chars=r.get(
            "SIDECAR_PROMPT_MAX_CHARS", _non_negative_int, 4000, "an integer >= 0"
        ),
        metrics_enabled=r.get("METRICS_ENABLED", _bool, False, "1/0, true/false, yes/no"),
        sentry_dsn=r.raw("SENTRY_DSN"),
        sentry_env=r.raw("SENTRY_ENV"),
        release=r.raw("RELEASE"),
        log_level=r.choice("LOG_LEVEL", LOG_LEVELS, "INFO", upper=True),
        log_format=r.choice("LOG_FORMAT", LOG_FORMATS, "text"),
        crew_language=r.choice("CREW_LANGUAGE", LANGUAGES, "fr"),
        offline_latency_ms=r.get(
            "OFFLINE_LATENCY_MS", _non_negative_int, 0, "an integer >= 0 (milliseconds)"
        ),
        run_max_cost_usd=r.optional("RUN_MAX_COST_USD", _non_negative_float, "a number >= 0"),
        run_max_tokens=r.optional("RUN_MAX_TOKENS", _positive_int, "an integer >= 1"),
        serve_max_concurrent_runs=r.get(
            "SERVE_MAX_CONCURRENT_RUNS", _positive_int, 4, "an integer >= 1"
        ),
        tasks_dir=r.optional("TASKS_DIR", Path, "a directory path"),
        tasks_rate_per_min=r.get("TASKS_RATE_PER_MIN", _positive_float, 60.0, "a number > 0"),
        tasks_rate_burst=r.get("TASKS_RATE_BURST", _positive_int, 10, "an integer >= 1"),
        crew_execution=r.choice("CREW_EXECUTION", EXECUTION_MODES, "local"),
        serve_embedded_worker=r.get(
            "SERVE_EMBEDDED_WORKER", _bool, True, "1/0, true/false, yes/no"
        ),
        run_lease_s=r.get("RUN_LEASE_S", _lease_seconds, 15.0, "seconds >= 1"),
        run_max_recoveries=r.get("RUN_MAX_RECOVERIES", _non_negative_int, 3, "an integer >= 0"),
        worker_shutdown_grace_s=r.get(
            "WORKER_SHUTDOWN_GRACE_S", _non_negative_float, 30.0, "a number of seconds >= 0"
        ),
        worker_poll_s=r.get("WORKER_POLL_S", _positive_float, 0.5, "a number of seconds > 0"),
        artifact_max_bytes=r.get(
            "ARTIFACT_MAX_BYTES", _positive_int, 8 * 1024 * 1024, "an integer >= 1 (bytes)"
        ),
        values=dict(values),
    )
    if r.errors:
        raise ConfigError("invalid configuration", problems=r.errors)
    return settings


def _lease_seconds(value: str) -> float:
    seconds = float(value)
    if not seconds >= 1:  # also refuses NaN
        raise ValueError(value)
    return seconds


def _provider(value: str) -> str:
    lowered = value.lower()
    if lowered not in PROVIDER_NAMES:
        raise ValueError(value)
    return lowered


def _prices(values: Mapping[str, str], r: _Reader) -> tuple[dict[str, float], dict[str, float]]:
    """Collect OPENAI_PRICE_{PROMPT,COMPLETION}_<MODEL>_PER_1K, keyed by the <MODEL> part."""
    prompt: dict[str, float] = {}
    completion: dict[str, float] = {}
    for name in values:
        match = _PRICE_VAR.match(name)
        if not match:
            continue
        price = r.optional(name, _non_negative_float, "a price in USD per 1,000 tokens, >= 0")
        if price is None:
            continue
        target = prompt if match.group(1) == "PROMPT" else completion
        target[match.group(2)] = price
    return prompt, completion
