"""How soon `crew events tail` prints an event after its commit, while following a run.

A 30-node chain (each node waits on the one before) is queued with `crew run --detach`,
`crew events tail ID --json` starts following it, and `crew worker --once` executes it
with the offline provider answering after OFFLINE_LATENCY_MS=100. Meanwhile an observer
thread of this script polls the SQLite file every millisecond for new event ids: the
moment an id first shows is its commit (to within about a millisecond). Each line the
tail prints is stamped when this script reads it. Reported: the delay from commit to
print (p50, p90, max) and, for scale, from the event's own timestamp (taken when the
engine created it, before its group commit). Target: p50 from commit <= 100 ms.

With --database-url (or CREW_TEST_DATABASE_URL) a PostgreSQL database is used instead
(its public schema is wiped first); the observer then polls it through asyncpg.

Prints one JSON line. Usage: python benchmarks/events_follow.py [--nodes N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _postgres import wipe_postgres

TARGET_P50_MS = 100.0
RUN_ID = "follow-bench"
OBSERVER_INTERVAL_S = 0.001


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


class CommitObserver(threading.Thread):
    """Records when each event id of the run first becomes visible to a reader."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            if self.url.startswith("sqlite"):
                self._sqlite(self.url.split(":///", 1)[1])
            else:
                asyncio.run(self._postgres())
        except BaseException as error:  # reported by the main thread
            self.error = error

    def _note(self, ids: list[int]) -> None:
        now = time.time()
        for event_id in ids:
            self.seen.setdefault(event_id, now)

    def _sqlite(self, path: str) -> None:
        while not Path(path).exists() and not self.stop.is_set():
            time.sleep(OBSERVER_INTERVAL_S)
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=5000")
        top = 0
        while not self.stop.is_set():
            rows = conn.execute(
                "SELECT id FROM events WHERE run_id = ? AND id > ? ORDER BY id", (RUN_ID, top)
            ).fetchall()
            if rows:
                self._note([row[0] for row in rows])
                top = rows[-1][0]
            time.sleep(OBSERVER_INTERVAL_S)
        conn.close()

    async def _postgres(self) -> None:
        import asyncpg

        dsn = "postgresql://" + self.url.split("://", 1)[1]
        conn = await asyncpg.connect(dsn)
        top = 0
        try:
            while not self.stop.is_set():
                rows = await conn.fetch(
                    "SELECT id FROM events WHERE run_id = $1 AND id > $2 ORDER BY id", RUN_ID, top
                )
                if rows:
                    self._note([row[0] for row in rows])
                    top = rows[-1][0]
                await asyncio.sleep(OBSERVER_INTERVAL_S)
        finally:
            await conn.close()


def reset_postgres(url: str) -> None:
    asyncio.run(wipe_postgres(url))


def crew(args: list[str], env: dict[str, str], cwd: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crew", *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"crew {' '.join(args)} failed ({result.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--latency-ms", type=int, default=100)
    parser.add_argument("--database-url", default=os.environ.get("CREW_TEST_DATABASE_URL"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="crew-follow-bench-"))
    try:
        url = args.database_url or f"sqlite+aiosqlite:///{folder / 'crew.db'}"
        if url.startswith("postgresql"):
            reset_postgres(url)
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "RUNS_ROOT": str(folder / "runs"),
            "OFFLINE_LATENCY_MS": str(args.latency_ms),
            "LOG_LEVEL": "WARNING",
            "NO_COLOR": "1",
        }
        plan = {
            "title": "Follow benchmark",
            "plan": [
                {"id": f"n{i}", "title": f"Step {i}", "deps": [f"n{i - 1}"] if i else []}
                for i in range(args.nodes)
            ],
        }
        (folder / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
        if url.startswith("postgresql"):
            crew(["db", "upgrade"], env, folder)
        crew(["run", "--task-file", "plan.json", "--run-id", RUN_ID, "--detach"], env, folder)
        observer = CommitObserver(url)
        observer.start()
        tail = subprocess.Popen(
            [sys.executable, "-m", "crew", "events", "tail", RUN_ID, "--json"],
            env=env,
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        printed: list[tuple[float, dict[str, Any]]] = []

        def read() -> None:
            assert tail.stdout is not None
            for line in tail.stdout:
                printed.append((time.time(), json.loads(line)))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(2.0)  # the tail is following (it prints nothing for a queued run)
        began = time.monotonic()
        crew(["worker", "--once"], env, folder)
        elapsed = time.monotonic() - began
        tail.wait(timeout=60)
        reader.join(timeout=10)
        observer.stop.set()
        observer.join(timeout=10)
        if observer.error is not None:
            raise observer.error
        if tail.returncode != 0:
            sys.stderr.write(tail.stderr.read() if tail.stderr else "")
            raise SystemExit(f"crew events tail exited {tail.returncode}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    from_commit: list[float] = []
    from_timestamp: list[float] = []
    for at, event in printed:
        committed = observer.seen.get(event["id"])
        if committed is not None:
            from_commit.append(max(0.0, at - committed) * 1000)
        created = datetime.fromisoformat(event["timestamp"]).timestamp()
        from_timestamp.append((at - created) * 1000)
    p50 = statistics.median(from_commit)
    print(
        json.dumps(
            {
                "benchmark": "events_follow",
                "database": "sqlite" if url.startswith("sqlite") else "postgresql",
                "nodes": args.nodes,
                "latency_ms": args.latency_ms,
                "run_s": round(elapsed, 2),
                "events": len(printed),
                "observed_commits": len(from_commit),
                "commit_to_print_p50_ms": round(p50, 1),
                "commit_to_print_p90_ms": round(percentile(from_commit, 90), 1),
                "commit_to_print_max_ms": round(max(from_commit), 1),
                "created_to_print_p50_ms": round(statistics.median(from_timestamp), 1),
                "created_to_print_p90_ms": round(percentile(from_timestamp, 90), 1),
                "target_p50_ms": TARGET_P50_MS,
                "ok": p50 <= TARGET_P50_MS,
            }
        )
    )


if __name__ == "__main__":
    main()
