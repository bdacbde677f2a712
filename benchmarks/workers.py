"""Leased execution with real `crew worker` processes: throughput, wake-up, recovery.

- Throughput on PostgreSQL with 1, 2 and 4 workers (`--max-runs 2` each): 40 runs of 10
  nodes (five levels), offline provider at 100 ms per call. The runs are created held by
  a placeholder owner, the workers are started and registered, then one statement puts
  every run back in the queue (and one NOTIFY wakes the workers): the makespan runs
  from that commit to the last run's end, so process start-up is not measured. Targets:
  speedup >= 1.8 at 2 workers, >= 3.2 at 4, against 1.
- Claim-to-first-node latency: an idle worker, a run queued (one node, no latency), the
  time from the run's creation to its NODE_STARTED event; p50 of several runs queued one
  after another. PostgreSQL wakes the worker by NOTIFY (target < 100 ms); SQLite has only
  polling, every WORKER_POLL_S (default 0.5 s; target < 1 s).
- Recovery after a worker's SIGKILL: worker A executes a long run, worker B is idle; A is
  killed; the time from the kill to B's RUN_RESUMED (lease expiry, then B's next poll
  and claim). Target: <= RUN_LEASE_S + 2 s.

PostgreSQL comes from --database-url or CREW_TEST_DATABASE_URL; its `public` schema is
dropped and recreated for every measurement, so give it a database you can wipe (the
tests' one). Without one, only the SQLite measurement runs. Event and run timestamps
are the processes' own clocks, on this one machine.

Prints one JSON line. Usage: python benchmarks/workers.py [--database-url URL]
[--only throughput|latency|recovery]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from _postgres import wipe_postgres
from sqlalchemy import func, select, update

from crew.domain.plan import Plan, parse_plan
from crew.engine.options import RunOptions
from crew.engine.service import create_run
from crew.settings import Settings, settings_from_values
from crew.store.database import open_repository
from crew.store.models import events_table, runs_table, workers_table
from crew.store.repository import Repository

T = TypeVar("T")

RUNS = 40
WORKER_COUNTS = (1, 2, 4)
LATENCY_MS = 100
MAX_RUNS_PER_WORKER = 2
LATENCY_SAMPLES = 15
RECOVERY_LEASE_S = 5.0
RECOVERY_SAMPLES = 3
HOLD = "bench:0:hold"
TARGETS = {"speedup_2": 1.8, "speedup_4": 3.2, "pg_p50_ms": 100, "sqlite_p50_ms": 1000}
CLEAN_PREFIXES = (
    "LLM_", "SUPERVISOR_", "MANAGER_", "EXECUTOR_", "RECRUITER_", "CREW_", "MAX_CONCURRENCY",
    "OFFLINE_", "NODE_", "RETRY_", "RUN_", "RUNS_ROOT", "DATABASE_URL", "OLLAMA_", "OPENAI_",
    "WORKER_", "LOG_", "METRICS_", "SENTRY_",
)  # fmt: skip


def ten_nodes() -> Plan:
    """Ten nodes on five levels: four sources, two merges, two sections, two finals."""
    nodes = [{"id": f"r{i}", "title": f"Research {i}"} for i in range(1, 5)]
    nodes += [
        {"id": "m1", "title": "Merge 1", "deps": ["r1", "r2"]},
        {"id": "m2", "title": "Merge 2", "deps": ["r3", "r4"]},
        {"id": "s1", "title": "Section 1", "deps": ["m1"]},
        {"id": "s2", "title": "Section 2", "deps": ["m2"]},
        {"id": "s3", "title": "Section 3", "deps": ["s1", "s2"]},
        {"id": "fin", "title": "Final", "deps": ["s3"], "type": "synthesis"},
    ]
    return parse_plan({"title": "Ten nodes", "plan": nodes})


def one_node() -> Plan:
    return parse_plan({"title": "One node", "plan": [{"id": "a", "title": "A"}]})


def long_chain(length: int) -> Plan:
    nodes = [
        {"id": f"c{i}", "title": f"Step {i}", "deps": [f"c{i - 1}"] if i else []}
        for i in range(length)
    ]
    return parse_plan({"title": "Long chain", "plan": nodes})


# ---- processes and the database ------------------------------------------------------------


class Workers:
    """`crew worker` processes sharing one environment; all killed at exit."""

    def __init__(self, folder: Path, url: str, **values: str) -> None:
        self.folder = folder
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(CLEAN_PREFIXES)}
        self.env.update(
            {
                "DATABASE_URL": url,
                "RUNS_ROOT": str(folder / "runs"),
                "RETRY_BASE_DELAY": "0",
                "NODE_RETRIES": "0",
                "LOG_LEVEL": "WARNING",
                "NO_COLOR": "1",
                **values,
            }
        )
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Workers:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.folder / f"worker-{len(self.procs)}.log").open("ab")
        with log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "crew", "worker", *args],
                cwd=self.folder,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.procs.append(proc)
        return proc


async def wait_until(
    check: Callable[[], Awaitable[T]], timeout: float, what: str, interval: float = 0.05
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"benchmark: timed out waiting for {what}")
        await asyncio.sleep(interval)


async def scalar(repo: Repository, stmt: Any) -> Any:
    async with repo.engine.connect() as conn:
        return (await conn.execute(stmt)).scalar()


def settings_for(folder: Path, url: str, **values: str) -> Settings:
    return settings_from_values({"DATABASE_URL": url, "RUNS_ROOT": str(folder / "runs"), **values})


# ---- throughput ------------------------------------------------------------------------------


async def makespan(folder: Path, url: str, workers: int) -> tuple[float, float]:
    """Seconds from queueing RUNS runs at once to the last one's end, with `workers`;
    and the CPU seconds the worker processes used (start-up included)."""
    await wipe_postgres(url)
    # Created held by a placeholder for an hour: nobody claims them before the start.
    settings = settings_for(folder, url, RUN_LEASE_S="3600", OFFLINE_LATENCY_MS=str(LATENCY_MS))
    plan = ten_nodes()
    async with open_repository(settings) as repo:
        options = RunOptions.from_settings(settings)
        ids = [
            await create_run(repo, settings, plan, options=options, owner=HOLD) for _ in range(RUNS)
        ]
        env = {"OFFLINE_LATENCY_MS": str(LATENCY_MS), "WORKER_POLL_S": "0.5"}
        cpu_before = children_cpu()
        with Workers(folder, url, **env) as procs:
            for _ in range(workers):
                procs.start("--max-runs", str(MAX_RUNS_PER_WORKER))
            count = select(func.count()).select_from(workers_table)
            await wait_until(
                lambda: _at_least(repo, count, workers), timeout=60, what="workers to register"
            )
            started = datetime.now(UTC)
            async with repo.engine.begin() as conn:
                await conn.execute(
                    update(runs_table)
                    .where(runs_table.c.owner == HOLD)
                    .values(owner=None, lease_expires_at=None, heartbeat_at=None)
                )
            await repo.notify_run_queued(ids[0])
            done = select(func.count()).where(
                runs_table.c.status.in_(("completed", "failed", "canceled", "interrupted"))
            )
            await wait_until(
                lambda: _at_least(repo, done, RUNS), timeout=600, what="the runs", interval=0.2
            )
        cpu = children_cpu() - cpu_before
        statuses = select(runs_table.c.status, func.count()).group_by(runs_table.c.status)
        async with repo.engine.connect() as conn:
            by_status = dict((await conn.execute(statuses)).all())
        if by_status != {"completed": RUNS}:
            raise SystemExit(f"benchmark runs ended {by_status}")
        ended = await scalar(repo, select(func.max(runs_table.c.ended_at)))
    return float((ended - started).total_seconds()), cpu


def children_cpu() -> float:
    """CPU seconds (user + system) of the child processes waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _at_least(repo: Repository, stmt: Any, count: int) -> bool:
    return int(await scalar(repo, stmt) or 0) >= count


