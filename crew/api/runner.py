"""Where runs started through the API go: the queue, and the worker embedded in the server.

`POST /tasks` creates a run `queued` and wakes the workers; whoever claims it executes
it (crew/engine/worker.py). By default `crew serve` embeds a worker with
SERVE_MAX_CONCURRENT_RUNS slots; with SERVE_EMBEDDED_WORKER=false (or
CREW_EXECUTION=workers) the server only queues, and `crew worker` processes execute.

On shutdown the embedded worker stops claiming, lets its runs go on for
WORKER_SHUTDOWN_GRACE_S, then gives the unfinished ones back to the queue: a deploy
loses nothing, and the next server (or any worker) continues them without anyone
resuming anything.

Observability: each execution gets the hooks' event listeners (run and node metrics,
Sentry reports of failed runs and nodes), closed when it ends however it ends; the LLM
client carries the metrics observer, so the supervisor's calls are counted too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from crew.domain.errors import ConflictError, CrewError
from crew.engine.service import requeue_for_resume
from crew.engine.worker import Worker
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
        self.worker: Worker | None = None
        if settings.embedded_worker:
            self.worker = Worker(
                repo,
                settings,
                self.client,
                name=f"serve@{socket.gethostname()}:{os.getpid()}",
                kind="serve",
                max_runs=settings.serve_max_concurrent_runs,
                listeners=self.hooks.run_listeners,
                on_claim=self.hooks.worker_claimed,
                on_counts=self.hooks.worker_counts,
            )
        self._task: asyncio.Task[Any] | None = None
        self._listening: contextlib.AsyncExitStack | None = None
        self._closing = False
        self._closed = asyncio.Event()

    async def start_worker(self) -> None:
        """Start the embedded worker (if any) and its wake-ups; returns at once."""
        if self.worker is None or self._task is not None:
            return
        from crew.store.notify import listen_for_queued_runs

        worker = self.worker
        self._listening = contextlib.AsyncExitStack()
        await self._listening.enter_async_context(
            listen_for_queued_runs(self.settings.database_url, lambda _run_id: worker.wake())
        )
        self._task = asyncio.create_task(self._run_worker(worker), name="crew-embedded-worker")

    async def _run_worker(self, worker: Worker) -> None:
        while not self._closing:
            try:
                await worker.run()
                return
            except CrewError as error:  # the database is down: the server keeps serving
                log.warning("embedded worker stopped (%s); restarting in 2s", error)
            except Exception:
                log.exception("embedded worker crashed; restarting in 2s")
            with contextlib.suppress(TimeoutError):  # a shutdown ends the wait at once
                await asyncio.wait_for(self._closed.wait(), 2.0)

    def queued(self, run_id: str) -> None:
        """A run was queued by this process: look for it now (others are NOTIFYed)."""
        if self.worker is not None:
            self.worker.wake()

    def is_active(self, run_id: str) -> bool:
        return self.worker is not None and run_id in self.worker.active_runs

    async def resume(self, run_id: str) -> None:
        """Queue a finished run again; a worker continues it (RUN_RESUMED, `manual`)."""
        if self.is_active(run_id):
            raise ConflictError(f"run {run_id} is being executed by this server")
        await requeue_for_resume(self.repo, run_id)
        self.queued(run_id)

    def cancel_all(self) -> None:
        """Shutting down: stop claiming; runs in flight get the grace period, then go back
        to the queue (not `interrupted`)."""
        self._closing = True
        self._closed.set()
        if self.worker is not None:
            self.worker.shutdown()

    def abort(self) -> None:
        """A second signal: give every run back to the queue now."""
        self._closing = True
        self._closed.set()
        if self.worker is not None:
            self.worker.abort()

    async def aclose(self) -> None:
        self.cancel_all()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._listening is not None:
            await self._listening.aclose()
        await self.registry.aclose()
