"""Providers as plugins: one registration point, open to other packages.

In process, the registry is fed entry points made here (real EntryPoint objects naming
the test package under tests/data/crew_echo_provider, and broken ones); the slow test
installs that package with pip into a fresh venv and drives crew doctor, crew run and
crew serve from there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from crew.api.openapi import document
from crew.api.routes import load
from crew.api.spec import ENDPOINTS
from crew.api.task_body import parse_task_request
from crew.domain.errors import ConfigError, PlanValidationError, ProviderError
from crew.domain.plan import parse_plan
from crew.domain.providers import BUILTIN_PROVIDERS, ENTRY_POINT_GROUP, PROVIDER_NAMES
from crew.llm import registry
from crew.llm.base import LLMRequest, LLMResponse, Message
from crew.llm.client import LLMClient
from crew.llm.diagnose import diagnose
from crew.llm.fallback import Candidate, call_candidates
from crew.llm.limits import ProviderLimits
from crew.llm.plugins import Price, ProviderSetting, ProviderSpec, RetryPolicy
from crew.llm.pricing import list_price, reset_warnings
from crew.llm.registry import (
    ProviderRegistry,
    plugin_failures,
    plugins,
    price_for,
    provider_names,
    provider_spec,
    reload_plugins,
    retry_policy,
)
from crew.settings import Settings, settings_from_values
from tests.api_server import free_port, wait_until_serving

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(__file__).resolve().parent / "data" / "crew_echo_provider"
ECHO = EntryPoint("echo", "crew_echo_provider:PROVIDER", ENTRY_POINT_GROUP)


class CountingEntryPoint(EntryPoint):
    """An entry point that counts how often it is loaded."""

    loads: ClassVar[list[str]] = []

    def load(self) -> object:
        CountingEntryPoint.loads.append(self.name)
        return super().load()


@pytest.fixture(autouse=True)
def echo_importable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test package on sys.path, no plugin loaded before or after a test."""
    monkeypatch.syspath_prepend(str(PACKAGE))
    reload_plugins([])
    reset_warnings()
    yield
    reload_plugins(None)
    document.cache_clear()
    if ENDPOINTS:
        document()  # the schema's provider list back to the installed providers
    reset_warnings()


def use(*entry_points: EntryPoint) -> None:
    reload_plugins(entry_points)


def values(**extra: str) -> Settings:
    return settings_from_values(extra)


# Built-ins register through the same point.


def test_the_builtins_are_specs_too() -> None:
    assert provider_names() == BUILTIN_PROVIDERS
    openai, ollama, offline = (provider_spec(n) for n in ("openai", "ollama", "offline"))
    assert openai is not None and ollama is not None and offline is not None
    assert openai.price is list_price
    assert not offline.needs_model and offline.retry is None
    settings = values(OPENAI_MAX_RETRIES="5", OLLAMA_MAX_CONCURRENCY="3")
    assert retry_policy(settings, "openai") == RetryPolicy(5, 500, 2.0)
    assert retry_policy(settings, "offline") is None
    assert ProviderLimits(settings).capacity("ollama") == 3
    assert ProviderLimits(settings).capacity("offline") is None
    assert price_for(settings, "ollama", "llama3", None) == Price(0.0, 0.0, "local")
    assert "OPENAI_API_KEY" in {s.name for s in openai.settings}


def test_plugins_load_lazily_and_once() -> None:
    CountingEntryPoint.loads.clear()
    use(CountingEntryPoint("echo", "crew_echo_provider:PROVIDER", ENTRY_POINT_GROUP))
    # Built-in names are answered without loading anything.
    settings = values(EXECUTOR_PROVIDER="ollama", LLM_FALLBACK_ORDER="offline")
    assert settings.for_role_kind("executor").provider == "ollama"
    assert provider_spec("openai") is not None
    parse_plan({"title": "T", "plan": [{"id": "a", "title": "A", "llm": {"provider": "ollama"}}]})
    assert CountingEntryPoint.loads == []
    # A plugin's name loads the plugins, once.
    assert provider_spec("echo") is not None
    assert provider_names() == (*BUILTIN_PROVIDERS, "echo")
    assert set(plugins()) == {"echo"}
    assert CountingEntryPoint.loads == ["echo"]