async def throughput(folder: Path, url: str) -> dict[str, Any]:
    measured = {n: await makespan(folder / f"t{n}", url, n) for n in WORKER_COUNTS}
    base = measured[1][0]
    return {
        "runs": RUNS,
        "nodes_per_run": 10,
        "latency_ms": LATENCY_MS,
        "max_runs_per_worker": MAX_RUNS_PER_WORKER,
        "makespan_s": {str(n): round(span, 2) for n, (span, _) in measured.items()},
        "worker_cpu_s": {str(n): round(cpu, 2) for n, (_, cpu) in measured.items()},
        "speedup_2": round(base / measured[2][0], 2),
        "speedup_4": round(base / measured[4][0], 2),
    }


# ---- claim-to-first-node latency ---------------------------------------------------------------


async def first_node_latency(folder: Path, url: str) -> dict[str, Any]:
    """Latencies (ms) from a run's creation to its first NODE_STARTED, one idle worker."""
    settings = settings_for(folder, url)
    plan = one_node()
    samples: list[float] = []
    async with open_repository(settings) as repo:
        with Workers(folder, url) as procs:
            procs.start()
            count = select(func.count()).select_from(workers_table)
            await wait_until(lambda: _at_least(repo, count, 1), 60, "the worker to register")
            await asyncio.sleep(1.0)  # past its first poll: idle, waiting
            options = RunOptions.from_settings(settings)
            for _ in range(LATENCY_SAMPLES):
                run_id = await create_run(repo, settings, plan, options=options)
                first = (
                    select(events_table.c.timestamp)
                    .where(events_table.c.run_id == run_id, events_table.c.type == "NODE_STARTED")
                    .limit(1)
                )
                started = await wait_until(lambda: scalar(repo, first), 30, "the first node")  # noqa: B023
                run = await repo.get_run(run_id)
                assert run is not None
                samples.append((started - run.created_at).total_seconds() * 1000)
                ended = select(runs_table.c.ended_at).where(runs_table.c.id == run_id)
                await wait_until(lambda: scalar(repo, ended), 30, "the run to end")  # noqa: B023
                # the worker is idle again; the next run arrives at an arbitrary moment of
                # its polling cycle
                await asyncio.sleep(0.13)
    return {
        "p50_ms": round(statistics.median(samples), 1),
        "max_ms": round(max(samples), 1),
        "samples": len(samples),
    }


