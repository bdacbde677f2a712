"""Helpers for the leased-execution tests (this module holds no tests of its own).

`Procs` starts real crew processes (`crew worker`, `crew serve`, `crew run`) with one
environment, logs each one's output to a file, and kills whatever is still running
when the test ends, pass or fail. `Db` reads and writes the same database from the
test process through the repository, on an event loop of its own in a thread, so
synchronous tests can poll it cheaply while the processes work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from engine_support import CLEAN_ENV_PREFIXES
from sqlalchemy import select

from crew.domain.plan import parse_plan
from crew.engine.options import RunOptions
from crew.engine.service import create_run
from crew.settings import Settings, settings_from_values
from crew.store import migrate
from crew.store.database import open_repository
from crew.store.models import events_table, runs_table
from crew.store.repository import Repository

T = TypeVar("T")

API_KEY = "workers-key"

DEFAULT_ENV = {
    "RUN_LEASE_S": "2",
    "WORKER_POLL_S": "0.2",
    "WORKER_SHUTDOWN_GRACE_S": "5",
    "RETRY_BASE_DELAY": "0",
    "MAX_CONCURRENCY": "4",
    "CREW_LANGUAGE": "en",
    "NO_COLOR": "1",
    "API_KEY": API_KEY,
}


def process_env(db_url: str, runs_root: Path, **values: str) -> dict[str, str]:
    """This process's environment without crew's settings, then the given ones."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(CLEAN_ENV_PREFIXES) and name not in {"API_KEY", "LOG_FORMAT"}
    }
    env.update(DEFAULT_ENV)
    env.update({"DATABASE_URL": db_url, "RUNS_ROOT": str(runs_root)})
    env.update(values)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def owns(self, owner: str | None) -> bool:
        """Whether a lease owner id (`host:pid:nonce`) names this process."""
        return owner is not None and owner.split(":")[1:2] == [str(self.pid)]

    def stdout(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL and reap (a stopped process dies too)."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=30)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)


class Procs:
    """Processes started for one test; every one still running is killed at exit."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.procs: list[Proc] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):  # reap the others whatever happens to one
                proc.kill()

    def start(self, name: str, *args: str, **env: str) -> Proc:
        """`python -m crew ARGS`, in the test's folder (no .env there)."""
        out, err = self.folder / f"{name}.out", self.folder / f"{name}.err"
        with out.open("ab") as stdout, err.open("ab") as stderr:
            popen = subprocess.Popen(
                [sys.executable, "-m", "crew", *args],
                cwd=self.folder,
                env={**self.env, **env},
                stdout=stdout,
                stderr=stderr,
            )
        proc = Proc(name, popen, out, err)
        self.procs.append(proc)
        return proc

    def worker(self, name: str, *args: str, **env: str) -> Proc:
        return self.start(name, "worker", "--name", name, *args, **env)

    def serve(self, name: str, port: int, **env: str) -> Proc:
        return self.start(name, "serve", "--host", "127.0.0.1", "--port", str(port), **env)

    def logs(self) -> str:
        """Every process's stderr, for failure messages."""
        return "\n".join(f"--- {p.name} ({p.pid}) ---\n{p.stderr()[-3000:]}" for p in self.procs)


def wait_for(
    condition: Callable[[], T],
    *,
    timeout: float,
    what: str,
    procs: Procs | None = None,
    interval: float = 0.1,
) -> T:
    """Poll `condition` until it returns something truthy; fail with the logs if not."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = procs.logs() if procs is not None else ""
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        time.sleep(interval)


def stop_gracefully(proc: Proc, timeout: float = 30) -> int:
    proc.signal(signal.SIGTERM)
    return proc.wait(timeout)


# ---- the database, from the test process --------------------------------------------------


@dataclass(frozen=True)
class EventRow:
    id: int
    run_id: str
    type: str
    node_key: str | None
    payload: dict[str, Any]


class Db:
    """The repository on the processes' database, driven from a thread of its own."""

    def __init__(self, db_url: str, runs_root: Path) -> None:
        self.settings: Settings = settings_from_values(
            {"DATABASE_URL": db_url, "RUNS_ROOT": str(runs_root), "CREW_LANGUAGE": "en"}
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._repo: Repository | None = None
        self._opened: Any = None

    def __enter__(self) -> Db:
        if self.settings.database_url.startswith("postgresql"):
            migrate.upgrade(self.settings.database_url)
        self._thread.start()
        self._opened = open_repository(self.settings)
        self._repo = self._run(self._opened.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._opened is not None:
                self._run(self._opened.__aexit__(None, None, None))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)

    @property
    def repo(self) -> Repository:
        assert self._repo is not None
        return self._repo

    def call(self, fn: Callable[[Repository], Coroutine[Any, Any, T]]) -> T:
        return self._run(fn(self.repo))

    def create_runs(self, plan: dict[str, Any], count: int, *, prefix: str = "run") -> list[str]:
        """Queue `count` runs of `plan` (the way `crew run --detach` does)."""
        parsed = parse_plan(plan)
        options = RunOptions.from_settings(self.settings)

        async def create(repo: Repository) -> list[str]:
            return [
                await create_run(
                    repo, self.settings, parsed, options=options, run_id=f"{prefix}-{i:03d}"
                )
                for i in range(count)
            ]

        return self.call(create)

    def run(self, run_id: str) -> Any:
        return self.call(lambda repo: repo.get_run(run_id))

    def runs(self) -> dict[str, Any]:
        async def fn(repo: Repository) -> dict[str, Any]:
            return {run.id: run for run in await repo.list_runs(limit=10_000)}

        return self.call(fn)

    def nodes(self, run_id: str) -> dict[str, Any]:
        async def fn(repo: Repository) -> dict[str, Any]:
            return {node.key: node for node in await repo.list_nodes(run_id)}

        return self.call(fn)

    def events(self, run_id: str | None = None) -> list[EventRow]:
        """Events of one run, or of every run, in id order (one query)."""
        c = events_table.c
        stmt = select(c.id, c.run_id, c.type, c.node_key, c.payload).order_by(c.id)
        if run_id is not None:
            stmt = stmt.where(c.run_id == run_id)

        async def fn(repo: Repository) -> list[EventRow]:
            async with repo.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
            return [EventRow(*row) for row in rows]

        return self.call(fn)

    def artifacts(self, run_id: str) -> list[Any]:
        return self.call(lambda repo: repo.list_artifacts(run_id=run_id))

    def statuses(self) -> dict[str, str]:
        """Every run's status (one light query: the tests poll it)."""
        c = runs_table.c

        async def fn(repo: Repository) -> dict[str, str]:
            async with repo.engine.connect() as conn:
                return {row[0]: row[1] for row in await conn.execute(select(c.id, c.status))}

        return self.call(fn)

    def held_by(self, proc: Proc) -> list[str]:
        """The running runs whose lease `proc` holds."""
        c = runs_table.c
        stmt = select(c.id, c.owner).where(c.status == "running")

        async def fn(repo: Repository) -> list[str]:
            async with repo.engine.connect() as conn:
                return [row[0] for row in await conn.execute(stmt) if proc.owns(row[1])]

        return self.call(fn)

    def all_completed(self, run_ids: Iterable[str]) -> bool:
        statuses = self.statuses()
        return all(statuses.get(run_id) == "completed" for run_id in run_ids)


def per_node(events: Iterable[EventRow], event_type: str) -> Counter[tuple[str, str | None]]:
    """How many events of a type each (run, node) has."""
    return Counter((e.run_id, e.node_key) for e in events if e.type == event_type)


def of_type(events: Iterable[EventRow], event_type: str) -> list[EventRow]:
    return [e for e in events if e.type == event_type]


@contextmanager
def database(db_url: str, runs_root: Path) -> Iterator[Db]:
    with Db(db_url, runs_root) as db:
        yield db


# ---- pausing a process (SIGSTOP) without it holding a transaction ------------------------


def holds_a_transaction(db_url: str) -> bool:
    """Whether some process has a write transaction open on the database right now.

    PostgreSQL: a session idle inside a transaction (it may hold the run's row lock).
    SQLite: the write lock cannot be taken without waiting.
    """
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.drivername.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.database or "", timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
    import asyncpg

    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def check() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            count = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND state <> 'idle'"
            )
            return bool(count)
        finally:
            await conn.close()

    return asyncio.run(check())


def pause(proc: Proc, db_url: str, attempts: int = 100) -> None:
    """SIGSTOP `proc` at a moment it holds no transaction (a stopped transaction would
    block every other writer, which is not what the tests are about)."""
    for _ in range(attempts):
        proc.signal(signal.SIGSTOP)
        if not holds_a_transaction(db_url):
            return
        proc.signal(signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"{proc.name} was always inside a transaction")
