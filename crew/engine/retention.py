"""Retention: deleting finished runs with their rows and their files, and measuring what
that gives back. Used by `crew gc` and `DELETE /runs/{run_id}`.

Rows go first, in a DELETE that checks the run is still finished, and only then the
run's folder: a run resumed meanwhile keeps its files, and a crash in between leaves
files without rows (harmless, visible) rather than rows without files.

The SQLite file is vacuumed after a large deletion (VACUUM_MIN_RUNS runs, or free pages
worth VACUUM_MIN_FREE_BYTES or VACUUM_MIN_FREE_SHARE of the file): VACUUM rewrites the
whole file, so it is worth it only when much of it is free; smaller deletions leave
pages that later rows reuse, so the file still does not grow for them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from crew.domain.clock import utcnow
from crew.domain.errors import DatabaseUnavailableError
from crew.domain.plan import is_valid_key
from crew.store import retention
from crew.store.database import SQLITE, sqlite_file

VACUUM_MIN_RUNS = 100
VACUUM_MIN_FREE_BYTES = 8 * 1024 * 1024
VACUUM_MIN_FREE_SHARE = 0.25


@dataclass(slots=True)
class RemovedRun:
    """One run deleted (or, in a dry run, that would be)."""

    id: str
    title: str
    status: str
    ended_at: datetime | None
    created_at: datetime
    files_bytes: int
    content_bytes: int
    files_error: str | None = None

    @property
    def freed_bytes(self) -> int:
        return self.files_bytes + self.content_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "created_at": self.created_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "files_bytes": self.files_bytes,
            "content_bytes": self.content_bytes,
            "freed_bytes": self.freed_bytes,
            "files_error": self.files_error,
        }


@dataclass(frozen=True, slots=True)
class Vacuum:
    """The SQLite file (with its WAL) before and after retention, and whether it was
    vacuumed."""

    ran: bool
    reason: str
    file_bytes_before: int
    file_bytes_after: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "ran": self.ran,
            "reason": self.reason,
            "file_bytes_before": self.file_bytes_before,
            "file_bytes_after": self.file_bytes_after,
        }


@dataclass(slots=True)
class GcReport:
    dry_run: bool
    cutoff: datetime
    statuses: tuple[str, ...]
    runs: list[RemovedRun] = field(default_factory=list)
    vacuum: Vacuum | None = None

    @property
    def files_bytes(self) -> int:
        return sum(r.files_bytes for r in self.runs)

    @property
    def content_bytes(self) -> int:
        return sum(r.content_bytes for r in self.runs)

    @property
    def freed_bytes(self) -> int:
        return self.files_bytes + self.content_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "cutoff": self.cutoff.isoformat(),
            "statuses": list(self.statuses),
            "removed": len(self.runs),
            "files_bytes": self.files_bytes,
            "content_bytes": self.content_bytes,
            "freed_bytes": self.freed_bytes,
            "runs": [r.to_dict() for r in self.runs],
            "vacuum": self.vacuum.to_dict() if self.vacuum else None,
        }


def run_folder(runs_root: Path, run_id: str) -> Path | None:
    """The run's folder under RUNS_ROOT; None for an id that cannot be one folder name
    there (such an id never had files, and must not name anything else)."""
    if not is_valid_key(run_id):
        return None
    return runs_root / run_id


def folder_bytes(folder: Path | None) -> int:
    """Bytes of the files in a folder, links not followed (a link counts as itself)."""
    if folder is None or not os.path.lexists(folder):
        return 0
    if folder.is_symlink() or not folder.is_dir():
        return folder.lstat().st_size
    total = 0
    for parent, _dirs, files in os.walk(folder, followlinks=False):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except OSError:  # removed meanwhile
                continue
    return total


def remove_folder(folder: Path | None) -> str | None:
    """Delete a run's folder; a link is removed, never followed. The error, if any."""
    if folder is None or not os.path.lexists(folder):
        return None
    try:
        if folder.is_symlink() or not folder.is_dir():
            folder.unlink()
        else:
            shutil.rmtree(folder)
    except OSError as error:
        return f"{folder}: {error.strerror or error}"
    return None


