"""The read path (crew/store/reads.py) on SQLite and PostgreSQL: the same records as the
repository, id resolution, the schema check without SQLAlchemy or Alembic, and the
plain-parameter conversion that keeps read commands from loading Pydantic."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crew.cli.main import app
from crew.domain.errors import AmbiguousIdError, MigrationRequiredError, NotFoundError
from crew.settings import Settings
from crew.store import SCHEMA_HEAD, migrate
from crew.store.database import open_repository
from crew.store.read_backends import numbered
from crew.store.reads import ReadStore, open_reads
from crew.store.records import NewArtifact, NewEvent, NewNode
from crew.store.repository import Repository
from crew.store.urls import parse

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def repo(db_url: str) -> AsyncIterator[Repository]:
    if db_url.startswith("postgresql"):
        await asyncio.to_thread(migrate.upgrade, db_url)
    async with open_repository(Settings(database_url=db_url)) as repository:
        yield repository


@pytest.fixture
async def reads(repo: Repository, db_url: str) -> AsyncIterator[ReadStore]:
    store = ReadStore.open(db_url, connections=2)
    try:
        yield store
    finally:
        await store.close()


def new_node(key: str, position: int) -> NewNode:
    return NewNode(
        key=key,
        position=position,
        title=f"Title {key}",
        type="task",
        role="Writer_FR",
        deps=[] if position == 0 else ["a"],
        spec={"id": key, "nested": {"x": [1, 2]}},
        status="pending",
    )


async def make_run(repo: Repository, run_id: str) -> None:
    await repo.create_run(
        run_id=run_id,
        title="Rapport",
        status="running",
        options={"max_concurrency": 2},
        task_spec={"title": "Rapport", "plan": [{"id": "a"}, {"id": "b"}]},
        request_id="req-1",
        nodes=[new_node("b", 1), new_node("a", 0)],
        owner="worker-1",
        lease_expires_at=datetime.now(UTC) + timedelta(minutes=1),
    )


async def test_the_same_records_as_the_repository(repo: Repository, reads: ReadStore) -> None:
    await make_run(repo, "run-1")
    await repo.add_run_usage("run-1", 7, 3, None)
    nodes = await repo.list_nodes("run-1")
    await repo.add_artifacts(
        [
            NewArtifact("run-1", nodes[0].id, "markdown", "run-1/a.md", "# A", "A", "0" * 64, 3),
            NewArtifact("run-1", None, "sidecar", "run-1/s.json", "{}", None, "1" * 64, 2),
        ]
    )
    await repo.add_events(
        [
            NewEvent("run-1", "NODE_STARTED", "info", f"m{i}", {"i": i}, node_key="a")
            for i in range(5)
        ]
    )

    contents = await reads.run_contents("run-1")
    assert contents is not None
    assert contents.run == await repo.get_run("run-1")
    assert contents.run.owner == "worker-1" and contents.run.lease_generation == 1
    assert contents.nodes == nodes
    assert [n.key for n in contents.nodes] == ["a", "b"]
    assert contents.artifacts == await repo.list_artifacts(run_id="run-1")
    assert await reads.run_contents("missing") is None

    run, events = await reads.run_and_events("run-1", None, 500)
    assert run == contents.run
    assert events == await repo.list_events("run-1")
    assert all(e.timestamp.utcoffset() == timedelta(0) for e in events)
    _, later = await reads.run_and_events("run-1", events[1].id, 2)
    assert later == events[2:4]
    assert await reads.run_and_events("missing", None, 10) == (None, [])


async def test_recent_runs_newest_first_with_node_counts(
    repo: Repository, reads: ReadStore
) -> None:
    for name in ("r1", "r2", "r3"):
        await make_run(repo, name)
    await repo.update_run("r2", status="completed")
    runs, counts = await reads.recent_runs(None, 2)
    assert runs == await repo.list_runs(limit=2)
    assert counts == {r.id: {"pending": 2} for r in runs}
    completed, _ = await reads.recent_runs("completed", 10)
    assert [r.id for r in completed] == ["r2"]


async def test_resolve_run_id(repo: Repository, reads: ReadStore) -> None:
    for name in ("abc-1", "abc-2", "abd", "ab"):
        await make_run(repo, name)
    assert await reads.resolve_run_id("abd") == "abd"
    assert await reads.resolve_run_id("ab") == "ab"  # an exact id wins over prefixes
    assert await reads.resolve_run_id("abc-2") == "abc-2"
    with pytest.raises(AmbiguousIdError) as ambiguous:
        await reads.resolve_run_id("abc")
    assert ambiguous.value.problems == ["abc-1", "abc-2"]
    for unknown in ("zz", "", "ABD", "a_d"):
        with pytest.raises(NotFoundError):
            await reads.resolve_run_id(unknown)


async def test_schema_revision_is_read_directly(reads: ReadStore) -> None:
    assert await reads.schema_revision() == SCHEMA_HEAD


async def test_a_sqlite_file_behind_is_upgraded_by_the_read_path(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'crew.db'}"
    await asyncio.to_thread(migrate.upgrade, url, "0002")
    async with open_reads(Settings(database_url=url)) as reads:
        assert await reads.schema_revision() == SCHEMA_HEAD
        assert await reads.recent_runs(None, 5) == ([], {})


async def test_a_missing_sqlite_file_is_created(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sub' / 'crew.db'}"
    async with open_reads(Settings(database_url=url)) as reads:
        assert await reads.schema_revision() == SCHEMA_HEAD


@pytest.mark.postgres
async def test_a_postgres_schema_behind_is_refused(pg_url: str) -> None:
    await asyncio.to_thread(migrate.upgrade, pg_url, "0002")
    with pytest.raises(MigrationRequiredError) as refused:
        async with open_reads(Settings(database_url=pg_url)):
            pass
    assert "is at revision 0002" in refused.value.message
    assert "run `crew db upgrade`" in refused.value.message


# ---- without SQLAlchemy or Alembic, seen from a separate process ------------------------

PROBE = """
import json, sys
from crew.cli.main import app
code = None
try:
    app(args=sys.argv[1:], prog_name="crew")
