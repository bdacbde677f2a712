"""Migrations match the models, run both ways, and are applied (or demanded) on open."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from typer.testing import CliRunner

from crew.cli.main import app
from crew.domain.errors import MigrationRequiredError
from crew.settings import Settings
from crew.store import SCHEMA_HEAD, migrate
from crew.store.database import open_repository
from crew.store.models import metadata

TABLES = {"runs", "nodes", "artifacts", "events"}


def schema_diff(url: str) -> list[Any]:
    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, metadata))

    return migrate.run_with_connection(url, compare)


def table_names(url: str) -> set[str]:
    return migrate.run_with_connection(url, lambda c: set(inspect(c).get_table_names()))


def test_schema_head_constant_matches_alembic() -> None:
    assert migrate.head() == SCHEMA_HEAD


def test_migrations_round_trip_and_match_models(db_url: str) -> None:
    assert migrate.current(db_url) is None
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == SCHEMA_HEAD
    assert table_names(db_url) >= TABLES
    assert schema_diff(db_url) == []
    migrate.downgrade(db_url, "base")
    assert migrate.current(db_url) is None
    assert not TABLES & table_names(db_url)
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == SCHEMA_HEAD
    assert schema_diff(db_url) == []


def test_upgrade_keeps_the_newest_row_of_each_artifact_file(db_url: str) -> None:
    """Databases written before 0002 hold a row per write of a file; the newest stays."""
    migrate.upgrade(db_url, "0001")
    stamp = "2026-11-27 10:00:0{}+00:00"

    def fill(connection: Connection) -> None:
        connection.exec_driver_sql(
            "INSERT INTO runs (id, title, status, created_at, options, task_spec, updated_at)"
            f" VALUES ('r1', 't', 'completed', '{stamp.format(0)}', '{{}}', '{{}}',"
            f" '{stamp.format(0)}')"
        )
        for artifact_id, path, second in (
            ("old", "r1/nodes/a/artifact_a.md", 1),
            ("new", "r1/nodes/a/artifact_a.md", 2),
            ("older", "r1/nodes/a/artifact_a.md", 0),
            ("only", "r1/summary.json", 1),
        ):
            connection.exec_driver_sql(
                "INSERT INTO artifacts (id, run_id, type, path, sha256, size, created_at)"
                f" VALUES ('{artifact_id}', 'r1', 'markdown', '{path}', 'x', 1,"
                f" '{stamp.format(second)}')"
            )
        connection.commit()

    migrate.run_with_connection(db_url, fill)
    migrate.upgrade(db_url)
    remaining = migrate.run_with_connection(
        db_url,
        lambda c: sorted(c.exec_driver_sql("SELECT id FROM artifacts").scalars()),
    )
    assert remaining == ["new", "only"]
    assert schema_diff(db_url) == []


async def test_fresh_sqlite_is_upgraded_on_first_use(sqlite_url: str) -> None:
    async with open_repository(Settings(database_url=sqlite_url)) as repo:
        assert await repo.count_runs() == 0
    assert await asyncio.to_thread(migrate.current, sqlite_url) == SCHEMA_HEAD
    # Opening again finds it at head and does nothing more.
    async with open_repository(Settings(database_url=sqlite_url)) as repo:
        assert await repo.list_runs() == []


async def test_sqlite_keeps_foreign_keys_on_after_auto_upgrade(sqlite_url: str) -> None:
    async with (
        open_repository(Settings(database_url=sqlite_url)) as repo,
        repo.engine.connect() as connection,
    ):
        value = (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar()
    assert value == 1


@pytest.mark.postgres
async def test_postgres_behind_head_requires_upgrade(pg_url: str) -> None:
    with pytest.raises(MigrationRequiredError, match="run `crew db upgrade`"):
        async with open_repository(Settings(database_url=pg_url)):
            pass
    await asyncio.to_thread(migrate.upgrade, pg_url)
    async with open_repository(Settings(database_url=pg_url)) as repo:
        assert await repo.count_runs() == 0
    await asyncio.to_thread(migrate.downgrade, pg_url, "base")
    with pytest.raises(MigrationRequiredError, match="run `crew db upgrade`"):
        async with open_repository(Settings(database_url=pg_url)):
            pass


def test_cli_upgrade_and_current(db_url: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env from the working directory
    runner = CliRunner()
    result = runner.invoke(app, ["db", "current", "--database-url", db_url])
    assert result.exit_code == 0, result.output
    assert "none" in result.output and "crew db upgrade" in result.output
    result = runner.invoke(app, ["db", "upgrade", "--database-url", db_url])
    assert result.exit_code == 0, result.output
    assert f"upgraded from base to {SCHEMA_HEAD}" in result.output
    result = runner.invoke(app, ["db", "upgrade", "--database-url", db_url])
    assert result.exit_code == 0 and f"already at {SCHEMA_HEAD}" in result.output
    result = runner.invoke(app, ["db", "current", "--database-url", db_url])
    assert result.exit_code == 0
    assert result.output.strip() == f"{SCHEMA_HEAD} (head)"
    result = runner.invoke(app, ["db", "current", "--json", "--database-url", db_url])
    assert json.loads(result.output) == {
        "revision": SCHEMA_HEAD,
        "head": SCHEMA_HEAD,
        "at_head": True,
    }


def test_cli_reads_database_url_from_the_environment(
    sqlite_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert migrate.current(sqlite_url) == SCHEMA_HEAD


def test_cli_bad_url_and_bad_revision(sqlite_url: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["db", "current", "--database-url", "mysql://x/y"])
    assert result.exit_code == 2
    assert "DATABASE_URL" in result.output
    result = runner.invoke(app, ["db", "upgrade", "nope", "--database-url", sqlite_url])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    unreachable = "postgresql+asyncpg://postgres@127.0.0.1:1/test"
    result = runner.invoke(app, ["db", "current", "--database-url", unreachable])
    assert result.exit_code == 4


def test_revision_writes_into_the_source_tree(
    sqlite_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    # A scratch copy of the source layout, so the real migrations/ is never touched.
    checkout = tmp_path / "checkout"
    (checkout / "crew").mkdir(parents=True)
    shutil.copytree(
        migrate.migrations_dir(),
        checkout / "migrations",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    monkeypatch.setattr(migrate, "_PACKAGE_DIR", checkout / "crew")
    migrate.upgrade(sqlite_url)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        ["db", "revision", "-m", "add nothing", "--autogenerate", "--database-url", sqlite_url],
    )
    assert result.exit_code == 0, result.output
    following = f"{int(SCHEMA_HEAD) + 1:04d}"
    written = checkout / "migrations" / "versions" / f"{following}_add_nothing.py"
    assert written.is_file()
    text = written.read_text()
    assert (
        f"down_revision: str | None = '{SCHEMA_HEAD}'" in text
        or f'down_revision: str | None = "{SCHEMA_HEAD}"' in text
    )
    assert "crew.store" not in text  # revisions never import application code
    assert migrate.head() == following


def test_migrations_dir_prefers_the_installed_layout(tmp_path: Path, monkeypatch: Any) -> None:
    package = tmp_path / "site-packages" / "crew"
    (package / "migrations").mkdir(parents=True)
    (package / "migrations" / "env.py").write_text("")
    monkeypatch.setattr(migrate, "_PACKAGE_DIR", package)
    assert migrate.migrations_dir() == package / "migrations"


def test_cli_startup_does_not_import_the_database_stack() -> None:
    code = (
        "import sys, crew.cli.main\n"
        "heavy = {'sqlalchemy', 'sqlmodel', 'alembic'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
