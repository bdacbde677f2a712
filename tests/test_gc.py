"""Retention: `crew gc` and `DELETE /runs/{run_id}` delete finished runs with their rows
and files, never a queued or running one, say what they freed, and keep the SQLite file
from growing for ever."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from api_helpers import H, api, assert_error, call, repo, seed_run
from sqlalchemy import func, select
from typer.testing import CliRunner

from crew.cli.gc import parse_duration
from crew.cli.main import app
from crew.engine import retention as engine_retention
from crew.engine.retention import database_file_bytes
from crew.settings import settings_from_values
from crew.store import retention
from crew.store.database import open_repository
from crew.store.models import artifacts_table, events_table, nodes_table, runs_table
from crew.store.records import NewArtifact

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(hours=1)
CONTENT = "# Artifact\n\n" + "Du texte à garder un moment. " * 40


def _settings(db_url: str, tmp_path: Path) -> Any:
    return settings_from_values({"DATABASE_URL": db_url, "RUNS_ROOT": str(tmp_path / "runs")})


def _run_sync(db_url: str, tmp_path: Path, work: Any) -> Any:
    async def main() -> Any:
        async with open_repository(_settings(db_url, tmp_path)) as r:
            return await work(r)

    return asyncio.run(main())


async def _seed(
    r: Any,
    tmp_path: Path,
    *,
    status: str,
    ended: datetime | None,
    created: datetime = OLD,
    artifacts: int = 2,
    run_id: str | None = None,
) -> str:
    """A run with nodes, events, artifact rows holding content, and files on disk."""
    run_id = await seed_run(
        r, run_id=run_id, status=status, created=created, started=created, ended=ended
    )
    nodes = await r.list_nodes(run_id)
    folder = tmp_path / "runs" / run_id
    rows = []
    for i in range(artifacts):
        node = nodes[i % len(nodes)]
        relative = f"{run_id}/nodes/{node.key}/artifact_{node.key}_{i}.md"
        path = tmp_path / "runs" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(CONTENT, encoding="utf-8")
        size = len(CONTENT.encode())
        rows.append(
            NewArtifact(
                run_id=run_id, node_id=node.id, type="markdown", path=relative,
                content=CONTENT, summary=None, sha256="0" * 64, size=size,
            )
        )  # fmt: skip
    (folder / "plan.json").write_text("{}", encoding="utf-8")
    await r.add_artifacts(rows)
    return run_id


async def _row_counts(r: Any, run_id: str) -> dict[str, int]:
    counts = {}
    async with r.engine.connect() as conn:
        for table in (runs_table, nodes_table, artifacts_table, events_table):
            column = table.c.id if table is runs_table else table.c.run_id
            query = select(func.count()).select_from(table).where(column == run_id)
            counts[table.name] = int((await conn.execute(query)).scalar_one())
    return counts


def _gc(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)
    return CliRunner().invoke(app, ["gc", *args])


def _migrated(db_url: str) -> str:
    if db_url.startswith("postgresql"):
        from crew.store import migrate

        migrate.upgrade(db_url)
    return db_url


def test_gc_deletes_old_finished_runs_with_rows_and_files(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _migrated(db_url)

    async def seed(r: Any) -> dict[str, str]:
        ids = {}
        for name, status, ended in (
            ("completed", "completed", OLD),
            ("failed", "failed", OLD),
            ("canceled", "canceled", OLD),
            ("interrupted", "interrupted", OLD),
            ("running", "running", None),
            ("queued", "queued", None),
            ("recent", "completed", RECENT),
        ):
            ids[name] = await _seed(r, tmp_path, status=status, ended=ended)
        return ids

    ids = _run_sync(db_url, tmp_path, seed)
    result = _gc(db_url, tmp_path, monkeypatch, "--older-than", "30d", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    gone = {"completed", "failed", "canceled", "interrupted"}
    assert {run["id"] for run in report["runs"]} == {ids[name] for name in gone}
    assert report["removed"] == 4 and report["dry_run"] is False
    content = 2 * len(CONTENT.encode())
    for run in report["runs"]:
        assert run["content_bytes"] == content
        assert run["files_bytes"] == content + len("{}")
        assert run["freed_bytes"] == run["files_bytes"] + run["content_bytes"]
    assert report["freed_bytes"] == report["files_bytes"] + report["content_bytes"]
    assert report["freed_bytes"] == 4 * (2 * content + 2)

    async def counts(r: Any) -> dict[str, dict[str, int]]:
        return {name: await _row_counts(r, run_id) for name, run_id in ids.items()}

    after = _run_sync(db_url, tmp_path, counts)
    for name, run_id in ids.items():
        folder = tmp_path / "runs" / run_id
        if name in gone:
            assert after[name] == dict.fromkeys(after[name], 0), name
            assert not folder.exists(), name
        else:
            assert after[name]["runs"] == 1 and after[name]["events"] == 3, name
            assert after[name]["artifacts"] == 2 and folder.is_dir(), name


def test_dry_run_and_status_filter(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _migrated(db_url)

    async def seed(r: Any) -> tuple[str, str]:
        return (
            await _seed(r, tmp_path, status="failed", ended=OLD),
            await _seed(r, tmp_path, status="completed", ended=OLD),
        )

    failed, completed = _run_sync(db_url, tmp_path, seed)
    dry = _gc(db_url, tmp_path, monkeypatch, "--older-than", "1d", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"would remove {failed}" in dry.stdout and f"would remove {completed}" in dry.stdout
    assert "would remove 2 run(s), would free" in dry.stdout
    assert (tmp_path / "runs" / failed).is_dir() and (tmp_path / "runs" / completed).is_dir()

    only = _gc(db_url, tmp_path, monkeypatch, "--older-than", "1d", "--status", "failed", "--json")
    assert only.exit_code == 0, only.output
    assert [run["id"] for run in json.loads(only.stdout)["runs"]] == [failed]
    assert (tmp_path / "runs" / completed).is_dir()
    again = _gc(db_url, tmp_path, monkeypatch, "--older-than", "1d", "--status", "failed")
    assert again.exit_code == 0 and "no finished runs ended more than 1d ago" in again.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "30x"], "--older-than '30x' is not a duration"),
        (["--older-than", "thirty days"], "is not a duration"),
        (["--older-than", "-3d"], "is not a duration"),
        (["--older-than", "9" * 500 + "d"], "…' is not a duration"),
        (["--older-than", "99999999d"], "is too long"),
        (["--older-than", "1d", "--status", "running"], "--status running cannot be collected"),
        (["--older-than", "1d", "--status", "queued"], "cannot be collected"),
        (["--older-than", "1d", "--status", "awaiting_approval"], "cannot be collected"),
        (["--older-than", "1d", "--status", "done"], "--status 'done' is unknown"),
    ],
)
def test_bad_flags_exit_2_naming_the_problem(
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    result = _gc(sqlite_url, tmp_path, monkeypatch, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr) < 300


def test_durations() -> None:
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("0s") == timedelta(0)


def test_the_sqlite_file_shrinks_after_gc_of_many_runs(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def seed(r: Any) -> list[str]:
        kept = [await _seed(r, tmp_path, status="completed", ended=RECENT) for _ in range(3)]
        for _ in range(60):
            await _seed(r, tmp_path, status="completed", ended=OLD, artifacts=6)
        return kept

    kept = _run_sync(sqlite_url, tmp_path, seed)

    async def size(r: Any) -> int:
        async with r.engine.connect() as conn:  # a checkpoint, so the WAL is in the file
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return database_file_bytes(r.engine) or 0

    before = _run_sync(sqlite_url, tmp_path, size)
    result = _gc(sqlite_url, tmp_path, monkeypatch, "--older-than", "7d", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["removed"] == 60
    vacuum = report["vacuum"]
    assert vacuum["ran"] is True, vacuum
    after = os.path.getsize(tmp_path / "crew.db")
    assert after == vacuum["file_bytes_after"]
    assert after < before / 4, (before, after)
    remaining = _run_sync(sqlite_url, tmp_path, lambda r: r.list_runs(limit=100))
    assert sorted(run.id for run in remaining) == sorted(kept)
    text = _gc(sqlite_url, tmp_path, monkeypatch, "--older-than", "7d")
    assert "database file not vacuumed" in text.stdout


def test_a_small_deletion_does_not_vacuum(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def seed(r: Any) -> None:
        for _ in range(30):
            await _seed(r, tmp_path, status="completed", ended=RECENT)
        await _seed(r, tmp_path, status="completed", ended=OLD, artifacts=1)

    _run_sync(sqlite_url, tmp_path, seed)
    result = _gc(sqlite_url, tmp_path, monkeypatch, "--older-than", "7d", "--json")
    assert result.exit_code == 0, result.output
    vacuum = json.loads(result.stdout)["vacuum"]
    assert vacuum["ran"] is False and "free pages" in vacuum["reason"]


def test_a_run_resumed_meanwhile_is_not_deleted(db_url: str, tmp_path: Path) -> None:
    _migrated(db_url)

    async def work(r: Any) -> tuple[list[str], list[str]]:
        run_id = await _seed(r, tmp_path, status="failed", ended=OLD)
        listed = await retention.finished_runs(r.engine, ended_before=NOW)
        await r.update_run(run_id, status="running")  # resumed after the listing
        deleted = await retention.delete_finished_runs(r.engine, [run.id for run in listed])
        return [run.id for run in listed], deleted

    listed, deleted = _run_sync(db_url, tmp_path, work)
    assert len(listed) == 1 and deleted == []


def test_a_linked_run_folder_is_unlinked_not_followed(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me", encoding="utf-8")

    async def seed(r: Any) -> str:
        return await seed_run(r, status="completed", created=OLD, ended=OLD)

    run_id = _run_sync(sqlite_url, tmp_path, seed)
    (tmp_path / "runs").mkdir(exist_ok=True)
    (tmp_path / "runs" / run_id).symlink_to(outside, target_is_directory=True)
    result = _gc(sqlite_url, tmp_path, monkeypatch, "--older-than", "1d", "--json")
    assert result.exit_code == 0, result.output
    assert not os.path.lexists(tmp_path / "runs" / run_id)
    assert (outside / "precious.txt").read_text(encoding="utf-8") == "keep me"


def test_delete_run_over_the_api(db_url: str, tmp_path: Path) -> None:
    # No worker in the server: the queued and running runs below must stay as they are.
    with api(db_url, tmp_path, SERVE_EMBEDDED_WORKER="0") as client:
        r = repo(client)
        done = call(client, _seed, r, tmp_path, status="completed", ended=RECENT)
        running = call(client, _seed, r, tmp_path, status="running", ended=None)
        queued = call(client, _seed, r, tmp_path, status="queued", ended=None)

        response = client.delete(f"/runs/{done}", headers=H)
        assert response.status_code == 200, response.text
        body = response.json()
        content = 2 * len(CONTENT.encode())
        assert body == {
            "run_id": done,
            "status": "deleted",
            "files_bytes": content + 2,
            "content_bytes": content,
            "freed_bytes": 2 * content + 2,
            "files_error": None,
        }
        assert call(client, _row_counts, r, done) == {
            "runs": 0, "nodes": 0, "artifacts": 0, "events": 0,
        }  # fmt: skip
        assert not (tmp_path / "runs" / done).exists()
        assert_error(client.get(f"/runs/{done}", headers=H), 404)
        assert_error(client.delete(f"/runs/{done}", headers=H), 404, "not_found")

        for busy, status in ((running, "running"), (queued, "queued")):
            refused = assert_error(client.delete(f"/runs/{busy}", headers=H), 409, "conflict")
            assert f"is {status}" in refused["detail"]
            assert (tmp_path / "runs" / busy).is_dir()
            assert client.get(f"/runs/{busy}", headers=H).status_code == 200
        assert_error(client.delete(f"/runs/{done}"), 401)
        doc = client.get("/openapi.json").json()
        operation = doc["paths"]["/runs/{run_id}"]["delete"]
        assert set(operation["responses"]) >= {"200", "401", "404", "409", "503"}


def test_a_busy_database_postpones_the_vacuum_but_not_the_deletion(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crew.domain.errors import DatabaseUnavailableError

    async def busy(_engine: Any) -> bool:
        raise DatabaseUnavailableError("database unavailable: database is locked")

    async def seed(r: Any) -> None:
        for _ in range(4):
            await _seed(r, tmp_path, status="completed", ended=OLD, artifacts=6)

    _run_sync(sqlite_url, tmp_path, seed)
    monkeypatch.setattr(engine_retention, "VACUUM_MIN_RUNS", 2)  # a large deletion
    monkeypatch.setattr(retention, "vacuum_sqlite", busy)
    result = _gc(sqlite_url, tmp_path, monkeypatch, "--older-than", "7d", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["removed"] == 4
    assert report["vacuum"]["ran"] is False
    assert "VACUUM failed (database unavailable: database is locked)" in report["vacuum"]["reason"]