except SystemExit as stop:
    code = stop.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"sqlalchemy", "alembic", "sqlmodel"})
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def probe(url: str, tmp_path: Path, *args: str) -> tuple[dict[str, object], str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "RUNS_ROOT": str(tmp_path / "runs"),
        "PYTHONPATH": str(REPO_ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    last = done.stderr.strip().splitlines()[-1]
    return json.loads(last), done.stdout, done.stderr


@pytest.mark.slow
async def test_read_commands_on_a_current_database_load_no_sqlalchemy(
    repo: Repository, db_url: str, tmp_path: Path
) -> None:
    await make_run(repo, "run-1")
    for args in (
        ("runs", "list", "--json"),
        ("runs", "show", "run", "--json"),
        ("events", "tail", "run-1", "--no-follow", "--json"),
        ("doctor", "--json"),
    ):
        result, stdout, stderr = await asyncio.to_thread(probe, db_url, tmp_path, *args)
        assert result == {"code": 0, "heavy": []}, (args, stderr)
    shown = json.loads(stdout)
    assert shown["database"]["detail"] == f"schema at {SCHEMA_HEAD} (current)"


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_postgres_schema_behind_names_the_upgrade_without_alembic(
    pg_url: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(migrate.upgrade, pg_url, "0002")
    result, _, stderr = await asyncio.to_thread(probe, pg_url, tmp_path, "runs", "list")
    assert result == {"code": 4, "heavy": []}, stderr
    assert "is at revision 0002" in stderr
    assert "this crew needs" in stderr and "run `crew db upgrade`" in stderr


# ---- small pieces -----------------------------------------------------------------------


def test_column_lists_match_the_tables() -> None:
    from crew.store import models, read_sql

    tables = {
        read_sql.RUN_COLUMN_NAMES: models.runs_table,
        read_sql.NODE_COLUMN_NAMES: models.nodes_table,
        read_sql.ARTIFACT_COLUMN_NAMES: models.artifacts_table,
        read_sql.EVENT_COLUMN_NAMES: models.events_table,
    }
    stamps = set()
    for names, table in tables.items():
        assert names == tuple(c.name for c in table.columns)
        stamps |= {c.name for c in table.columns if c.type.__class__.__name__ == "UTCDateTime"}
    assert stamps == read_sql.TIMESTAMP_COLUMNS


def test_parameters_are_numbered_for_postgres() -> None:
    sql, names = numbered("a = :x AND b >= :y_2 OR c = :x AND d = 'h:m' AND e::text = :z")
    assert sql == "a = $1 AND b >= $2 OR c = $1 AND d = 'h:m' AND e::text = $3"
    assert names == ("x", "y_2", "z")


def test_urls_are_read_without_sqlalchemy() -> None:
    from crew.store.engines import display_url

    sqlite = parse("sqlite+aiosqlite:///data/crew.db")
    assert sqlite is not None and sqlite.sqlite_path == "data/crew.db"
    url = "postgresql+asyncpg://crew:s3cret@db.example:5433/crew?ssl=require"
    pg = parse(url)
    assert pg is not None and pg.dsn == "postgresql://crew:s3cret@db.example:5433/crew"
    assert pg.connect_args == {"ssl": "require"}
    assert pg.display == display_url(url)
    plain = "postgresql+asyncpg://crew@127.0.0.1/crew"
    assert parse(plain) is not None and parse(plain).display == display_url(plain)  # type: ignore[union-attr]
    for other in ("sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:", "mysql://x/y", "x"):
        assert parse(other) is None


def test_plain_parameters_convert_as_typer_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'crew.db'}")
    monkeypatch.setenv("RUNS_ROOT", str(tmp_path / "runs"))
    runner = CliRunner()
    ok = runner.invoke(app, ["runs", "list", "--json", "--limit", "007"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout) == []
    bad = runner.invoke(app, ["runs", "list", "--limit", "abc"])
    assert bad.exit_code == 2
    assert "Invalid value for '--limit'" in bad.output
    negative = runner.invoke(app, ["runs", "list", "--limit", "-3"])
    assert negative.exit_code == 2 and "--limit must be at least 1" in negative.output
