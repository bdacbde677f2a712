"""The repository on SQLite and PostgreSQL: every method, and the guarantees callers rely on."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from sqlalchemy.exc import IntegrityError, StatementError

from crew.domain.errors import (
    AmbiguousIdError,
    ConfigError,
    ConflictError,
    DatabaseUnavailableError,
    NotFoundError,
)
from crew.settings import Settings
from crew.store import migrate
from crew.store.database import create_engine, open_repository
from crew.store.leases import Fence
from crew.store.reads import ReadStore
from crew.store.records import NewArtifact, NewEvent, NewNode, RunRecord
from crew.store.repository import Repository


@pytest.fixture
async def repo(db_url: str) -> AsyncIterator[Repository]:
    """A repository on a schema at head (SQLite upgrades itself; PostgreSQL is upgraded).

    The upgrade runs in a thread: the migration API is synchronous and starts its own loop.
    """
    if db_url.startswith("postgresql"):
        await asyncio.to_thread(migrate.upgrade, db_url)
    async with open_repository(Settings(database_url=db_url)) as repository:
        yield repository


T = TypeVar("T")


async def read(repo: Repository, fetch: Callable[[ReadStore], Awaitable[T]]) -> T:
    """What the read path (crew/store/reads.py) answers on the repository's database."""
    store = ReadStore.open(repo.engine.url.render_as_string(hide_password=False), repo.engine)
    try:
        return await fetch(store)
    finally:
        await store.close()


def node(key: str, position: int, **extra: Any) -> NewNode:
    values: dict[str, Any] = {
        "key": key,
        "position": position,
        "title": f"Title {key}",
        "type": "task",
        "role": "Writer_FR",
        "deps": [],
        "spec": {"id": key, "title": f"Title {key}"},
        "status": "pending",
    }
    values.update(extra)
    return NewNode(**values)


async def make_run(repo: Repository, run_id: str = "run-1", **extra: Any) -> RunRecord:
    values: dict[str, Any] = {
        "run_id": run_id,
        "title": "Rapport 80p",
        "status": "queued",
        "options": {"max_concurrency": 2, "nested": {"a": [1, 2]}},
        "task_spec": {"title": "Rapport 80p", "plan": [{"id": "n1", "title": "x"}]},
        "request_id": "req-1",
        "nodes": [node("n1", 0), node("n2", 1, deps=["n1"])],
    }
    values.update(extra)
    await repo.create_run(**values)
    record = await repo.get_run(run_id)
    assert record is not None
    return record


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


# ---- runs --------------------------------------------------------------------------------


