"""Group commit: many concurrent writers, one transaction at a time.

Nodes finish concurrently; giving each of them its own transaction would serialize on
the database's write lock anyway (SQLite has one writer) and pay a commit per step.
Instead every state change is queued here as a small operation; one task drains the
queue and runs everything pending in a single transaction. Each caller still awaits
its own operation, so "committed before the next step" holds for every node, and a
burst of N completions costs one commit instead of N.

If a group fails, its operations are retried one per transaction so one bad operation
cannot fail the others, and its own caller gets the error.

Fencing: an executor's queue carries its lease (a Fence). Every transaction checks it
first; once the lease is lost, nothing more is written: the group's callers and every
later caller get LeaseLostError, and `on_lease_lost` tells the executor to stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from crew.domain.errors import LeaseLostError
from crew.store.leases import Fence

T = TypeVar("T")


class BatchSource(Protocol):
    """Anything that opens a buffered transaction yielding a writer (the repository does)."""

    def bulk(self, fence: Fence | None = None) -> Any: ...


Operation = Callable[[Any], Awaitable[Any]]


class WriteQueue:
    def __init__(
        self,
        source: BatchSource,
        *,
        max_group: int = 500,
        fence: Fence | None = None,
        on_lease_lost: Callable[[LeaseLostError], None] | None = None,
    ) -> None:
        self._source = source
        self._max_group = max_group
        self._fence = fence
        self._on_lease_lost = on_lease_lost
        self._lost: LeaseLostError | None = None
        self._pending: list[tuple[Operation, asyncio.Future[Any]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> WriteQueue:
        self._task = asyncio.create_task(self._drain(), name="crew-write-queue")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Commit everything still queued, then stop the drain task."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.shield(self._task)
            self._task = None

    async def submit(self, operation: Callable[[Any], Awaitable[T]]) -> T:
        """Queue `operation(writer)` and wait until its transaction has committed."""
        result: T = await self.enqueue(operation)
        return result

    def enqueue(self, operation: Callable[[Any], Awaitable[T]]) -> asyncio.Future[T]:
        """Queue `operation(writer)` now; the future resolves once it has committed.

        Operations commit in the order they were queued: one queued later never lands
        in an earlier transaction.
        """
        if self._closed:
            raise RuntimeError("write queue is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._lost is not None:
            future.set_exception(self._lost)
            return future
        self._pending.append((operation, future))
        self._wakeup.set()
        return future

    async def _drain(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            # Let every task that is ready right now queue its operation first: this one
            # yield is what turns a burst of node completions into a single commit.
            await asyncio.sleep(0)
            while self._pending:
                group = self._pending[: self._max_group]
                del self._pending[: self._max_group]
                await self._commit_group(group)
            if self._closed and not self._pending:
                return

    async def _commit_group(self, group: list[tuple[Operation, asyncio.Future[Any]]]) -> None:
        if self._lost is not None:
            self._refuse(group, self._lost)
            return
        results: list[Any] = []
        try:
            async with self._source.bulk(self._fence) as writer:
                for operation, _ in group:
                    results.append(await operation(writer))
        except LeaseLostError as lost:
            self._lose(lost)
            self._refuse(group, lost)
            return
        except Exception:
            if len(group) == 1:
                _, future = group[0]
                await self._run_alone(group[0][0], future)
                return
            for operation, future in group:
                await self._run_alone(operation, future)
            return
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():
                future.set_result(result)

    def _lose(self, lost: LeaseLostError) -> None:
        """The lease is gone: refuse everything from now on, and tell the executor once."""
        if self._lost is not None:
            return
        self._lost = lost
        self._refuse(self._pending, lost)
        self._pending.clear()
        if self._on_lease_lost is not None:
            self._on_lease_lost(lost)

    @staticmethod
    def _refuse(group: list[tuple[Operation, asyncio.Future[Any]]], error: Exception) -> None:
        for _, future in group:
            if not future.done():
                future.set_exception(error)

    async def _run_alone(self, operation: Operation, future: asyncio.Future[Any]) -> None:
        if self._lost is not None:
            self._refuse([(operation, future)], self._lost)
            return
        try:
            async with self._source.bulk(self._fence) as writer:
                result = await operation(writer)
        except LeaseLostError as lost:
            self._lose(lost)
            self._refuse([(operation, future)], lost)
            return
        except Exception as error:  # delivered to the caller that queued it
            if not future.done():
                future.set_exception(error)
            return
        if not future.done():
            future.set_result(result)