def test_the_cli_does_not_read_package_metadata_to_start() -> None:
    code = "import sys, crew.cli.main; print('importlib.metadata' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "False"


# Everything that used to refuse unknown names sees the plugin.


def test_settings_plans_and_task_bodies_accept_a_plugin_name() -> None:
    use(ECHO)
    settings = values(
        LLM_DEFAULT_PROVIDER="Echo", EXECUTOR_PROVIDER="echo", LLM_FALLBACK_ORDER="echo,offline"
    )
    assert settings.llm_default_provider == "echo"
    assert settings.for_role_kind("executor").provider == "echo"
    assert settings.llm_fallback_order == ("echo", "offline")
    with pytest.raises(ConfigError) as refused:
        values(EXECUTOR_PROVIDER="nope")
    assert "offline, ollama, openai, echo" in str(refused.value.problems)

    plan = parse_plan(
        {"title": "T", "plan": [{"id": "a", "title": "A", "llm": {"provider": "echo"}}]}
    )
    assert plan.nodes[0].llm is not None and plan.nodes[0].llm.provider == "echo"
    with pytest.raises(PlanValidationError, match="echo"):
        parse_plan({"title": "T", "plan": [{"id": "a", "title": "A", "llm": {"provider": "x"}}]})

    body = {"task": {"type": "demo"}, "options": {"llm": {"executor": {"provider": "echo"}}}}
    available = ProviderRegistry(settings).available()
    task = parse_task_request(json.dumps(body).encode(), settings, available)
    assert task.changes["llm"] == {"executor": {"provider": "echo"}}


def test_the_api_schema_lists_plugin_providers() -> None:
    use(ECHO)
    load()
    document.cache_clear()
    schema = document()["components"]["schemas"]["ProviderName"]
    assert schema["enum"] == [*BUILTIN_PROVIDERS, "echo"]


async def test_routing_prices_retries_and_limits_come_from_the_spec() -> None:
    use(ECHO)
    settings = values(EXECUTOR_PROVIDER="echo", ECHO_PREFIX="said:")
    client = LLMClient(settings, ProviderRegistry(settings))
    result = await client.call("executor", "Writer_FR", [Message("user", "Bonjour")])
    assert result.provider == "echo" and result.response.text == "said: Bonjour"
    assert result.price_source == "echo:2026-12"
    expected = (result.response.input_tokens * 0.001 + result.response.output_tokens * 0.002) / 1000
    assert result.cost_usd == pytest.approx(expected)
    assert retry_policy(settings, "echo") == RetryPolicy(1, 1, 2.0)
    assert ProviderLimits(settings).capacity("echo") == 4

    tuned = values(ECHO_MAX_RETRIES="0", ECHO_BACKOFF_FACTOR="3", ECHO_MAX_CONCURRENCY="2")
    assert retry_policy(tuned, "echo") == RetryPolicy(0, 1, 3.0)
    assert ProviderLimits(tuned).capacity("echo") == 2
    with pytest.raises(ConfigError, match="ECHO_MAX_RETRIES='-1'"):
        retry_policy(values(ECHO_MAX_RETRIES="-1"), "echo")
    priced = values(ECHO_PRICE_PROMPT_ECHO_1_PER_1K="0.5")
    assert price_for(priced, "echo", "echo-1", None) == Price(0.5, 0.002, "env")
    assert price_for(settings, "echo", "unpriced", None) is None


async def test_fallback_reaches_a_plugin_provider() -> None:
    use(ECHO)
    settings = values(LLM_FALLBACK_ORDER="echo", ECHO_FALLBACK_MODEL="echo-1")
    assert call_candidates(settings, "offline", None) == [
        Candidate("offline", None),
        Candidate("echo", "echo-1"),
    ]
    no_model = values(LLM_FALLBACK_ORDER="echo")
    assert call_candidates(no_model, "offline", None)[1] == Candidate("echo", None)

    class Down:
        name = "offline"

        async def complete(self, request: LLMRequest) -> LLMResponse:
            raise ProviderError("down", provider="offline", retryable=False)

        async def aclose(self) -> None:
            return None

    registry_ = ProviderRegistry(settings)
    registry_.register("offline", Down())
    result = await LLMClient(settings, registry_).call("executor", "W", [Message("user", "hi")])
    assert result.provider == "echo" and result.fallback_from == "offline"