async def test_create_and_get_run(repo: Repository) -> None:
    run = await make_run(repo)
    assert run.id == "run-1"
    assert run.title == "Rapport 80p"
    assert run.status == "queued"
    assert run.request_id == "req-1"
    assert run.options == {"max_concurrency": 2, "nested": {"a": [1, 2]}}
    assert run.task_spec["plan"] == [{"id": "n1", "title": "x"}]
    assert (run.input_tokens, run.output_tokens, run.cost_usd, run.cost_unknown) == (0, 0, 0, False)
    assert run.started_at is None and run.ended_at is None and run.owner is None
    assert_utc(run.created_at)
    assert_utc(run.updated_at)
    assert abs(run.created_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert await repo.get_run("missing") is None


async def test_run_progress_matches_the_run(repo: Repository) -> None:
    await make_run(repo)
    await repo.add_run_usage("run-1", 7, 3, None)
    await repo.update_run("run-1", cancel_requested_at=datetime.now(UTC))
    run = await repo.get_run("run-1")
    progress = await repo.get_run_progress("run-1")
    assert run is not None and progress is not None
    for name in progress.__dataclass_fields__:
        assert getattr(progress, name) == getattr(run, name), name
    assert (progress.input_tokens, progress.output_tokens, progress.cost_unknown) == (7, 3, True)
    assert_utc(progress.cancel_requested_at)
    assert await repo.get_run_progress("missing") is None


async def test_taken_run_id_is_a_conflict(repo: Repository) -> None:
    await make_run(repo)
    with pytest.raises(ConflictError, match="run-1"):
        await make_run(repo)


async def test_node_keys_are_unique_per_run(repo: Repository) -> None:
    with pytest.raises(ConflictError, match="duplicate node keys"):
        await make_run(repo, nodes=[node("n1", 0), node("n1", 1)])
    assert await repo.get_run("run-1") is None  # the whole create was rolled back
    await make_run(repo)
    await make_run(repo, run_id="run-2")  # the same keys in another run are fine
    first, second = await repo.list_nodes("run-1")
    with pytest.raises(IntegrityError):
        await repo.update_node(second.id, key=first.key)


async def test_update_run_touches_only_named_columns(repo: Repository) -> None:
    before = await make_run(repo)
    started = datetime.now(UTC)
    assert await repo.update_run("run-1", status="running", started_at=started)
    after = await repo.get_run("run-1")
    assert after is not None
    assert after.status == "running"
    assert after.started_at == started
    assert after.updated_at >= before.updated_at
    unchanged = ("title", "request_id", "options", "task_spec", "created_at", "error", "owner")
    for name in unchanged:
        assert getattr(after, name) == getattr(before, name), name
    assert not await repo.update_run("missing", status="failed")


async def test_update_run_refuses_unknown_columns(repo: Repository) -> None:
    await make_run(repo)
    with pytest.raises(ValueError, match="statuss"):
        await repo.update_run("run-1", statuss="running")
    with pytest.raises(ValueError, match="id"):
        await repo.update_run("run-1", id="other")


async def test_update_run_compare_and_set(repo: Repository) -> None:
    await make_run(repo)
    assert await repo.update_run("run-1", when_status="queued", status="running")
    assert not await repo.update_run("run-1", when_status="queued", status="canceled")
    assert await repo.update_run("run-1", when_status=["running", "queued"], status="completed")
    run = await repo.get_run("run-1")
    assert run is not None and run.status == "completed"


async def test_naive_datetimes_are_refused(repo: Repository) -> None:
    await make_run(repo)
    with pytest.raises((ValueError, StatementError), match="naive"):
        await repo.update_run("run-1", started_at=datetime(2024, 1, 1, 12, 0))


async def test_other_time_zones_come_back_as_utc(repo: Repository) -> None:
    await make_run(repo)
    paris_summer = timezone(timedelta(hours=2))
    await repo.update_run("run-1", ended_at=datetime(2024, 6, 1, 14, 30, tzinfo=paris_summer))
    run = await repo.get_run("run-1")
    assert run is not None
    assert run.ended_at == datetime(2024, 6, 1, 12, 30, tzinfo=UTC)
    assert_utc(run.ended_at)


async def test_run_usage_is_incremented_in_place(repo: Repository) -> None:
    await make_run(repo)
    await repo.add_run_usage("run-1", 100, 20, 0.5)
    await repo.add_run_usage("run-1", 10, 2, 0.25)
    run = await repo.get_run("run-1")
    assert run is not None
    assert (run.input_tokens, run.output_tokens, run.cost_usd, run.cost_unknown) == (
        110,
        22,
        0.75,
        False,
    )
    await repo.add_run_usage("run-1", 1, 1, None)
    run = await repo.get_run("run-1")
    assert run is not None
    assert (run.input_tokens, run.cost_usd, run.cost_unknown) == (111, 0.75, True)


async def test_list_and_count_runs(repo: Repository) -> None:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    for index, status in enumerate(["completed", "failed", "completed"]):
        await make_run(repo, run_id=f"r{index}")
        await repo.update_run(f"r{index}", status=status, created_at=base + timedelta(hours=index))
    runs = await repo.list_runs()
    assert [r.id for r in runs] == ["r2", "r1", "r0"]
    assert [r.id for r in await repo.list_runs(status="completed")] == ["r2", "r0"]
    assert [r.id for r in await repo.list_runs(limit=1, offset=1)] == ["r1"]
    assert await repo.count_runs() == 3
    assert await repo.count_runs("completed") == 2
    assert await repo.count_runs("running") == 0


async def test_list_runs_breaks_created_at_ties_by_id(repo: Repository) -> None:
    same = datetime(2024, 1, 1, tzinfo=UTC)
    for run_id in ["a", "c", "b"]:
        await make_run(repo, run_id=run_id)
        await repo.update_run(run_id, created_at=same)
    assert [r.id for r in await repo.list_runs()] == ["c", "b", "a"]


async def test_resolve_run_id(repo: Repository) -> None:
    for run_id in ["abc", "abcd", "abce", "xy_z", "Q1"]:
        await make_run(repo, run_id=run_id)
    assert await repo.resolve_run_id("abc") == "abc"  # an exact id wins over prefixes
    assert await repo.resolve_run_id("abcd") == "abcd"
    assert await repo.resolve_run_id("x") == "xy_z"
    with pytest.raises(AmbiguousIdError) as ambiguous:
        await repo.resolve_run_id("ab")
    assert ambiguous.value.problems == ["abc", "abcd", "abce"]
    with pytest.raises(NotFoundError):
        await repo.resolve_run_id("zz")
    with pytest.raises(NotFoundError):
        await repo.resolve_run_id("xyz")  # `_` is not a wildcard
    with pytest.raises(NotFoundError):
        await repo.resolve_run_id("q")  # case-sensitive on both backends
    with pytest.raises(NotFoundError):
        await repo.resolve_run_id("")


async def test_ambiguous_prefix_lists_at_most_five(repo: Repository) -> None:
    for index in range(8):
        await make_run(repo, run_id=f"run{index}", nodes=[])
    with pytest.raises(AmbiguousIdError) as ambiguous:
        await repo.resolve_run_id("run")
    assert ambiguous.value.problems == [f"run{i}" for i in range(5)]
    assert "and more" in ambiguous.value.message


# ---- nodes -------------------------------------------------------------------------------


async def test_nodes_are_listed_by_position(repo: Repository) -> None:
    await make_run(repo, nodes=[node("late", 2), node("early", 0), node("mid", 1)])
    nodes = await repo.list_nodes("run-1")
    assert [n.key for n in nodes] == ["early", "mid", "late"]
    first = nodes[0]
    assert len(first.id) == 36 and first.id.count("-") == 4
    assert first.run_id == "run-1"
    assert first.spec == {"id": "early", "title": "Title early"}
    assert first.deps == []
    assert (first.attempts, first.input_tokens, first.cost_usd) == (0, 0, 0.0)
    assert_utc(first.created_at)
    assert await read(repo, lambda r: r.get_node(first.id)) == first
    assert await repo.get_node_by_key("run-1", "mid") == nodes[1]
    assert await read(repo, lambda r: r.get_node("missing")) is None


async def test_update_node_and_usage(repo: Repository) -> None:
    await make_run(repo)
    target = (await repo.list_nodes("run-1"))[1]
    now = datetime.now(UTC)
    assert await repo.update_node(target.id, status="running", attempts=1, started_at=now)
    assert not await repo.update_node(target.id, when_status="pending", status="failed")
    await repo.add_node_usage(target.id, 30, 10, 0.125)
    await repo.add_node_usage(target.id, 5, 5, 0.125)
    updated = await read(repo, lambda r: r.get_node(target.id))
    assert updated is not None
    assert (updated.status, updated.attempts, updated.started_at) == ("running", 1, now)
    assert (updated.input_tokens, updated.output_tokens, updated.cost_usd) == (35, 15, 0.25)
    assert (updated.deps, updated.role, updated.checksum) == (["n1"], "Writer_FR", None)
    await repo.add_node_usage(target.id, 1, 1, None)
    await repo.add_node_usage(target.id, 1, 1, 1.0)
    unknown = await read(repo, lambda r: r.get_node(target.id))
    assert unknown is not None
    assert unknown.cost_usd is None  # one unknown price makes the node's cost unknown
    assert unknown.input_tokens == 37


async def test_node_counts(repo: Repository) -> None:
    await make_run(repo, nodes=[node("a", 0), node("b", 1), node("c", 2)])
    await make_run(repo, run_id="run-2", nodes=[])
    first = (await repo.list_nodes("run-1"))[0]
    await repo.update_node(first.id, status="completed")
    _, counts = await read(repo, lambda r: r.recent_runs(None, 10))
    assert counts == {"run-1": {"pending": 2, "completed": 1}, "run-2": {}}


# ---- artifacts and events ----------------------------------------------------------------


async def test_artifacts(repo: Repository) -> None:
    await make_run(repo)
    n1 = (await repo.list_nodes("run-1"))[0]
    markdown = await repo.add_artifact(
        run_id="run-1",
        node_id=n1.id,
        type="markdown",
        path="run-1/nodes/n1/artifact_n1.md",
        content="# Title",
        summary="a title",
        sha256="0" * 64,
        size=7,
    )
    sidecar = await repo.add_artifact(
        run_id="run-1",
        node_id=None,
        type="sidecar",
        path="run-1/supervisor.llm.json",
        content=None,
        summary=None,
        sha256="1" * 64,
        size=120,
    )
    assert await read(repo, lambda r: r.get_artifact(markdown.id)) == markdown
    assert await read(repo, lambda r: r.get_artifact("missing")) is None
    assert_utc(markdown.created_at)
    assert {a.id for a in await repo.list_artifacts(run_id="run-1")} == {markdown.id, sidecar.id}
    assert await repo.list_artifacts(node_id=n1.id) == [markdown]
    assert await repo.list_artifacts(run_id="run-1", type="sidecar") == [sidecar]
    assert await repo.list_artifacts(run_id="other") == []


def markdown_of(node_id: str, text: str) -> NewArtifact:
    return NewArtifact(
        run_id="run-1",
        node_id=node_id,
        type="markdown",
        path="run-1/nodes/n1/artifact_n1.md",
        content=text,
        summary=None,
        sha256=text[0] * 64,
        size=len(text),
    )


async def test_an_artifact_recorded_again_replaces_the_row_of_its_file(
    repo: Repository,
) -> None:
    await make_run(repo)
    n1 = (await repo.list_nodes("run-1"))[0]
    first = await repo.add_artifact(**dataclasses.asdict(markdown_of(n1.id, "1 first")))
    second = await repo.add_artifact(**dataclasses.asdict(markdown_of(n1.id, "2 second")))
    assert await read(repo, lambda r: r.get_artifact(first.id)) is None
    assert await repo.list_artifacts(run_id="run-1") == [second]

    # The engine's buffered writer replaces rows the same way, also twice in one group.
    async with repo.bulk() as writer:
        await writer.add_artifacts([markdown_of(n1.id, "3 third")])
        (last,) = await writer.add_artifacts([markdown_of(n1.id, "4 fourth")])
    (row,) = await repo.list_artifacts(run_id="run-1")
    assert (row.id, row.content) == (last.id, "4 fourth")

    # The same path in another run is another file.
    await make_run(repo, run_id="run-2")
    other = dataclasses.replace(markdown_of(n1.id, "5 fifth"), run_id="run-2", node_id=None)
    await repo.add_artifacts([other])
    assert len(await repo.list_artifacts(run_id="run-1")) == 1


async def test_events_are_monotonic_and_paged_by_cursor(repo: Repository) -> None:
    await make_run(repo)
    n1 = (await repo.list_nodes("run-1"))[0]
    first = await repo.add_event(
        run_id="run-1",
        type="RUN_STARTED",
        level="info",
        message="run started",
        payload={"run_id": "run-1"},
        request_id="req-1",
    )
    second = await repo.add_event(
        run_id="run-1",
        type="NODE_STARTED",
        level="info",
        message="n1 started",
        payload={"run_id": "run-1", "node_key": "n1"},
        node_id=n1.id,
        node_key="n1",
    )
    assert second > first
    await repo.add_events(
        [NewEvent(run_id="run-1", type="LLM_CALL", level="info", message=str(i)) for i in range(5)]
    )
    await repo.add_events([])
    events = await repo.list_events("run-1")
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 7
    assert ids[:2] == [first, second]
    assert [e.message for e in events[2:]] == ["0", "1", "2", "3", "4"]
    assert events[0].payload == {"run_id": "run-1"} and events[0].request_id == "req-1"
    assert (events[1].node_id, events[1].node_key) == (n1.id, "n1")
    for event in events:
        assert_utc(event.timestamp)
    page = await repo.list_events("run-1", after_id=second, limit=2)
    assert [e.message for e in page] == ["0", "1"]
    assert await repo.list_events("run-1", after_id=ids[-1]) == []
    assert await repo.last_event_id("run-1") == ids[-1]
    assert await repo.last_event_id("other") is None


async def test_event_ids_keep_growing_after_deletes(repo: Repository) -> None:
    await make_run(repo, run_id="a", nodes=[])
    last = await repo.add_event(run_id="a", type="X", level="info", message="m", payload={})
    await repo.delete_run("a")
    await make_run(repo, run_id="b", nodes=[])
    again = await repo.add_event(run_id="b", type="X", level="info", message="m", payload={})
    assert again > last


async def test_delete_run_cascades(repo: Repository) -> None:
    await make_run(repo)
    await make_run(repo, run_id="keep")
    n1 = (await repo.list_nodes("run-1"))[0]
    artifact = await repo.add_artifact(
        run_id="run-1",
        node_id=n1.id,
        type="markdown",
        path="p",
        content="c",
        summary=None,
        sha256="0" * 64,
        size=1,
    )
    await repo.add_event(run_id="run-1", type="X", level="info", message="m", payload={})
    await repo.add_event(run_id="keep", type="X", level="info", message="m", payload={})
    assert await repo.delete_run("run-1")
    assert not await repo.delete_run("run-1")
    assert await repo.get_run("run-1") is None
    assert await read(repo, lambda r: r.get_node(n1.id)) is None
    assert await read(repo, lambda r: r.get_artifact(artifact.id)) is None
    assert await repo.list_events("run-1") == []
    assert len(await repo.list_nodes("keep")) == 2
    assert len(await repo.list_events("keep")) == 1


# ---- transactions and ownership ----------------------------------------------------------


async def test_batch_commits_at_exit(repo: Repository) -> None:
    async with repo.batch() as writer:
        await writer.create_run(
            run_id="run-1",
            title="t",
            status="queued",
            options={},
            task_spec={},
            request_id=None,
            nodes=[node("n1", 0)],
        )
        await writer.update_run("run-1", status="running")
        await writer.add_event(run_id="run-1", type="X", level="info", message="m", payload={})
        # Reads inside the batch see its own writes.
        inside = await writer.get_run("run-1")
        assert inside is not None and inside.status == "running"
    run = await repo.get_run("run-1")
    assert run is not None and run.status == "running"
    assert len(await repo.list_events("run-1")) == 1


async def test_batch_rolls_back_on_exception(repo: Repository) -> None:
    await make_run(repo)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with repo.batch() as writer:
            await writer.update_run("run-1", status="running", error="partial")
            await writer.add_event(run_id="run-1", type="X", level="info", message="m", payload={})
            await writer.add_run_usage("run-1", 5, 5, 1.0)
            raise Boom
    run = await repo.get_run("run-1")
    assert run is not None
    assert (run.status, run.error, run.input_tokens) == ("queued", None, 0)
    assert await repo.list_events("run-1") == []


async def test_claim_renew_release(repo: Repository) -> None:
    """Times passed to the lease queries only say how long a lease lasts: the store's
    clock (the database server's on PostgreSQL) decides when it starts and ends."""
    await make_run(repo)
    t0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)  # a caller's clock far in the past
    lease = timedelta(seconds=15)
    first = await repo.claim_run("run-1", "worker-a", t0, t0 + lease)
    assert first is not None and first.generation == 1 and first.previous_owner is None
    run = await repo.get_run("run-1")
    assert run is not None and run.lease_expires_at is not None
    assert run.lease_expires_at > datetime.now(UTC) + timedelta(seconds=5)  # not 2024
    # A live lease keeps the run, whatever the claimer's clock says; its holder may
    # claim again (a new generation).
    far = datetime.now(UTC) + timedelta(days=1)
    assert await repo.claim_run("run-1", "worker-b", far, far + lease) is None
    assert await repo.claim_next_run("worker-b", far, far + lease) is None
    again = await repo.claim_run("run-1", "worker-a", t0, t0 + lease)
    assert again is not None and again.generation == 2
    fence = Fence("run-1", "worker-a", 2)
    held, cancel = await repo.renew_lease(fence, t0, t0 + 2 * lease)
    assert held and cancel is None
    stale_fence = Fence("run-1", "worker-a", 1)
    assert (await repo.renew_lease(stale_fence, t0, t0 + lease))[0] is False
    # A lease renewed for a negative time has run out: another executor takes over.
    assert (await repo.renew_lease(fence, t0, t0 - lease))[0]
    taken = await repo.claim_run("run-1", "worker-b", t0, t0 + lease)
    assert taken is not None and taken.generation == 3 and taken.previous_owner == "worker-a"
    assert (await repo.renew_lease(fence, t0, t0 + lease))[0] is False
    assert not await repo.holds_lease(fence)
    assert not await repo.release_run("run-1", "worker-a")
    assert await repo.release_run("run-1", "worker-b", 3)
    released = await repo.get_run("run-1")
    assert released is not None and released.owner is None and released.lease_expires_at is None
    assert await repo.claim_run("missing", "worker-a", t0, t0 + lease) is None


# ---- engines -----------------------------------------------------------------------------


def test_unsupported_scheme_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL") as error:
        create_engine("mysql+aiomysql://localhost/crew")
    assert "sqlite+aiosqlite" in str(error.value) and "postgresql+asyncpg" in str(error.value)
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        create_engine("not a url")


async def test_unreachable_postgres_is_unavailable() -> None:
    # Port 1 on loopback refuses at once: no network involved.
    settings = Settings(database_url="postgresql+asyncpg://crew:secret@127.0.0.1:1/crew")
    with pytest.raises(DatabaseUnavailableError) as error:
        async with open_repository(settings):
            pass
    assert "secret" not in str(error.value)
    assert "Traceback" not in str(error.value)


async def test_sqlite_creates_its_folder_and_sets_pragmas(tmp_path: Any) -> None:
    path = tmp_path / "deep" / "er" / "crew.db"
    settings = Settings(database_url=f"sqlite+aiosqlite:///{path}")
    async with open_repository(settings) as repo, repo.engine.connect() as connection:
        pragmas = {
            name: (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
        }
    assert path.is_file()
    assert pragmas == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "busy_timeout": 5000,
        "synchronous": 1,
    }
