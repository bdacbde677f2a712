"""Helpers shared by the engine test files (this module holds no tests of its own).

`Harness` wires the real engine (service functions, repository, LLM client) to a
`ScriptedProvider` registered under the `offline` name, so plans need no `llm` block and
every provider call is recorded. Answers default to what the offline provider would say.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fakes import ScriptedProvider

from crew.domain.plan import parse_plan
from crew.engine.options import RunOptions
from crew.engine.service import RunOutcome, create_run, execute_run
from crew.llm.base import LLMRequest
from crew.llm.client import LLMClient
from crew.llm.offline import OfflineProvider, read_context
from crew.llm.registry import ProviderRegistry
from crew.settings import Settings, settings_from_values
from crew.store import migrate
from crew.store.database import open_repository
from crew.store.records import EventRecord
from crew.store.repository import Repository

TERMINAL = {"RUN_COMPLETED", "RUN_FAILED", "RUN_CANCELED", "RUN_INTERRUPTED"}


def node_of(request: LLMRequest) -> str:
    """The plan node a request was made for (read from the prompt's context block)."""
    context = read_context(request.messages) or {}
    if context.get("crew_context") == "assign":
        return str(context["manage_node"]["id"])
    if context.get("crew_context") == "execute":
        return str(context["node"]["id"])
    return "<supervisor>"


async def offline_text(request: LLMRequest) -> str:
    """What the offline provider answers: valid assignments, markdown, plans."""
    return (await OfflineProvider().complete(request)).text


def keyed(
    answers: Mapping[str, Callable[[LLMRequest], Any] | str | BaseException],
) -> Callable[[LLMRequest], Any]:
    """An answer function choosing by node key; other nodes get the offline answer.

    A callable entry may return a string, an awaitable, or raise.
    """

    async def answer(request: LLMRequest) -> str:
        entry = answers.get(node_of(request))
        if entry is None:
            return await offline_text(request)
        if isinstance(entry, BaseException):
            raise entry
        if isinstance(entry, str):
            return entry
        result = entry(request)
        if asyncio.iscoroutine(result):
            result = await result
        return str(result)

    return answer


def plan_dict(*nodes: dict[str, Any], title: str = "Rapport test") -> dict[str, Any]:
    return {"title": title, "plan": list(nodes)}


def n(key: str, *deps: str, **extra: Any) -> dict[str, Any]:
    """A plan node: `n("b", "a")` is node b depending on a."""
    return {"id": key, "title": f"Title {key}", "deps": list(deps), **extra}


def calls_by_node(provider: ScriptedProvider) -> list[str]:
    return [node_of(r) for r in provider.requests]


@dataclass
class Harness:
    settings: Settings
    repo: Repository
    provider: ScriptedProvider
    registry: ProviderRegistry
    client: LLMClient

    @property
    def runs_root(self) -> Path:
        return self.settings.runs_root

    def use(self, provider: ScriptedProvider) -> None:
        """Swap the provider (a 'fixed' provider before a resume)."""
        self.provider = provider
        self.registry.register("offline", provider)

    async def create(
        self, plan: dict[str, Any], *, run_id: str | None = None, **options: Any
    ) -> str:
        request_id = options.pop("request_id", None)
        run_options = RunOptions.from_settings(self.settings, **options)
        return await create_run(
            self.repo,
            self.settings,
            parse_plan(plan),
            options=run_options,
            run_id=run_id,
            request_id=request_id,
        )

    async def run(self, plan: dict[str, Any], **options: Any) -> RunOutcome:
        run_id = await self.create(plan, **options)
        return await execute_run(self.repo, self.settings, self.client, run_id)

    async def resume(self, run_id: str, **kwargs: Any) -> RunOutcome:
        return await execute_run(
            self.repo, self.settings, self.client, run_id, resume=True, **kwargs
        )

    async def events(self, run_id: str) -> list[EventRecord]:
        return await self.repo.list_events(run_id)

    async def types(self, run_id: str) -> list[str]:
        return [e.type for e in await self.events(run_id)]

    async def statuses(self, run_id: str) -> dict[str, str]:
        return {node.key: node.status for node in await self.repo.list_nodes(run_id)}


def engine_settings(tmp_path: Path, db_url: str, **values: str) -> Settings:
    base = {
        "RUNS_ROOT": str(tmp_path / "runs"),
        "DATABASE_URL": db_url,
        "RETRY_BASE_DELAY": "0",
        "MAX_CONCURRENCY": "4",
        "CREW_LANGUAGE": "en",
    }
    base.update(values)
    return settings_from_values(base)


@asynccontextmanager
async def harness(
    tmp_path: Path,
    db_url: str,
    provider: ScriptedProvider | None = None,
    **values: str,
) -> AsyncIterator[Harness]:
    """A repository on `db_url` (migrated), settings under tmp_path, a scripted provider."""
    if db_url.startswith("postgresql"):
        await asyncio.to_thread(migrate.upgrade, db_url)
    settings = engine_settings(tmp_path, db_url, **values)
    provider = provider or ScriptedProvider(default=offline_text)
    registry = ProviderRegistry(settings)
    registry.register("offline", provider)
    client = LLMClient(settings, registry)
    async with open_repository(settings) as repo:
        try:
            yield Harness(settings, repo, provider, registry, client)
        finally:
            await registry.aclose()


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# ---- the CLI, in process ---------------------------------------------------------------

CLEAN_ENV_PREFIXES = (
    "LLM_", "SUPERVISOR_", "MANAGER_", "EXECUTOR_", "RECRUITER_", "CREW_", "MAX_CONCURRENCY",
    "OFFLINE_", "NODE_", "RETRY_", "RUN_", "RUNS_ROOT", "DATABASE_URL", "OLLAMA_", "OPENAI_",
)  # fmt: skip


def setup_cli_env(tmp_path: Path, monkeypatch: Any) -> None:
    """An empty working folder (no ./.env), runs and database under tmp_path."""
    import os

    for name in list(os.environ):
        if name.startswith(CLEAN_ENV_PREFIXES) and name != "CREW_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'crew.db'}")
    monkeypatch.setenv("RETRY_BASE_DELAY", "0")
    monkeypatch.chdir(tmp_path)


def use_provider(monkeypatch: Any, provider: ScriptedProvider) -> ScriptedProvider:
    """Make every registry the CLI builds answer `offline` calls with `provider`."""
    from crew.llm import registry

    monkeypatch.setitem(registry.FACTORIES, "offline", lambda settings: provider)
    return provider


class Store:
    """Synchronous reads of the CLI's database, for tests that are not coroutines."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings = settings_from_values(
            {
                "RUNS_ROOT": str(tmp_path / "runs"),
                "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'crew.db'}",
            }
        )

    def call(self, fn: Callable[[Repository], Any]) -> Any:
        async def main() -> Any:
            async with open_repository(self.settings) as repo:
                return await fn(repo)

        return asyncio.run(main())

    def events(self, run_id: str) -> list[EventRecord]:
        return list(self.call(lambda repo: repo.list_events(run_id)))

    def run(self, run_id: str) -> Any:
        return self.call(lambda repo: repo.get_run(run_id))

    def nodes(self, run_id: str) -> dict[str, Any]:
        async def fn(repo: Repository) -> dict[str, Any]:
            return {node.key: node for node in await repo.list_nodes(run_id)}

        return dict(self.call(fn))

    def run_ids(self) -> list[str]:
        async def fn(repo: Repository) -> list[str]:
            return [run.id for run in await repo.list_runs(limit=1000)]

        return list(self.call(fn))
