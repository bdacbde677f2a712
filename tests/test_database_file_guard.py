"""A SQLite file deleted or replaced under a running server: /health says so with a 503,
requests that use the database are refused with a JSON 503, and an error is logged once."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from api_helpers import H, api, assert_error

from crew.store.file_guard import SqliteFileGuard, guard_for

PLAN = {"task": {"title": "t", "plan": [{"id": "a", "title": "A"}]}}


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def test_deleting_the_file_under_the_server_is_reported_and_refused(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = tmp_path / "crew.db"
    with api(sqlite_url, tmp_path) as client:
        assert client.get("/health").json()["db"] == "ok"
        assert client.post("/tasks", json=PLAN, headers=H).status_code == 202

        _remove_database(database)
        with caplog.at_level(logging.ERROR, logger="crew.api"):
            health = client.get("/health")
            refused = client.post("/tasks", json=PLAN, headers=H)
            listed = client.get("/runs", headers=H)
            client.get("/health")

    assert health.status_code == 503
    body = health.json()
    assert body["db"] == "unavailable" and body["code"] == "database_file_gone"
    assert "was deleted" in body["detail"] and str(database) not in body["detail"]
    error = assert_error(refused, 503, "database_file_gone")
    assert "deleted" in error["detail"]
    assert_error(listed, 503, "database_file_gone")
    logged = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "crew.api"]
    assert len(logged) == 1, [r.getMessage() for r in logged]
    assert str(database) in logged[0].getMessage()


def test_a_file_replaced_under_the_server_is_refused_too(sqlite_url: str, tmp_path: Path) -> None:
    database = tmp_path / "crew.db"
    with api(sqlite_url, tmp_path) as client:
        assert client.get("/health").status_code == 200
        replacement = tmp_path / "other.db"
        replacement.write_bytes(database.read_bytes())
        os.replace(replacement, database)
        health = client.get("/health")
        refused = client.post("/tasks", json=PLAN, headers=H)
    assert health.status_code == 503 and "replaced" in health.json()["detail"]
    assert_error(refused, 503, "database_file_gone")


def test_an_untouched_file_keeps_the_server_healthy(sqlite_url: str, tmp_path: Path) -> None:
    with api(sqlite_url, tmp_path) as client:
        for _ in range(3):
            assert client.get("/health").json() == {
                "status": "ok",
                "db": "ok",
                "version": client.get("/health").json()["version"],
            }
        assert client.get("/runs", headers=H).status_code == 200


def test_the_guard_names_what_happened(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    path.write_bytes(b"data")
    guard = SqliteFileGuard(path)
    assert guard.problem() is None  # not watching yet: nothing to compare with
    guard.watch()
    try:
        assert guard.problem() is None
        moved = tmp_path / "y.db"
        path.rename(moved)
        assert guard.problem() == "was moved away"
        moved.rename(path)
        assert guard.problem() is None
        path.unlink()
        assert guard.problem() == "was deleted"
    finally:
        guard.close()


def test_only_sqlite_files_are_guarded(tmp_path: Path) -> None:
    assert guard_for(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}") is not None
    assert guard_for("sqlite+aiosqlite:///:memory:") is None
    assert guard_for("postgresql+asyncpg://u@localhost/db") is None


def test_the_error_is_logged_without_any_request(
    sqlite_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server nobody calls still says so in its log (its own periodic check)."""
    import time

    from crew.api import state

    monkeypatch.setattr(state, "DB_FILE_CHECK_S", 0.01)
    with caplog.at_level(logging.ERROR, logger="crew.api"), api(sqlite_url, tmp_path):
        _remove_database(tmp_path / "crew.db")
        deadline = time.monotonic() + 30  # a bound on waiting, not a speed requirement
        while not [r for r in caplog.records if r.levelno == logging.ERROR]:
            assert time.monotonic() < deadline, "nothing logged"
            time.sleep(0.01)
    (logged,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "was deleted" in logged.getMessage()
