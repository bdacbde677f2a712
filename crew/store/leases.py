"""The lease queries: who executes which run, and the registry of executing processes.

A run is executed by whoever holds its lease. Claiming is one UPDATE that picks the
run and takes it together, so two executors racing for the same run cannot both win:
on PostgreSQL the candidate row is locked with `FOR UPDATE SKIP LOCKED` (racing
workers skip each other's candidates instead of queueing behind them); on SQLite the
statement holds the database's only write lock from its first step. Every claim bumps
`lease_generation`: the pair (owner, generation) is the fencing token every later
write of that owner is checked against (see `fence_statement`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Select,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from crew.domain.clock import utcnow
from crew.domain.status import RunStatus
from crew.store.lookups import Lookups
from crew.store.models import runs_table, workers_table
from crew.store.records import Claim, WorkerRecord

_c = runs_table.c

RUNS_QUEUED_CHANNEL = "crew_runs_queued"
"""The PostgreSQL NOTIFY channel told when a run becomes claimable (queued or released)."""


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease a writer must still hold for its transaction to commit."""

    run_id: str
    owner: str
    generation: int


def fence_statement(fence: Fence) -> Select[Any]:
    """Selects the run row only while `fence` still holds the lease, and locks it.

    On PostgreSQL the lock (`FOR NO KEY UPDATE`, which does not block inserts of rows
    referencing the run) lasts until the transaction ends: a claim by another executor
    waits for this transaction, so nothing commits under a lease already handed on,
    and the run's events commit in the order of their ids.
    """
    return (
        select(_c.id)
        .where(
            _c.id == fence.run_id,
            _c.owner == fence.owner,
            _c.lease_generation == fence.generation,
        )
        .with_for_update(key_share=True)
    )


def event_lock_statement(run_ids: Sequence[str]) -> Select[Any]:
    """Locks the runs whose events a transaction is about to insert (PostgreSQL).

    Event ids come from one sequence; two transactions adding events to the same run
    could otherwise commit them out of id order, and a follower reading `id > last`
    would skip the later-committed, smaller id forever. Under the run's row lock, ids
    of one run are handed out and committed in order.
    """
    return (
        select(_c.id)
        .where(_c.id.in_(sorted(set(run_ids))))
        .order_by(_c.id)
        .with_for_update(key_share=True)
    )


def _lease_free(now: datetime, owner: str) -> ColumnElement[bool]:
    return or_(
        _c.owner.is_(None),
        _c.owner == owner,
        _c.lease_expires_at.is_(None),
        _c.lease_expires_at < now,
    )


def claimable_by_workers(now: datetime) -> ColumnElement[bool]:
    """Queued runs nobody holds, and running runs whose owner's lease ran out."""
    expired = or_(_c.lease_expires_at.is_(None), _c.lease_expires_at < now)
    return or_(
        and_(_c.status == RunStatus.QUEUED.value, or_(_c.owner.is_(None), expired)),
        and_(_c.status == RunStatus.RUNNING.value, expired),
    )


