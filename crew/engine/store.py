"""What the engine needs from the store: one Protocol instead of `repo: Any`.

crew.store.repository.Repository implements it; tests may pass anything that does
(a wrapper that slows transactions down, say). Writes inside `batch()` and `bulk()` go
through the writer those yield, whose methods mirror the repository's write methods.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from crew.store.leases import Fence
from crew.store.records import (
    ArtifactRecord,
    Claim,
    NewNode,
    NodeRecord,
    RunProgress,
    RunRecord,
    WorkerRecord,
)


class EngineStore(Protocol):
    """Runs, nodes, artifacts and leases, as the engine reads and changes them."""

    # ---- reads ----------------------------------------------------------------------
    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def get_run_progress(self, run_id: str) -> RunProgress | None: ...

    async def list_nodes(self, run_id: str) -> list[NodeRecord]: ...

    async def list_artifacts(
        self, *, run_id: str | None = None, node_id: str | None = None, type: str | None = None
    ) -> list[ArtifactRecord]: ...

    # ---- writes ---------------------------------------------------------------------
    async def create_run(
        self,
        *,
        run_id: str,
        title: str,
        status: str,
        options: Mapping[str, Any],
        task_spec: Mapping[str, Any],
        request_id: str | None,
        nodes: Sequence[NewNode],
        owner: str | None = None,
        lease_expires_at: datetime | None = None,
    ) -> None: ...

    async def update_run(
        self, run_id: str, *, when_status: str | Collection[str] | None = None, **columns: Any
    ) -> bool: ...

    def batch(self) -> AbstractAsyncContextManager[Any]:
        """One transaction; the writer it yields has the repository's write methods."""
        ...

    def bulk(self, fence: Fence | None = None) -> AbstractAsyncContextManager[Any]:
        """A buffered transaction for group commits, refused once `fence` lost its lease."""
        ...

    # ---- leases ---------------------------------------------------------------------
    async def claim_run(
        self,
        run_id: str,
        owner: str,
        now: datetime,
        lease_until: datetime,
        *,
        dead_owner: tuple[str, int] | None = None,
        when_status: str | None = None,
    ) -> Claim | None: ...

    async def claim_next_run(
        self, owner: str, now: datetime, lease_until: datetime
    ) -> Claim | None: ...

    async def renew_lease(
        self, fence: Fence, now: datetime, lease_until: datetime
    ) -> tuple[bool, datetime | None]: ...

    async def release_run(self, run_id: str, owner: str, generation: int | None = None) -> bool: ...

    async def notify_run_queued(self, run_id: str) -> None: ...

    async def reserve_budget(
        self,
        run_id: str,
        tokens: int,
        cost_usd: float,
        *,
        max_tokens: int | None,
        max_cost_usd: float | None,
    ) -> bool: ...

    async def release_budget(self, run_id: str, tokens: int, cost_usd: float) -> None: ...

    # ---- the workers registry -------------------------------------------------------
    async def register_worker(self, worker: WorkerRecord) -> None: ...

    async def worker_heartbeat(
        self, worker_id: str, now: datetime, *, runs_held: int, status: str
    ) -> bool: ...

    async def deregister_worker(self, worker_id: str) -> None: ...

    async def forget_workers_before(self, before: datetime) -> int: ...

    async def count_runs_by_lease(self, now: datetime) -> dict[str, int]: ...
