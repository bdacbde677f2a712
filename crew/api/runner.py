"""Background execution of runs started or resumed through the API.

Each run executes in this server process, with the same engine as `crew run`, in its own
asyncio task: at most SERVE_MAX_CONCURRENT_RUNS at once, the rest wait (still `queued`
in the database) on a semaphore. A run that fails, or whose execution raises, is logged
and ends there: nothing shared is left broken, so later requests are unaffected.

On shutdown the tasks are cancelled and awaited: the engine then records the runs as
`interrupted`, which `POST /runs/{id}/resume` (or `crew run --resume`) continues.

Observability: each execution gets the hooks' event listeners (run and node metrics,
Sentry reports of failed runs and nodes), closed when it ends however it ends; the LLM
client carries the metrics observer, so the supervisor's calls are counted too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from crew.domain.errors import CrewError
from crew.engine.service import SupervisorCalls, execute_run
from crew.llm.client import LLMClient
from crew.llm.registry import ProviderRegistry
from crew.observability.hooks import Hooks
from crew.settings import Settings

log = logging.getLogger("crew.api.runs")


class RunManager:
    def __init__(
        self,
        settings: Settings,
        repo: Any,
        registry: ProviderRegistry | None = None,
        *,
        hooks: Hooks | None = None,
    ):
        self.settings = settings
        self.repo = repo
        self.hooks = hooks or Hooks()
        self.registry = registry or ProviderRegistry(settings)
        self.client = LLMClient(settings, self.registry, observer=self.hooks.llm)
        self._slots = asyncio.Semaphore(settings.serve_max_concurrent_runs)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = False

    def is_active(self, run_id: str) -> bool:
        return run_id in self._tasks

    def start(
        self,
        run_id: str,
        *,
        resume: bool = False,
        supervisor: SupervisorCalls | None = None,
    ) -> None:
        """Schedule the run's execution; returns at once."""
        if self._closing:
            raise CrewError("the server is shutting down")
        task = asyncio.create_task(
            self._execute(run_id, resume=resume, supervisor=supervisor), name=f"crew-run-{run_id}"
        )
        self._tasks[run_id] = task
        task.add_done_callback(functools.partial(self._forget, run_id))

    def _forget(self, run_id: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(run_id, None)

    async def _execute(
        self, run_id: str, *, resume: bool, supervisor: SupervisorCalls | None
    ) -> None:
        async with self._slots:
            listeners = self.hooks.run_listeners()
            try:
                outcome = await execute_run(
                    self.repo,
                    self.settings,
                    self.client,
                    run_id,
                    resume=resume,
                    supervisor=supervisor,
                    listeners=listeners,
                )
                log.info("run %s ended %s", run_id, outcome.status.value)
            except asyncio.CancelledError:
                log.info("run %s interrupted by shutdown", run_id)
                raise
            except CrewError as error:
                log.warning("run %s could not execute: %s", run_id, error)
            except Exception as error:
                log.exception("run %s crashed", run_id)
                if self.hooks.report_error is not None:
                    self.hooks.report_error(error, {"run_id": run_id})
            finally:
                for listener in listeners:
                    close = getattr(listener, "close", None)
                    if close is not None:
                        close()

    def cancel_all(self) -> None:
        """Stop accepting runs and cancel those in flight (they end `interrupted`)."""
        self._closing = True
        for task in list(self._tasks.values()):
            task.cancel()

    async def aclose(self) -> None:
        self.cancel_all()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.registry.aclose()
