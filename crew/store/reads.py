"""The one read path of the CLI and the API: runs, nodes, artifacts, events.

`crew runs list|show`, `crew events tail`, `crew doctor`'s database check and every
API read come through here. Why not the async Repository: one indexed 50-row query per
request served ~400 req/s through SQLAlchemy's async engine on aiosqlite and ~1,950
req/s through the stdlib sqlite3 driver, and a read command spent most of its 0.8 s
importing SQLAlchemy and preparing an engine to read a few rows. So on SQLite the reads
run on a small pool of stdlib connections (one per thread of a private executor; WAL
lets them read while the engine writes), and every query of one request runs in one
thread hop inside one read transaction, so a page and its total see the same snapshot.
On PostgreSQL they run on asyncpg directly (prepared statements, one transaction per
batch). The SQL is written once, with `:name` parameters; the records returned are the
repository's, timestamps aware UTC. Nothing on this path imports SQLAlchemy or Alembic:
`open_reads` checks the schema revision by reading `alembic_version` itself, and only a
SQLite file that is missing or behind takes the full open path (which creates or
upgrades it).

Events are paged by keyset (`id > after_id`), never OFFSET scans, and the per-run event
total of a finished run is counted once and then topped up with the rows added since.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crew.domain.errors import AmbiguousIdError, MigrationRequiredError, NotFoundError
from crew.domain.limits import quote_cut
from crew.store import SCHEMA_HEAD
from crew.store.read_backends import (
    PG_READERS,
    SQLITE_READERS,
    EngineBackend,
    PostgresBackend,
    Query,
    ReadBackend,
    SqliteBackend,
)
from crew.store.read_sql import (
    ARTIFACT_COLUMNS,
    EVENT_COLUMNS,
    NODE_COLUMNS,
    RUN_COLUMNS,
    EventFilters,
    NodeFilters,
    Order,
    Page,
    RunFilters,
    Where,
    artifact_record,
    event_record,
    like_pattern,
    node_record,
    order_sql,
    run_record,
)
from crew.store.records import ArtifactRecord, EventRecord, NodeRecord, RunRecord
from crew.store.urls import parse

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

TERMINAL_RUN_STATUSES = ("completed", "failed", "canceled", "interrupted")
AMBIGUOUS_SHOWN = 5
"""Run ids quoted when a prefix matches several."""


def only_match(prefix: str, matches: Sequence[str]) -> str:
    """The one run id of `matches` (ids starting with `prefix`, at most
    AMBIGUOUS_SHOWN + 1 of them), or the error saying there is none or several."""
    if not matches:
        raise NotFoundError(f"no run matches {quote_cut(prefix)}")
    if len(matches) > 1:
        more = " (and more)" if len(matches) > AMBIGUOUS_SHOWN else ""
        raise AmbiguousIdError(
            f"run id prefix {quote_cut(prefix)} matches several runs{more}; give more characters",
            problems=list(matches[:AMBIGUOUS_SHOWN]),
        )
    return matches[0]


@dataclass(frozen=True, slots=True)
class RunDetail:
    run: RunRecord
    node_counts: dict[str, int]
    artifacts_total: int
    events_total: int


@dataclass(frozen=True, slots=True)
class RunContents:
    """A run with all its nodes (plan order) and artifacts (creation order, then path)."""

    run: RunRecord
    nodes: list[NodeRecord]
    artifacts: list[ArtifactRecord]


class ReadStore:
    """Read-only queries for the CLI and the API; see the module docstring."""

    def __init__(self, backend: ReadBackend) -> None:
        self._backend = backend
        self._event_totals: dict[tuple[Any, ...], tuple[int, int]] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, database_url: str, engine: AsyncEngine | None = None, *, connections: int = 0
    ) -> ReadStore:
        """Stdlib SQLite readers for a SQLite file, asyncpg for PostgreSQL, and the async
        engine for any other URL crew accepts (an in-memory SQLite database).

        `connections` bounds the readers (0: a server's default); a command needs one.
        """
        target = parse(database_url)
        if target is not None and target.sqlite_path is not None:
            readers = connections or SQLITE_READERS
            return cls(SqliteBackend(target.sqlite_path, target.display, readers))
        if target is not None:
            return cls(PostgresBackend(target, connections or PG_READERS))
        if engine is None:
            from crew.store.database import create_engine

            engine = create_engine(database_url)
        return cls(EngineBackend(engine))

    @property
    def dialect(self) -> str:
        return self._backend.dialect

    async def close(self) -> None:
        await self._backend.close()

    async def ping(self) -> None:
        """Raise DatabaseUnavailableError unless a trivial query answers."""
        await self._backend.batch([("SELECT 1 AS one", {})])

    async def schema_revision(self) -> str | None:
        """The revision in `alembic_version` (None: no crew schema), read directly."""
        return await self._backend.schema_revision()

    # ---- what the commands read -------------------------------------------------------

    async def resolve_run_id(self, prefix: str) -> str:
        """The run id `prefix` names: an exact id wins, otherwise a unique prefix."""
        if not prefix:
            raise NotFoundError(f"no run matches {prefix!r}")
        # substr, not LIKE: LIKE is case-insensitive on SQLite and `_` is a wildcard.
        exact, matching = await self._backend.batch(
            [
                ("SELECT id FROM runs WHERE id = :id", {"id": prefix}),
                (
                    "SELECT id FROM runs WHERE substr(id, 1, :n) = :prefix ORDER BY id "
                    "LIMIT :limit",
                    {"n": len(prefix), "prefix": prefix, "limit": AMBIGUOUS_SHOWN + 1},
                ),
            ]
        )
        if exact:
            return prefix
        return only_match(prefix, [str(row["id"]) for row in matching])

    async def recent_runs(
        self, status: str | None, limit: int
    ) -> tuple[list[RunRecord], dict[str, dict[str, int]]]:
        """The newest runs (ties on created_at broken by id) and their node counts."""
        page, counts = await self.list_runs(
            RunFilters(status=status), [Order("created_at", descending=True)], limit, 0
        )
        return page.items, counts

    async def run_contents(self, run_id: str) -> RunContents | None:
        """The run, all its nodes and all its artifacts (with content), in one snapshot."""
        runs, nodes, artifacts = await self._backend.batch(
            [
                (_RUN_BY_ID, {"id": run_id}, run_record),
                (
                    f"SELECT {NODE_COLUMNS} FROM nodes WHERE run_id = :id ORDER BY position, key",
                    {"id": run_id},
                    node_record,
                ),
                (
                    f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE run_id = :id "
                    "ORDER BY created_at, path",
                    {"id": run_id},
                    artifact_record,
                ),
            ]
        )
        return RunContents(runs[0], nodes, artifacts) if runs else None

    async def run_and_events(
        self, run_id: str, after_id: int | None, limit: int
    ) -> tuple[RunRecord | None, list[EventRecord]]:
        """The run, then its events after the cursor in id order, in one snapshot: when
        the run is finished, every event it wrote is in the list (or after it)."""
        where = Where()
        where.add("run_id = :run_id", run_id=run_id)
        if after_id is not None:
            where.add("id > :after_id", after_id=after_id)
        runs, events = await self._backend.batch(
            [
                (_RUN_BY_ID, {"id": run_id}, run_record),
                (
                    f"SELECT {EVENT_COLUMNS} FROM events {where.sql()} ORDER BY id LIMIT :limit",
                    {**where.params, "limit": limit},
                    event_record,
                ),
            ]
        )
        return (runs[0] if runs else None), events

    # ---- runs -----------------------------------------------------------------------

    async def list_runs(
        self, filters: RunFilters, orders: Sequence[Order], limit: int, offset: int
    ) -> tuple[Page[RunRecord], dict[str, dict[str, int]]]:
        """A page of runs, its total, and node counts per status for the runs on it."""
        where = Where()
        if filters.status is not None:
            where.add("status = :status", status=filters.status)
        if filters.title_contains:
            where.add(
                "lower(title) LIKE :title ESCAPE '\\'", title=like_pattern(filters.title_contains)
            )
        if filters.started_from is not None:
            where.add("started_at >= :s_from", s_from=self._ts(filters.started_from))
        if filters.started_to is not None:
            where.add("started_at <= :s_to", s_to=self._ts(filters.started_to))
        # One statement (one snapshot, one round trip): the page, with the filtered total
        # (an uncorrelated subquery, evaluated once) and each run's node counts per status.
        group_object = "json_group_object" if self.dialect == "sqlite" else "json_object_agg"
        page_sql = (
            f"SELECT {RUN_COLUMNS}, (SELECT count(*) FROM runs {where.sql()}) AS page_total, "
            f"(SELECT {group_object}(status, n) FROM (SELECT status, count(*) AS n FROM nodes "
            "WHERE nodes.run_id = runs.id GROUP BY status) AS per_status) AS node_counts "
            f"FROM runs {where.sql()} {order_sql(orders)} LIMIT :limit OFFSET :offset"
        )
        params = {**where.params, "limit": limit, "offset": offset}
        rows = (await self._backend.batch([(page_sql, params, _run_with_counts)]))[0]
        if rows:
            total = rows[0][1]
        elif offset:
            counted = await self._backend.batch(
                [(f"SELECT count(*) AS n FROM runs {where.sql()}", where.params)]
            )
            total = int(counted[0][0]["n"])
        else:
            total = 0
        return Page([run for run, _, _ in rows], total), {run.id: c for run, _, c in rows}

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = (await self._backend.batch([(_RUN_BY_ID, {"id": run_id}, run_record)]))[0]
        return rows[0] if rows else None

    async def run_detail(self, run_id: str) -> RunDetail | None:
        """The run with its node counts per status and artifact and event totals."""
        run_rows, nodes, artifacts = await self._backend.batch(
            [
                (_RUN_BY_ID, {"id": run_id}, run_record),
                (
                    "SELECT status, count(*) AS n FROM nodes WHERE run_id = :id GROUP BY status",
                    {"id": run_id},
                ),
                ("SELECT count(*) AS n FROM artifacts WHERE run_id = :id", {"id": run_id}),
            ]
        )
        if not run_rows:
            return None
        run = run_rows[0]
        events_total = await self._event_total(run_id, EventFilters(), run.status)
        return RunDetail(
            run=run,
            node_counts={row["status"]: int(row["n"]) for row in nodes},
            artifacts_total=int(artifacts[0]["n"]),
            events_total=events_total,
        )

    async def run_status(self, run_id: str) -> str | None:
        rows = (await self._backend.batch([(_STATUS, {"id": run_id})]))[0]
        return str(rows[0]["status"]) if rows else None

    # ---- nodes and artifacts --------------------------------------------------------

    async def list_nodes(
        self,
        run_id: str,
        filters: NodeFilters,
        orders: Sequence[Order],
        limit: int,
        offset: int,
    ) -> Page[NodeRecord] | None:
        """A page of a run's nodes; None when the run does not exist."""
        where = Where()
        where.add("run_id = :run_id", run_id=run_id)
        for name in ("status", "key", "role"):
            value = getattr(filters, name)
            if value is not None:
                where.add(f"{name} = :{name}", **{name: value})
        if filters.title_contains:
            where.add(
                "lower(title) LIKE :title ESCAPE '\\'", title=like_pattern(filters.title_contains)
            )
        orders = orders or [Order("position"), Order("key")]
        status, rows, count = await self._backend.batch(
            [
                (_STATUS, {"id": run_id}),
                (
                    f"SELECT {NODE_COLUMNS} FROM nodes {where.sql()} {order_sql(orders)} "
                    "LIMIT :limit OFFSET :offset",
                    {**where.params, "limit": limit, "offset": offset},
                    node_record,
                ),
                (f"SELECT count(*) AS n FROM nodes {where.sql()}", where.params),
            ]
        )
        if not status:
            return None
        return Page(rows, int(count[0]["n"]))

    async def get_node(self, node_id: str) -> NodeRecord | None:
        sql = f"SELECT {NODE_COLUMNS} FROM nodes WHERE id = :id"
        rows = (await self._backend.batch([(sql, {"id": node_id}, node_record)]))[0]
        return rows[0] if rows else None

    async def list_artifacts(
        self,
        *,
        run_id: str | None = None,
        node_id: str | None = None,
        type: str | None = None,
        orders: Sequence[Order] = (),
        limit: int = 50,
        offset: int = 0,
    ) -> Page[ArtifactRecord] | None:
        """A page of a run's or a node's artifacts; None when that run or node does not exist."""
        where = Where()
        if run_id is not None:
            where.add("run_id = :run_id", run_id=run_id)
            owner: Query = (_STATUS, {"id": run_id})
        else:
            where.add("node_id = :node_id", node_id=node_id)
            owner = ("SELECT id FROM nodes WHERE id = :id", {"id": node_id})
        if type is not None:
            where.add("type = :type", type=type)
        orders = orders or [Order("created_at")]
        exists, rows, count = await self._backend.batch(
            [
                owner,
                (
                    f"SELECT {ARTIFACT_COLUMNS} FROM artifacts {where.sql()} {order_sql(orders)} "
                    "LIMIT :limit OFFSET :offset",
                    {**where.params, "limit": limit, "offset": offset},
                    artifact_record,
                ),
                (f"SELECT count(*) AS n FROM artifacts {where.sql()}", where.params),
            ]
        )
        if not exists:
            return None
        return Page(rows, int(count[0]["n"]))

    async def get_artifact(self, artifact_id: str) -> ArtifactRecord | None:
        sql = f"SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE id = :id"
        rows = (await self._backend.batch([(sql, {"id": artifact_id}, artifact_record)]))[0]
        return rows[0] if rows else None

    # ---- events ---------------------------------------------------------------------

    def _event_where(self, run_id: str, filters: EventFilters) -> Where:
        where = Where()
        where.add("run_id = :run_id", run_id=run_id)
        for name in ("type", "level", "node_key"):
            value = getattr(filters, name)
            if value is not None:
                where.add(f"{name} = :{name}", **{name: value})
        if filters.q:
            where.add("lower(message) LIKE :q ESCAPE '\\'", q=like_pattern(filters.q))
        if filters.ts_from is not None:
            where.add("timestamp >= :ts_from", ts_from=self._ts(filters.ts_from))
        if filters.ts_to is not None:
            where.add("timestamp <= :ts_to", ts_to=self._ts(filters.ts_to))
        return where

    async def list_events(
        self,
        run_id: str,
        filters: EventFilters,
        *,
        after_id: int | None,
        limit: int,
        offset: int = 0,
        descending: bool = False,
        with_total: bool = True,
    ) -> tuple[str | None, Page[EventRecord]]:
        """(the run's status or None if no such run, a page of its events by id)."""
        where = self._event_where(run_id, filters)
        count_where = Where(list(where.clauses), dict(where.params))
        if after_id is not None:
            where.add("id > :after_id", after_id=after_id)
        direction = " DESC" if descending else ""
        # The run's status rides along each row; the page and its total are read in one
        # batch (one snapshot, one round trip when cached). An empty page is read again
        # with the status in one snapshot: a terminal status then means every event is
        # in the page (a follower stops on it).
        page_query: Query = (
            f"SELECT {EVENT_COLUMNS}, (SELECT status FROM runs WHERE id = :run_id) "
            f"AS run_status FROM events {where.sql()} ORDER BY id{direction} "
            "LIMIT :limit OFFSET :offset",
            {**where.params, "limit": limit, "offset": offset},
            _event_with_status,
        )
        cached: tuple[int, int] | None = None
        if not with_total:
            page, counted = (await self._backend.batch([page_query]))[0], None
        else:
            if after_id is None:
                total_query, cached = self._total_query(run_id, filters, count_where)
            else:
                total_query = (f"SELECT count(*) AS n FROM events {where.sql()}", where.params)
            page, counted = await self._backend.batch([page_query, total_query])
        if page:
            found: str | None = page[0][0]
        else:  # the status and the (still empty?) page again, in one snapshot
            status_rows, page = await self._backend.batch([(_STATUS, {"id": run_id}), page_query])
            found = str(status_rows[0]["status"]) if status_rows else None
        if found is None:
            return None, Page([], 0)
        status: str = found
        rows = [event for _, event in page]
        if counted is None:
            total = -1
        elif after_id is None:
            topped = self._total_from(run_id, filters, status, counted[0], cached)
            if topped is None:
                topped = await self._event_total(run_id, filters, status, count_where)
            total = topped
        else:
            total = int(counted[0]["n"])
        return status, Page(rows, total)

    async def _event_total(
        self, run_id: str, filters: EventFilters, status: str, where: Where | None = None
    ) -> int:
        """Count a run's matching events; a finished run's count is cached and topped up."""
        where = where or self._event_where(run_id, filters)
        while True:
            query, cached = self._total_query(run_id, filters, where)
            row = (await self._backend.batch([query]))[0][0]
            total = self._total_from(run_id, filters, status, row, cached)
            if total is not None:
                return total

    def _total_query(
        self, run_id: str, filters: EventFilters, where: Where
    ) -> tuple[Query, tuple[int, int] | None]:
        """The query counting a run's matching events, and the cached count it tops up.

        Events are append-only and their ids increase, so once a run is finished (no
        writer in flight) the count up to the largest id seen cannot change, and only
        rows above it need counting later (a resumed run's new events).
        """
        with self._lock:
            cached = self._event_totals.get((run_id, filters))
        latest = "(SELECT max(id) FROM events WHERE run_id = :run_id) AS m"
        if cached is None:
            sql = f"SELECT (SELECT count(*) FROM events {where.sql()}) AS n, {latest}"
            return (sql, where.params), None
        extra = Where(list(where.clauses), dict(where.params))
        extra.add("id > :top", top=cached[0])
        sql = f"SELECT (SELECT count(*) FROM events {extra.sql()}) AS n, {latest}"
        return (sql, extra.params), cached

    def _total_from(
        self,
        run_id: str,
        filters: EventFilters,
        status: str,
        row: dict[str, Any],
        cached: tuple[int, int] | None,
    ) -> int | None:
        """The total from `_total_query`'s row; None when the run was deleted and its id
        reused (the cached count is dropped: count again)."""
        key = (run_id, filters)
        new_top = row["m"]
        if cached is not None and new_top is not None and int(new_top) < cached[0]:
            with self._lock:
                self._event_totals.pop(key, None)
            return None
        total = (cached[1] if cached is not None else 0) + int(row["n"])
        if status in TERMINAL_RUN_STATUSES and new_top is not None:
            with self._lock:
                if len(self._event_totals) > 4096:
                    self._event_totals.clear()
                self._event_totals[key] = (int(new_top), total)
        return total

    def _ts(self, value: datetime) -> Any:
        """A query timestamp as this backend compares it: the instant, in UTC."""
        instant = value.astimezone(UTC)
        if self._backend.dialect == "sqlite":
            # The format SQLAlchemy's SQLite dialect stores, so text order is time order.
            return instant.strftime("%Y-%m-%d %H:%M:%S.%f")
        return instant


def _run_with_counts(row: dict[str, Any]) -> tuple[RunRecord, int, dict[str, int]]:
    """A page row: the run, the page's total, its node counts per status."""
    total = int(row.pop("page_total"))
    counts = row.pop("node_counts")
    if isinstance(counts, str | bytes):
        counts = json.loads(counts)
    return run_record(row), total, {k: int(v) for k, v in (counts or {}).items()}


def _event_with_status(row: dict[str, Any]) -> tuple[str | None, EventRecord]:
    """An event page row: the run's status, the event."""
    status = row.pop("run_status")
    return status, event_record(row)


_RUN_BY_ID = f"SELECT {RUN_COLUMNS} FROM runs WHERE id = :id"
_STATUS = "SELECT status FROM runs WHERE id = :id"


@asynccontextmanager
async def open_reads(settings: Any, *, connections: int = 1) -> AsyncIterator[ReadStore]:
    """A read store on DATABASE_URL once its schema is the code's (what a command uses).

    On a current database nothing but the driver is loaded: the revision is read from
    `alembic_version` directly. A PostgreSQL schema that is behind is refused with the
    message `crew db upgrade` answers; a SQLite file that is missing or behind takes the
    repository's full open path once (it creates or upgrades the file), as does a URL
    only the async engine takes.
    """
    url: str = settings.database_url
    target = parse(url)
    if target is None:
        from crew.store.database import open_repository

        async with open_repository(settings) as repo:
            yield ReadStore(EngineBackend(repo.engine))
        return
    if target.sqlite_path is not None and not Path(target.sqlite_path).exists():
        await _full_open(settings)
    store = ReadStore.open(url, connections=connections)
    try:
        revision = await store.schema_revision()
        if revision != SCHEMA_HEAD:
            if target.dialect != "sqlite":
                state = "has no crew schema" if revision is None else f"is at revision {revision}"
                raise MigrationRequiredError(
                    f"the database {target.display} {state}, this crew needs {SCHEMA_HEAD}: "
                    "run `crew db upgrade`"
                )
            await _full_open(settings)
        yield store
    finally:
        await store.close()


async def _full_open(settings: Any) -> None:
    """Open (create, upgrade) the database the way the engine does, then let it go."""
    from crew.store.database import open_repository

    async with open_repository(settings):
        pass