def database_file_bytes(engine: AsyncEngine) -> int | None:
    """Size of the SQLite file and its WAL; None for other databases."""
    path = sqlite_file(engine.url) if engine.url.drivername == SQLITE else None
    if path is None:
        return None
    return sum(
        Path(f"{path}{suffix}").stat().st_size
        for suffix in ("", "-wal")
        if Path(f"{path}{suffix}").exists()
    )


async def collect(
    engine: AsyncEngine,
    runs_root: Path,
    *,
    older_than: timedelta,
    statuses: tuple[str, ...] = retention.FINISHED_STATUSES,
    dry_run: bool = False,
    now: datetime | None = None,
) -> GcReport:
    """Delete the finished runs in `statuses` that ended more than `older_than` ago."""
    cutoff = (now or utcnow()) - older_than
    report = GcReport(dry_run=dry_run, cutoff=cutoff, statuses=statuses)
    found = await retention.finished_runs(engine, ended_before=cutoff, statuses=statuses)
    before = database_file_bytes(engine)
    if dry_run:
        report.runs = [_removed(run, runs_root) for run in found]
        return report
    deleted = set(await retention.delete_finished_runs(engine, [run.id for run in found]))
    for run in found:
        if run.id in deleted:
            removed = _removed(run, runs_root)
            removed.files_error = remove_folder(run_folder(runs_root, run.id))
            report.runs.append(removed)
    if before is not None:
        report.vacuum = await _maybe_vacuum(engine, len(report.runs), before)
    return report


async def delete_run(engine: AsyncEngine, runs_root: Path, run_id: str) -> RemovedRun | None:
    """Delete one finished run with its rows and files; None when it is not (or no
    longer) a finished run."""
    found = await retention.finished_runs(engine, run_id=run_id)
    if not found or not await retention.delete_finished_runs(engine, [run_id]):
        return None
    removed = _removed(found[0], runs_root)
    removed.files_error = remove_folder(run_folder(runs_root, run_id))
    return removed


def _removed(run: retention.StoredRun, runs_root: Path) -> RemovedRun:
    return RemovedRun(
        id=run.id,
        title=run.title,
        status=run.status,
        ended_at=run.ended_at,
        created_at=run.created_at,
        files_bytes=folder_bytes(run_folder(runs_root, run.id)),
        content_bytes=run.content_bytes,
    )


async def _maybe_vacuum(engine: AsyncEngine, removed: int, before: int) -> Vacuum:
    # Failing, it only makes the sizes reported less exact; VACUUM says why if it fails.
    with contextlib.suppress(DatabaseUnavailableError):
        await retention.checkpoint_sqlite(engine)
    free = await retention.sqlite_free_bytes(engine) or 0
    size = database_file_bytes(engine) or 0
    if removed >= VACUUM_MIN_RUNS:
        reason = f"{removed} runs deleted (>= {VACUUM_MIN_RUNS})"
    elif free >= VACUUM_MIN_FREE_BYTES:
        reason = f"{free} bytes of free pages (>= {VACUUM_MIN_FREE_BYTES})"
    elif size and free >= VACUUM_MIN_FREE_SHARE * size:
        reason = f"free pages are {free / size:.0%} of the file (>= {VACUUM_MIN_FREE_SHARE:.0%})"
    else:
        return Vacuum(False, f"only {free} bytes of free pages", before, size)
    try:
        await retention.vacuum_sqlite(engine)
    except DatabaseUnavailableError as error:
        # The rows are gone either way; a busy database only postpones the shrinking.
        why = f"VACUUM failed ({error.message}); the next crew gc tries again"
        return Vacuum(False, why, before, database_file_bytes(engine) or 0)
    return Vacuum(True, reason, before, database_file_bytes(engine) or 0)