class LeaseQueries(Lookups):
    """Claims, renewals and releases of run leases; the workers registry."""

    async def claim_next_run(
        self, owner: str, now: datetime, lease_until: datetime
    ) -> Claim | None:
        """Claim the oldest claimable run (queued, or running with an expired lease).

        `lease_until - now` is how long the lease lasts; the store's clock decides when
        it starts (see `store_now`).
        """
        return await self._claim(claimable_by_workers, owner, lease_until - now)

    async def claim_run(
        self,
        run_id: str,
        owner: str,
        now: datetime,
        lease_until: datetime,
        *,
        dead_owner: tuple[str, int] | None = None,
        when_status: str | None = None,
    ) -> Claim | None:
        """Claim one run if nobody live holds its lease; None when someone does.

        `dead_owner` (owner, generation): a holder known to be dead (same host, its pid
        gone) whose lease has not run out yet; the run is taken from it at once.
        `when_status`: only while the run still has the status its claimer saw (a run
        canceled meanwhile is not executed).
        """

        def claimable(at: datetime) -> ColumnElement[bool]:
            free = _lease_free(at, owner)
            if when_status is not None:
                free = and_(free, _c.status == when_status)
            if dead_owner is not None:
                dead = and_(_c.owner == dead_owner[0], _c.lease_generation == dead_owner[1])
                free = or_(free, dead)
            return and_(_c.id == run_id, free)

        return await self._claim(claimable, owner, lease_until - now)

    async def _claim(
        self,
        claimable: Callable[[datetime], ColumnElement[bool]],
        owner: str,
        lease: timedelta,
    ) -> Claim | None:
        async with self._connection() as conn:
            now = await store_now(conn)
            where = claimable(now)
            if conn.dialect.name == "postgresql":
                return await _claim_locked(conn, where, owner, now, now + lease)
            return await _claim_compare_and_set(conn, where, owner, now, now + lease)

    async def renew_lease(
        self, fence: Fence, now: datetime, lease_until: datetime
    ) -> tuple[bool, datetime | None]:
        """Extend the lease by `lease_until - now` from the store's clock; (False, None)
        once it is not ours any more.

        Also returns the run's cancel request, so one statement serves the heartbeat.
        """
        lease = lease_until - now
        async with self._connection() as conn:
            at = await store_now(conn)
            stmt = (
                update(runs_table)
                .where(
                    _c.id == fence.run_id,
                    _c.owner == fence.owner,
                    _c.lease_generation == fence.generation,
                )
                .values(heartbeat_at=at, lease_expires_at=at + lease)
                .returning(_c.cancel_requested_at)
            )
            row = (await conn.execute(stmt)).first()
        if row is None:
            return False, None
        return True, row[0]

    async def reserve_budget(
        self,
        run_id: str,
        tokens: int,
        cost_usd: float,
        *,
        max_tokens: int | None,
        max_cost_usd: float | None,
    ) -> bool:
        """Add one call's reservation to the run's, if the run's spend plus everything
        reserved (by any process) plus this stays within the limits; False otherwise.

        One conditional UPDATE: two reservations racing for the last of a budget cannot
        both pass, whichever processes make them (the run's executor, an API action).
        """
        where = [_c.id == run_id]
        if max_tokens is not None:
            where.append(
                _c.input_tokens + _c.output_tokens + _c.reserved_tokens + tokens <= max_tokens
            )
        if max_cost_usd is not None:
            where.append(_c.cost_usd + _c.reserved_cost_usd + cost_usd <= max_cost_usd + 1e-12)
        stmt = (
            update(runs_table)
            .where(*where)
            .values(
                reserved_tokens=_c.reserved_tokens + tokens,
                reserved_cost_usd=_c.reserved_cost_usd + cost_usd,
            )
        )
        return await self._update(stmt)

    async def release_budget(self, run_id: str, tokens: int, cost_usd: float) -> None:
        """Take a finished call's reservation back (never below zero: a claim resets
        the reservations of a dead owner's calls)."""
        stmt = (
            update(runs_table)
            .where(_c.id == run_id)
            .values(
                reserved_tokens=case(
                    (_c.reserved_tokens > tokens, _c.reserved_tokens - tokens), else_=0
                ),
                reserved_cost_usd=case(
                    (_c.reserved_cost_usd > cost_usd, _c.reserved_cost_usd - cost_usd),
                    else_=0.0,
                ),
            )
        )
        await self._update(stmt)

    async def cancel_unclaimed_run(self, run_id: str, now: datetime) -> bool:
        """Cancel a queued run nobody holds, in one conditional UPDATE; False when it is
        not queued any more or an executor has claimed it (it then gets a cancel request)."""
        async with self._connection() as conn:
            at = await store_now(conn)
            expired = or_(_c.lease_expires_at.is_(None), _c.lease_expires_at < at)
            stmt = (
                update(runs_table)
                .where(
                    _c.id == run_id,
                    _c.status == RunStatus.QUEUED.value,
                    or_(_c.owner.is_(None), expired),
                )
                .values(
                    status=RunStatus.CANCELED.value,
                    ended_at=now,
                    error="canceled",
                    error_code="canceled",
                    owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
            return bool((await conn.execute(stmt)).rowcount)

    async def holds_lease(self, fence: Fence) -> bool:
        stmt = select(_c.id).where(
            _c.id == fence.run_id,
            _c.owner == fence.owner,
            _c.lease_generation == fence.generation,
        )
        return await self._one(stmt) is not None

    async def notify_run_queued(self, run_id: str) -> None:
        """Wake idle workers at once (PostgreSQL NOTIFY); on SQLite they poll."""
        async with self._connection() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    text("SELECT pg_notify(:channel, :run_id)"),
                    {"channel": RUNS_QUEUED_CHANNEL, "run_id": run_id},
                )

    # ---- the workers registry ---------------------------------------------------------

    async def register_worker(self, worker: WorkerRecord) -> None:
        async with self._connection() as conn:
            await conn.execute(delete(workers_table).where(workers_table.c.id == worker.id))
            await conn.execute(
                insert(workers_table).values(
                    {name: getattr(worker, name) for name in WorkerRecord.__dataclass_fields__}
                )
            )

    async def worker_heartbeat(
        self, worker_id: str, now: datetime, *, runs_held: int, status: str
    ) -> bool:
        w = workers_table.c
        stmt = (
            update(workers_table)
            .where(w.id == worker_id)
            .values(heartbeat_at=now, runs_held=runs_held, status=status)
        )
        return await self._update(stmt)

    async def deregister_worker(self, worker_id: str) -> None:
        await self._update(delete(workers_table).where(workers_table.c.id == worker_id))

    async def list_workers(self) -> list[WorkerRecord]:
        w = workers_table.c
        stmt = select(workers_table).order_by(w.started_at, w.id)
        return [WorkerRecord(**row) for row in await self._all(stmt)]

    async def runs_held_by(self, owners: Sequence[str]) -> dict[str, list[str]]:
        """The ids of the running runs each of `owners` holds."""
        held: dict[str, list[str]] = {owner: [] for owner in owners}
        if not owners:
            return held
        stmt = (
            select(_c.id, _c.owner)
            .where(_c.owner.in_(list(owners)), _c.status == RunStatus.RUNNING.value)
            .order_by(_c.created_at)
        )
        for row in await self._all(stmt):
            held[row["owner"]].append(row["id"])
        return held

    async def forget_workers_before(self, before: datetime) -> int:
        """Drop rows of processes that stopped beating long ago (they died unregistered)."""
        w = workers_table.c
        async with self._connection() as conn:
            result = await conn.execute(delete(workers_table).where(w.heartbeat_at < before))
        return int(result.rowcount or 0)

    async def count_runs_by_lease(self, now: datetime) -> dict[str, int]:
        """Runs queued, held (running with a live lease) and waiting for recovery."""
        async with self._connection() as conn:
            now = await store_now(conn)
        expired = or_(_c.lease_expires_at.is_(None), _c.lease_expires_at < now)
        queued = await self._scalar(select(_count()).where(_c.status == RunStatus.QUEUED.value))
        held = await self._scalar(
            select(_count()).where(_c.status == RunStatus.RUNNING.value, ~expired)
        )
        orphaned = await self._scalar(
            select(_count()).where(_c.status == RunStatus.RUNNING.value, expired)
        )
        return {"queued": int(queued or 0), "held": int(held or 0), "orphaned": int(orphaned or 0)}


async def store_now(conn: Any) -> datetime:
    """The clock leases are written and judged by: the database server's on PostgreSQL,
    so executors on machines whose clocks disagree still agree on who holds a run
    (a worker whose clock runs ahead must not take live runs over). SQLite lives on one
    machine: its processes share the clock."""
    if conn.dialect.name == "postgresql":
        value = (await conn.execute(select(func.clock_timestamp()))).scalar_one()
        return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return utcnow()


def _count() -> Any:
    return func.count().label("n")


def _taken(owner: str, now: datetime, lease_until: datetime, recovered: Any) -> dict[str, Any]:
    """The columns a claim sets."""
    return {
        "owner": owner,
        "heartbeat_at": now,
        "lease_expires_at": lease_until,
        "lease_generation": _c.lease_generation + 1,
        "recoveries": _c.recoveries + recovered,
        # The reservations of a dead owner's calls died with it.
        "reserved_tokens": literal(0),
        "reserved_cost_usd": literal(0.0),
        "updated_at": now,
    }


async def _claim_locked(
    conn: Any, where: ColumnElement[bool], owner: str, now: datetime, lease_until: datetime
) -> Claim | None:
    """PostgreSQL: pick and lock the candidate (skipping rows other claimers hold) and
    take it, in one statement."""
    candidate = (
        select(
            _c.id.label("claimed_id"),
            _c.owner.label("previous_owner"),
            _c.status.label("previous_status"),
        )
        .where(where)
        .order_by(_c.created_at, _c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .subquery("candidate")
    )
    recovered = case(
        (
            and_(
                candidate.c.previous_status == RunStatus.RUNNING.value,
                candidate.c.previous_owner.is_not(None),
                candidate.c.previous_owner != owner,
            ),
            1,
        ),
        else_=0,
    )
    stmt = (
        update(runs_table)
        .where(_c.id == candidate.c.claimed_id)
        .values(_taken(owner, now, lease_until, recovered))
        .returning(
            _c.id,
            _c.lease_generation,
            _c.recoveries,
            candidate.c.previous_owner,
            candidate.c.previous_status,
        )
    )
    row = (await conn.execute(stmt)).mappings().first()
    if row is None:
        return None
    return Claim(
        run_id=row["id"],
        owner=owner,
        generation=int(row["lease_generation"]),
        previous_owner=row["previous_owner"],
        previous_status=row["previous_status"],
        recoveries=int(row["recoveries"]),
    )


CANDIDATES_PER_CLAIM = 8
"""Candidates one SQLite claim tries before giving up (others may win the first ones)."""


async def _claim_compare_and_set(
    conn: Any, where: ColumnElement[bool], owner: str, now: datetime, lease_until: datetime
) -> Claim | None:
    """SQLite: read candidates, then take one with an UPDATE conditional on the row
    being exactly as read (same owner, generation and status). The UPDATE runs under
    SQLite's single write lock, so of two claimers of one run exactly one changes it;
    the other moves on to the next candidate."""
    rows = (
        (
            await conn.execute(
                select(_c.id, _c.owner, _c.status, _c.lease_generation, _c.recoveries)
                .where(where)
                .order_by(_c.created_at, _c.id)
                .limit(CANDIDATES_PER_CLAIM)
            )
        )
        .mappings()
        .all()
    )
    for row in rows:
        previous_owner = row["owner"]
        was_recovery = (
            row["status"] == RunStatus.RUNNING.value
            and previous_owner is not None
            and previous_owner != owner
        )
        same_owner = _c.owner.is_(None) if previous_owner is None else _c.owner == previous_owner
        stmt = (
            update(runs_table)
            .where(
                _c.id == row["id"],
                where,
                same_owner,
                _c.status == row["status"],
                _c.lease_generation == row["lease_generation"],
            )
            .values(_taken(owner, now, lease_until, 1 if was_recovery else 0))
        )
        if (await conn.execute(stmt)).rowcount:
            return Claim(
                run_id=row["id"],
                owner=owner,
                generation=int(row["lease_generation"]) + 1,
                previous_owner=previous_owner,
                previous_status=row["status"],
                recoveries=int(row["recoveries"]) + (1 if was_recovery else 0),
            )
    return None
