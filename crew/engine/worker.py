"""An executor process's loop: claim runs, execute them, renew, give them back on shutdown.

Used by `crew worker` and by the worker embedded in `crew serve`. Scale-out is across
runs: each claimed run is executed by today's engine in its own task (its nodes run
concurrently inside it), at most `max_runs` at once.

Wake-ups: a run queued by this process (`wake()`), a PostgreSQL NOTIFY from another
process (crew/store/notify.py), a run of ours finishing, or the polling interval
(WORKER_POLL_S: the fallback, and the only way on SQLite). Polling also finds runs
whose owner died once their lease has run out: that is how recovery happens.

Shutdown: `shutdown()` (first SIGTERM/SIGINT) stops claiming and lets the runs in
flight go on for WORKER_SHUTDOWN_GRACE_S; each run whose nodes are all done by then
finishes normally, the others are released back to `queued` (RUN_RELEASED), so a deploy
loses nothing and nobody has to resume anything. `abort()` (a second signal) releases
at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from crew.domain.clock import utcnow
from crew.domain.errors import CrewError, LeaseLostError
from crew.domain.status import RunStatus
from crew.engine.runner import RunExecutor
from crew.engine.service import execute_claimed, lease_until, new_owner
from crew.engine.store import EngineStore
from crew.llm.client import LLMClient
from crew.settings import Settings
from crew.store.records import Claim, WorkerRecord

log = logging.getLogger("crew.worker")

FORGET_WORKERS_AFTER = timedelta(days=1)
"""Registry rows of processes silent for this long (they died unregistered) are removed."""


@dataclass(slots=True)
class WorkerStats:
    """What this worker did, for `--once` output, tests and benchmarks."""

    claimed: int = 0
    recovered: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    released: int = 0


class Worker:
    def __init__(
        self,
        repo: EngineStore,
        settings: Settings,
        client: LLMClient,
        *,
        name: str | None = None,
        kind: str = "worker",
        max_runs: int = 1,
        listeners: Callable[[], Sequence[Any]] = list,
        on_claim: Callable[[Claim], None] | None = None,
        on_counts: Callable[[dict[str, int]], None] | None = None,
    ) -> None:
        self.repo = repo
        self.settings = settings
        self.client = client
        self.id = new_owner()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.kind = kind
        self.max_runs = max(1, max_runs)
        self._listeners = listeners
        self._on_claim = on_claim
        self._on_counts = on_counts
        self.stats = WorkerStats()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._executors: dict[str, RunExecutor] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._aborted = False
        self._started = asyncio.Event()
        self._once = False

    # ---- control ----------------------------------------------------------------------

    def wake(self) -> None:
        """Look for claimable runs now (a run was queued, or a NOTIFY arrived)."""
        self._wake.set()

    def shutdown(self) -> None:
        """Stop claiming; runs in flight get the grace period, then go back to the queue."""
        if self._stopping:
            return
        self._stopping = True
        for executor in self._executors.values():
            executor.drain()
        self._wake.set()

    def abort(self) -> None:
        """Release every run now (a second signal)."""
        self._aborted = True
        self.shutdown()
        for executor in list(self._executors.values()):
            executor.release_now()

    @property
    def runs_held(self) -> int:
        return len(self._active)

    @property
    def active_runs(self) -> frozenset[str]:
        return frozenset(self._active)

    async def started(self) -> None:
        await self._started.wait()

    # ---- the loop -----------------------------------------------------------------------

    async def run(self, *, once: bool = False) -> WorkerStats:
        """Claim and execute runs until `shutdown()` (or, with `once`, the queue is empty)."""
        async with registered(
            self.repo,
            self.settings,
            worker_id=self.id,
            name=self.name,
            kind=self.kind,
            max_runs=self.max_runs,
            state=lambda: (len(self._active), "draining" if self._stopping else "running"),
            on_counts=self._on_counts,
        ):
            self._started.set()
            try:
                await self._loop(once)
            except Exception:
                # The loop cannot go on (with --once: the queue cannot be read). The runs
                # in flight go back to the queue, as on shutdown: cut off when the process
                # exits, they would end `interrupted` and wait for a person. A worker that
                # was not asked to stop can run again (crew serve restarts its own).
                stopping = self._stopping
                self.shutdown()
                try:
                    await self._drain()
                finally:
                    self._stopping = stopping
                raise
            await self._drain()
        return self.stats

    async def _loop(self, once: bool) -> None:
        self._once = once
        while not self._stopping:
            self._wake.clear()
            claimed = await self._claim_while_free()
            if once and not claimed and not self._active:
                return
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
            waits.extend(self._active.values())
            await asyncio.wait(
                waits, timeout=self.settings.worker_poll_s, return_when=asyncio.FIRST_COMPLETED
            )
            waits[0].cancel()

    async def _claim_while_free(self) -> int:
        """Claim runs while a slot is free; how many were claimed."""
        claimed = 0
        while len(self._active) < self.max_runs and not self._stopping:
            now = utcnow()
            try:
                claim = await self.repo.claim_next_run(
                    self.id, now, lease_until(self.settings, now)
                )
            except CrewError as error:
                if self._once:  # a drain that cannot see the queue must not say "done"
                    raise
                # The database is down: say so, try again at the next poll.
                log.warning("worker %s could not claim a run: %s", self.name, error)
                return claimed
            if claim is None:
                return claimed
            claimed += 1
            self.stats.claimed += 1
            if claim.previous_status == RunStatus.RUNNING.value and claim.previous_owner == self.id:
                log.warning(
                    "worker %s took back its own run %s (its lease ran out while this process "
                    "was stalled); the earlier execution stops at its next write",
                    self.name,
                    claim.run_id,
                )
            elif claim.previous_status == RunStatus.RUNNING.value:
                self.stats.recovered += 1
                log.warning(
                    "worker %s recovers run %s (previous owner %s, recovery %d)",
                    self.name,
                    claim.run_id,
                    claim.previous_owner,
                    claim.recoveries,
                )
            if self._on_claim is not None:
                self._on_claim(claim)
            task = asyncio.create_task(self._execute(claim), name=f"crew-run-{claim.run_id}")
            self._active[claim.run_id] = task
        return claimed

    async def _execute(self, claim: Claim) -> None:
        listeners = list(self._listeners())
        try:
            outcome = await execute_claimed(
                self.repo,
                self.settings,
                self.client,
                claim,
                listeners=listeners,
                on_executor=self._track,
            )
            status = outcome.status.value
            if outcome.status == RunStatus.QUEUED:
                self.stats.released += 1
            else:
                self.stats.finished[status] = self.stats.finished.get(status, 0) + 1
            log.info("run %s ended %s (worker %s)", claim.run_id, status, self.name)
        except LeaseLostError as error:
            log.warning("run %s: %s", claim.run_id, error)
        except asyncio.CancelledError:
            log.info("run %s stopped with worker %s", claim.run_id, self.name)
            raise
        except CrewError as error:
            log.warning("run %s could not execute: %s", claim.run_id, error)
        except Exception:
            log.exception("run %s crashed in worker %s", claim.run_id, self.name)
        finally:
            # Only if the run is still this execution's: a worker stalled past its own
            # lease may have claimed the run again, and the new execution is tracked now.
            if self._active.get(claim.run_id) is asyncio.current_task():
                self._executors.pop(claim.run_id, None)
                self._active.pop(claim.run_id, None)
            self._wake.set()
            for listener in listeners:
                close = getattr(listener, "close", None)
                if close is not None:
                    close()

    def _track(self, executor: RunExecutor) -> None:
        self._executors[executor.run.id] = executor
        if self._stopping:
            executor.drain()
            if self._aborted:
                executor.release_now()

    async def _drain(self) -> None:
        """After shutdown(): wait for the runs in flight up to the grace period, then
        release what is left."""
        if not self._active:
            return
        grace = self.settings.worker_shutdown_grace_s
        _, pending = await asyncio.wait(list(self._active.values()), timeout=grace)
        if pending:
            log.warning(
                "worker %s: grace period (%gs) over; releasing %d run(s) to the queue",
                self.name,
                grace,
                len(pending),
            )
            for executor in list(self._executors.values()):
                executor.release_now()
            await asyncio.gather(*pending, return_exceptions=True)


@asynccontextmanager
async def registered(
    repo: EngineStore,
    settings: Settings,
    *,
    worker_id: str,
    name: str,
    kind: str,
    max_runs: int,
    state: Callable[[], tuple[int, str]],
    on_counts: Callable[[dict[str, int]], None] | None = None,
) -> AsyncIterator[None]:
    """Register an executing process in the workers table while the body runs.

    A heartbeat task keeps its row fresh (runs held, running or draining); the row is
    removed at the end, and rows of processes silent for a day are forgotten. The
    registry is for operators: its failures are logged, never fatal to the runs.
    """
    now = utcnow()
    await repo.register_worker(
        WorkerRecord(
            id=worker_id,
            name=name,
            kind=kind,
            host=socket.gethostname(),
            pid=os.getpid(),
            status="running",
            max_runs=max_runs,
            runs_held=0,
            started_at=now,
            heartbeat_at=now,
        )
    )
    await repo.forget_workers_before(now - FORGET_WORKERS_AFTER)

    async def beat() -> None:
        interval = max(0.2, settings.run_lease_s / 3)
        while True:
            await asyncio.sleep(interval)
            held, status = state()
            try:
                await repo.worker_heartbeat(worker_id, utcnow(), runs_held=held, status=status)
                if on_counts is not None:
                    on_counts(await repo.count_runs_by_lease(utcnow()))
            except Exception:
                log.warning("%s: registry heartbeat failed", name, exc_info=True)

    task = asyncio.create_task(beat(), name="crew-registry-heartbeat")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        try:
            await asyncio.shield(repo.deregister_worker(worker_id))
        except Exception:  # the database may be what stopped us
            log.warning("%s could not deregister", name, exc_info=True)