# Plugins that fail are reported and never break the others.

BROKEN = (
    EntryPoint("missing", "crew_no_such_module:PROVIDER", ENTRY_POINT_GROUP),
    EntryPoint("notaspec", "crew_echo_provider:EchoProvider", ENTRY_POINT_GROUP),
    EntryPoint("openai", "crew_echo_provider:PROVIDER", ENTRY_POINT_GROUP),
    EntryPoint("other", "crew_echo_provider:PROVIDER", ENTRY_POINT_GROUP),
    EntryPoint("Bad-Name", "crew_echo_provider:PROVIDER", ENTRY_POINT_GROUP),
)


def test_broken_plugins_are_reported_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    use(*BROKEN[:2], ECHO, *BROKEN[2:], ECHO)
    with caplog.at_level(logging.WARNING, logger="crew.llm.plugins"):
        assert provider_names() == (*BUILTIN_PROVIDERS, "echo")
    reasons = {f.name: f.reason for f in plugin_failures()}
    assert set(reasons) == {"missing", "notaspec", "openai", "other", "Bad-Name", "echo"}
    assert "ModuleNotFoundError" in reasons["missing"]
    assert "not a crew.llm.plugins.ProviderSpec" in reasons["notaspec"]
    assert "built-in" in reasons["openai"]
    assert "named 'echo'" in reasons["other"]
    assert "not a provider name" in reasons["Bad-Name"]
    assert "already adds a provider 'echo'" in reasons["echo"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 6
    assert any("'missing' from package crew_no_such_module" in w for w in warned)
    # The built-in keeps its name; the working plugin works.
    assert provider_spec("openai") is registry.BUILTIN_SPECS[2]
    settings = values()
    assert ProviderRegistry(settings).get("echo").name == "echo"
    with pytest.raises(ConfigError, match=r"'missing' \(package crew_no_such_module\) could not"):
        ProviderRegistry(settings).get("missing")
    with pytest.raises(ConfigError, match="unknown LLM provider 'nope'"):
        ProviderRegistry(settings).get("nope")


def _explode(settings: Settings) -> LLMResponse:
    raise RuntimeError("no socket")


EXPLODING = ProviderSpec(name="exploding", factory=_explode)  # type: ignore[arg-type]
NEEDY = ProviderSpec(
    name="needy",
    factory=lambda settings: None,  # type: ignore[arg-type,return-value]
    settings=(ProviderSetting("NEEDY_TOKEN", "the token", required=True, secret=True),),
)
NOT_A_PROVIDER = ProviderSpec(name="notaprovider", factory=lambda settings: object())  # type: ignore[arg-type,return-value]


def test_a_provider_that_cannot_be_built_says_why() -> None:
    here = "test_provider_plugins"
    use(
        EntryPoint("exploding", f"{here}:EXPLODING", ENTRY_POINT_GROUP),
        EntryPoint("needy", f"{here}:NEEDY", ENTRY_POINT_GROUP),
        EntryPoint("notaprovider", f"{here}:NOT_A_PROVIDER", ENTRY_POINT_GROUP),
    )
    registry_ = ProviderRegistry(values())
    with pytest.raises(ConfigError, match="'exploding' could not be built: RuntimeError"):
        registry_.get("exploding")
    with pytest.raises(ConfigError, match=r"needs settings that are not set: NEEDY_TOKEN"):
        registry_.get("needy")
    with pytest.raises(ConfigError, match="returned a object, not a provider"):
        registry_.get("notaprovider")


async def test_doctor_shows_plugins_and_fails_on_a_broken_one(tmp_path: Path) -> None:
    use(ECHO, BROKEN[0])
    settings = values(
        RUNS_ROOT=str(tmp_path / "runs"), EXECUTOR_PROVIDER="echo", LLM_FALLBACK_ORDER="echo"
    )
    report = await diagnose(settings)
    assert report["ok"] is False
    by_name = {p["name"]: p for p in report["plugins"]}
    assert by_name["echo"]["ok"] is True
    assert by_name["echo"]["settings"] == {"ECHO_PREFIX": "echo:"}
    assert by_name["missing"]["ok"] is False
    assert "ModuleNotFoundError" in by_name["missing"]["detail"]
    echo = next(c for c in report["providers"] if c["name"] == "echo")
    assert echo["ok"] is True and "1 model(s) available" in echo["detail"]
    executor = next(r for r in report["roles"] if r["role"] == "executor")
    assert executor["provider"] == "echo"

    use(ECHO)
    assert (await diagnose(settings))["ok"] is True


def test_the_name_set_comes_from_entry_points() -> None:
    use(ECHO, BROKEN[4], BROKEN[2])
    assert list(PROVIDER_NAMES) == [*BUILTIN_PROVIDERS, "echo"]
    assert "echo" in PROVIDER_NAMES and "Bad-Name" not in PROVIDER_NAMES


# The real thing: pip install into a fresh venv.


def _pip(python: Path, *args: str) -> None:
    command = [str(python), "-m", "pip", "install", "--no-deps", "--retries", "1"]
    done = subprocess.run(
        [*command, "--timeout", "60", *args], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.slow
def test_a_pip_installed_provider_works_end_to_end(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    made = subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300
    )
    if made.returncode != 0:
        pytest.skip(f"cannot create a venv here: {(made.stderr or made.stdout).strip()[-300:]}")
    python = venv / "bin" / "python"
    # crew's own dependencies are this interpreter's: seen from the venv, not downloaded.
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(purelib, "zz_crew_dependencies.pth").write_text("\n".join(ours) + "\n")
    source = tmp_path / "crew_echo_provider"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("__pycache__"))
    _pip(python, "-e", str(REPO))
    _pip(python, str(source))

    runs = tmp_path / "runs"
    work = tmp_path / "work"
    work.mkdir()
    env = {
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(tmp_path),
        "RUNS_ROOT": str(runs),
        "NO_COLOR": "1",
        "ECHO_PREFIX": "from the plugin:",
    }
    crew = str(venv / "bin" / "crew")

    doctor = subprocess.run(
        [crew, "doctor", "--json"],
        cwd=work,
        env={**env, "EXECUTOR_PROVIDER": "echo"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    report = json.loads(doctor.stdout)
    plugin = next(p for p in report["plugins"] if p["name"] == "echo")
    assert plugin["ok"] and plugin["package"] == "crew-echo-provider"
    assert plugin["version"] == "0.1.0"
    assert any(c["name"] == "echo" and c["ok"] for c in report["providers"])

    plan = work / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "title": "Echo",
                "plan": [{"id": "a", "title": "A"}, {"id": "b", "title": "B", "deps": ["a"]}],
            }
        )
    )
    ran = subprocess.run(
        [crew, "run", "--task-file", str(plan), "--executor-provider", "echo", "--json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    sidecars = sorted(runs.glob("**/artifact_*.llm.json"))
    assert len(sidecars) == 2, sidecars
    for path in sidecars:
        sidecar = json.loads(path.read_text())
        assert sidecar["provider"] == "echo", sidecar
        assert sidecar["price_source"] == "echo:2026-12"
        assert sidecar["cost_usd"] > 0
    markdown = sorted(runs.glob("**/artifact_a.md"))
    assert markdown and "from the plugin:" in markdown[0].read_text()

    port = free_port()
    server = subprocess.Popen(
        [crew, "serve", "--port", str(port)],
        cwd=work,
        env={**env, "API_KEY": "plugin-key"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_serving(server, f"http://127.0.0.1:{port}/health")
        answer = httpx.get(
            f"http://127.0.0.1:{port}/openapi.json", headers={"X-API-Key": "plugin-key"}, timeout=10
        )
        assert answer.status_code == 200, answer.text
        names = answer.json()["components"]["schemas"]["ProviderName"]["enum"]
        assert names == [*BUILTIN_PROVIDERS, "echo"]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
