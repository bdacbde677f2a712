"""Noticing that the SQLite file was deleted or replaced under a long-lived process.

SQLite keeps working on a file that was unlinked while it is open: every connection
still reads and writes the old inode, so a server would go on accepting runs and
reporting them complete into a database that no longer exists on disk, and lose all of
it at shutdown. Nothing in the driver says so. The guard holds its own descriptor on the
file it watched (which also keeps the inode from being reused) and compares it with
what the path names now: a link count of 0, a missing path or another inode means the
database this process writes to is not the one a restart would open.
"""

from __future__ import annotations

import os
from pathlib import Path

from crew.domain.errors import DatabaseUnavailableError


class DatabaseFileGoneError(DatabaseUnavailableError):
    """The SQLite file this process writes to is no longer the one at its path: 503.

    Every request that uses the database is refused, reads included: what they would show
    is about to vanish, and a run accepted now would be lost.
    """

    code = "database_file_gone"


class SqliteFileGuard:
    """Watches one SQLite file; `problem()` says what happened to it, if anything."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None

    @property
    def watching(self) -> bool:
        return self._fd is not None

    def watch(self) -> None:
        """Remember the file at the path now (call once the database has been opened).

        Idempotent; a path that cannot be opened is not watched (the database check that
        comes next reports why).
        """
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return
        info = os.fstat(fd)
        self._fd, self._identity = fd, (info.st_dev, info.st_ino)

    def problem(self) -> str | None:
        """None while the path still names the watched file; otherwise what changed."""
        if self._fd is None or self._identity is None:
            return None
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            deleted = os.fstat(self._fd).st_nlink == 0
            return "was deleted" if deleted else "was moved away"
        except OSError as error:
            return f"cannot be checked ({error.strerror})"
        if (now.st_dev, now.st_ino) != self._identity:
            return "was replaced by another file"
        return None

    def check(self) -> None:
        """Raise DatabaseFileGoneError when `problem()` finds one."""
        what = self.problem()
        if what is not None:
            raise DatabaseFileGoneError(self.message(what))

    @staticmethod
    def message(what: str) -> str:
        """The refusal a client sees: what happened and what to do, never the path."""
        return (
            f"the SQLite database file {what} while the server was running: what this "
            "server would write now is lost when it stops, so it refuses to use the database; "
            "move the file back if it was moved, otherwise restart the server"
        )

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def guard_for(database_url: str) -> SqliteFileGuard | None:
    """A guard for a SQLite file URL; None for PostgreSQL and in-memory databases."""
    from crew.store.database import SQLITE, parse_url, sqlite_file

    parsed = parse_url(database_url)
    if parsed.drivername != SQLITE:
        return None
    path = sqlite_file(parsed)
    return None if path is None else SqliteFileGuard(path)