# ---- recovery ----------------------------------------------------------------------------------


async def recovery_once(folder: Path, url: str) -> float:
    """Seconds from a holder's SIGKILL to another worker's RUN_RESUMED."""
    await wipe_postgres(url)
    lease = f"{RECOVERY_LEASE_S:g}"
    settings = settings_for(folder, url, RUN_LEASE_S=lease)
    async with open_repository(settings) as repo:
        env = {"RUN_LEASE_S": lease, "OFFLINE_LATENCY_MS": "200", "MAX_CONCURRENCY": "1"}
        with Workers(folder, url, **env) as procs:
            holder = procs.start()
            count = select(func.count()).select_from(workers_table)
            await wait_until(lambda: _at_least(repo, count, 1), 60, "the first worker")
            options = RunOptions.from_settings(settings)
            run_id = await create_run(repo, settings, long_chain(200), options=options)
            started = select(func.count()).where(
                events_table.c.run_id == run_id, events_table.c.type == "NODE_COMPLETED"
            )
            await wait_until(lambda: _at_least(repo, started, 1), 60, "the run to start")
            procs.start()  # the second worker, idle
            await wait_until(lambda: _at_least(repo, count, 2), 60, "the second worker")
            # kill at an arbitrary moment of the holder's renewal cycle
            await asyncio.sleep((time.monotonic() * 7.3) % (RECOVERY_LEASE_S / 3))
            holder.send_signal(signal.SIGKILL)
            killed = datetime.now(UTC)
            holder.wait()
            resumed = (
                select(events_table.c.timestamp)
                .where(events_table.c.run_id == run_id, events_table.c.type == "RUN_RESUMED")
                .limit(1)
            )
            at = await wait_until(lambda: scalar(repo, resumed), 60, "the recovery")
    return float((at - killed).total_seconds())


async def recovery(folder: Path, url: str) -> dict[str, Any]:
    samples = [await recovery_once(folder / f"r{i}", url) for i in range(RECOVERY_SAMPLES)]
    return {
        "lease_s": RECOVERY_LEASE_S,
        "median_s": round(statistics.median(samples), 2),
        "max_s": round(max(samples), 2),
        "samples_s": [round(s, 2) for s in samples],
        "target_s": RECOVERY_LEASE_S + 2,
    }


# ---- main --------------------------------------------------------------------------------------


async def measure(folder: Path, pg_url: str | None, only: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "workers",
        "cpus": os.cpu_count(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "targets": TARGETS,
    }
    ok = True
    if pg_url is None:
        result["postgres"] = "skipped: no --database-url or CREW_TEST_DATABASE_URL"
    if pg_url is not None and only in (None, "throughput"):
        result["throughput"] = data = await throughput(folder / "throughput", pg_url)
        ok &= data["speedup_2"] >= TARGETS["speedup_2"]
        ok &= data["speedup_4"] >= TARGETS["speedup_4"]
    if only in (None, "latency"):
        latency: dict[str, Any] = {}
        if pg_url is not None:
            await wipe_postgres(pg_url)
            latency["postgres_notify"] = await first_node_latency(folder / "lpg", pg_url)
            ok &= latency["postgres_notify"]["p50_ms"] < TARGETS["pg_p50_ms"]
        sqlite_url = f"sqlite+aiosqlite:///{folder / 'latency.db'}"
        latency["sqlite_polling"] = await first_node_latency(folder / "lsqlite", sqlite_url)
        ok &= latency["sqlite_polling"]["p50_ms"] < TARGETS["sqlite_p50_ms"]
        result["first_node_latency"] = latency
    if pg_url is not None and only in (None, "recovery"):
        result["recovery"] = data = await recovery(folder / "recovery", pg_url)
        ok &= data["max_s"] <= data["target_s"]
    result["ok"] = bool(ok)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("CREW_TEST_DATABASE_URL"))
    parser.add_argument("--only", choices=("throughput", "latency", "recovery"))
    args = parser.parse_args()
    pg_url = args.database_url or None
    if pg_url is not None and not pg_url.startswith("postgresql"):
        parser.error("--database-url must be a PostgreSQL URL (postgresql+asyncpg://...)")
    # In the working directory, like the other benchmarks (see _engine.in_temp_folder).
    with tempfile.TemporaryDirectory(prefix=".crew-bench-", dir=".") as folder:
        result = asyncio.run(measure(Path(folder).resolve(), pg_url, args.only))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
