"""Concurrent writers on one SQLite file: `crew serve`, three `crew run` processes, two
`crew events tail --json` followers and API reads in a loop, all at once.

For CREW_TORTURE_SECONDS (10 by default; `nox -s torture` runs longer): three slots
keep a foreground `crew run` going (a new run as soon as one ends), the server gets a
task by `POST /tasks` every couple of seconds and executes it, two slots keep a tail
following the newest run not yet followed, and a thread reads the API (lists, one run's
events, nodes, artifacts and a download, health, workers, metrics). Then:

- no process printed a lock error ("database is locked", SQLITE_BUSY, an
  OperationalError) or a traceback, and every one exited as it should;
- no API response was a 5xx or mentioned a lock, and no request failed in transport;
- every tail printed exactly the run's events in the database: same ids, same order,
  same types, node keys and payloads;
- every run completed, and `PRAGMA integrity_check` says ok.

Every process the test starts is killed when it ends, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from crash_plans import crash_plan
from worker_procs import API_KEY, Db, Proc, Procs, process_env, stop_gracefully, wait_for

from tests.api_server import free_port, wait_until_serving

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("CREW_TORTURE_SECONDS", "10"))
SEED = int(os.environ.get("CREW_CONCURRENCY_SEED", "1313"))
RUN_SLOTS = 3
TAIL_SLOTS = 2
TASK_EVERY_S = 2.0
PLAN = crash_plan()  # 40 nodes: 80 files and some 200 events a run
LOCK_ERROR = re.compile(
    r"database is locked|database table is locked|SQLITE_BUSY|SQLITE_LOCKED|OperationalError",
    re.IGNORECASE,
)
HEADERS = {"X-API-Key": API_KEY}


@dataclass
class Reads:
    """What the API reader saw."""

    count: int = 0
    failures: list[str] = field(default_factory=list)


def read_api(base: str, stop: threading.Event, reads: Reads) -> None:
    """GET in a loop until `stop`: each response must be < 500 and say nothing of locks."""
    rng = random.Random(SEED)
    with httpx.Client(base_url=base, headers=HEADERS, timeout=30) as client:

        def get(url: str) -> httpx.Response | None:
            try:
                response = client.get(url)
            except httpx.HTTPError as error:
                reads.failures.append(f"GET {url}: {type(error).__name__}: {error}")
                return None
            reads.count += 1
            if response.status_code >= 500 or LOCK_ERROR.search(response.text):
                reads.failures.append(f"GET {url}: {response.status_code} {response.text[:300]}")
            return response

        while not stop.is_set():
            try:
                read_once(get, rng)
            except Exception as error:  # a body that is not what its status says
                reads.failures.append(f"{type(error).__name__}: {error}")


def read_once(get: Callable[[str], httpx.Response | None], rng: random.Random) -> None:
    """One round of reads: lists, then one run's details, one artifact and its file."""
    get("/health")
    listing = get("/runs?limit=50")
    if listing is None or listing.status_code != 200:
        return
    runs = listing.json()["items"]
    if runs:
        run_id = rng.choice(runs)["id"]
        for url in (
            f"/runs/{run_id}",
            f"/runs/{run_id}/nodes",
            f"/runs/{run_id}/events?limit=200",
            f"/events?run_id={run_id}&limit=50",
            f"/runs/{run_id}/summary",
        ):
            get(url)
        artifacts = get(f"/runs/{run_id}/artifacts")
        if artifacts is not None and artifacts.status_code == 200 and artifacts.json()["items"]:
            artifact = rng.choice(artifacts.json()["items"])
            get(f"/artifacts/{artifact['id']}")
            get(f"/artifacts/{artifact['id']}/download")
    get("/workers")
    get("/metrics")


def post_task(base: str, number: int) -> str:
    response = httpx.post(
        f"{base}/tasks",
        json={"title": f"Task {number}", "task": PLAN},
        headers=HEADERS,
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


def tail_lines(proc: Proc) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout().splitlines() if line.strip()]


def test_serve_runs_tails_and_reads_on_one_sqlite_file(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'crew.db'}"
    runs_root = tmp_path / "runs"
    # The default lease (15 s): takeovers are not this test's subject, and a 2 s lease can
    # run out under this load while its owner lives (then the owner stops, exit 2).
    env = process_env(
        db_url, runs_root, OFFLINE_LATENCY_MS="50", TASKS_RATE_BURST="100", RUN_LEASE_S="15"
    )
    (tmp_path / "plan.json").write_text(json.dumps(PLAN), encoding="utf-8")
    runs: list[Proc] = []
    tails: dict[str, Proc] = {}
    run_ids: list[str] = []
    reads = Reads()
    stop = threading.Event()
    reader: threading.Thread | None = None
    with Db(db_url, runs_root) as db, Procs(tmp_path, env) as procs:
        try:
            port = free_port()
            server = procs.serve(
                "serve", port, SERVE_MAX_CONCURRENT_RUNS="2", METRICS_ENABLED="true"
            )
            base = f"http://127.0.0.1:{port}"
            wait_until_serving(server.popen, f"{base}/health", timeout_s=30)  # type: ignore[arg-type]
            reader = threading.Thread(target=read_api, args=(base, stop, reads), daemon=True)
            reader.start()

            slots: list[Proc | None] = [None] * RUN_SLOTS
            tail_slots: list[Proc | None] = [None] * TAIL_SLOTS
            tasks = 0
            next_task = time.monotonic()
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                for i, slot in enumerate(slots):
                    if slot is None or not slot.alive():
                        run_id = f"slot{i}-{len(runs):03d}"
                        run = procs.start(
                            run_id, "run", "--task-file", "plan.json", "--run-id", run_id,
                            "--json", "-q",
                        )  # fmt: skip
                        runs.append(run)
                        run_ids.append(run_id)
                        slots[i] = run
                if time.monotonic() >= next_task:
                    run_ids.append(post_task(base, tasks))
                    tasks += 1
                    next_task += TASK_EVERY_S
                for i, tail in enumerate(tail_slots):
                    if tail is not None and tail.alive():
                        continue
                    # the newest run still going that nobody follows yet
                    going = {r for r, s in db.statuses().items() if s in ("queued", "running")}
                    candidates = [r for r in reversed(run_ids) if r in going and r not in tails]
                    if candidates:
                        tails[candidates[0]] = tail_slots[i] = procs.start(
                            f"tail-{candidates[0]}", "events", "tail", candidates[0], "--json"
                        )
                time.sleep(0.05)

            for run in runs:
                assert run.wait(timeout=120) == 0, run.stderr()
            wait_for(lambda: db.all_completed(run_ids), timeout=120, what="every run", procs=procs)
            for tail in tails.values():
                assert tail.wait(timeout=60) == 0, tail.stderr()
        finally:
            stop.set()
            if reader is not None:
                reader.join(timeout=60)
        assert stop_gracefully(server) in (0, -signal.SIGTERM), server.stderr()

        print(
            f"\n{len(runs)} crew run processes, {tasks} tasks posted, {len(tails)} tails, "
            f"{reads.count} API reads in {SECONDS:g} s"
        )
        assert not reads.failures, "\n".join(reads.failures[:20])
        for proc in procs.procs:
            output = proc.stdout() + proc.stderr()
            if proc.name.startswith("tail-"):
                output = proc.stderr()  # its stdout is the run's events (checked below)
            assert not LOCK_ERROR.search(output), f"{proc.name}: {output[-3000:]}"
            assert "Traceback" not in output, f"{proc.name}: {output[-3000:]}"
        for run in runs:
            assert json.loads(run.stdout().splitlines()[-1])["status"] == "completed"

        for run_id, tail in tails.items():
            stored = [(e.id, e.type, e.node_key, e.payload) for e in db.events(run_id)]
            printed = [(e["id"], e["type"], e["node_key"], e["payload"]) for e in tail_lines(tail)]
            assert {e["run_id"] for e in tail_lines(tail)} == {run_id}
            assert [p[0] for p in printed] == [s[0] for s in stored], run_id
            assert printed == stored, run_id
        database = tmp_path / "crew.db"
        with contextlib.closing(sqlite3.connect(database, timeout=30)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
