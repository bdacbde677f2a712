"""Crash anywhere: a real `crew run` of a 40-node plan killed with SIGKILL at seeded
random moments, then resumed with `crew run --resume`.

Each trial draws from its seed when to kill (uniformly within the duration an
uninterrupted run of the same plan took, counted from the moment the run's row exists)
and whether to kill the first resume as well. After the last resume:

- the run completed, every node once, and its files equal the uninterrupted run's
  (markdown exactly; sidecars and summary without their timings);
- no node that had completed before a kill was started or called again;
- the run's event ids are unique, strictly increasing and without a gap;
- `PRAGMA integrity_check` says ok and no foreign key dangles;
- every artifact row's sha256 and size match its stored content and the file on disk;
- no temporary copy of a file (`.<name>.<pid>.tmp`) is left in the run folder: besides
  those a kill may leave by chance, each trial plants one for a pending node after its
  first kill, the partial copy a kill in the middle of a write leaves.

Bounded: CREW_TORTURE_TRIALS trials (5 by default; `nox -s torture` runs more), seeds
from CREW_CRASH_SEED (default 1300) upward. Every process is killed when the test ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from crash_plans import crash_plan, snapshot, temporaries
from worker_procs import Db, EventRow, Proc, Procs, process_env, wait_for

pytestmark = pytest.mark.slow

TRIALS = int(os.environ.get("CREW_TORTURE_TRIALS", "5"))
BASE_SEED = int(os.environ.get("CREW_CRASH_SEED", "1300"))
PLAN = crash_plan()
KEYS = [node["id"] for node in PLAN["plan"]]
TERMINAL = {"RUN_COMPLETED", "RUN_FAILED", "RUN_CANCELED", "RUN_INTERRUPTED"}
ENV = {
    "OFFLINE_LATENCY_MS": "40",
    "MAX_CONCURRENCY": "4",
    # the default lease: a resume must not wait for it when the owner's pid is gone
    "RUN_LEASE_S": "15",
}
assert len(KEYS) == 40


@dataclass
class Bench:
    folder: Path
    db_file: Path
    runs_root: Path
    env: dict[str, str]
    db: Db
    duration_s: float
    """How long the uninterrupted run lasted, from its row's creation to its exit."""
    reference: dict[str, Any]


def start_run(procs: Procs, name: str, run_id: str, *, resume: bool) -> Proc:
    if resume:
        return procs.start(name, "run", "--resume", run_id, "--json", "-q")
    return procs.start(name, "run", "--task-file", "plan.json", "--run-id", run_id, "--json", "-q")


def wait_for_row(db: Db, proc: Proc, run_id: str) -> None:
    """Until the run's row exists; fails at once if the process exits before."""

    def created() -> bool:
        if db.call(lambda repo: repo.get_run(run_id)) is not None:
            return True
        assert proc.alive(), f"{proc.name} exited before creating its run: {proc.stderr()}"
        return False

    wait_for(created, timeout=60, what=f"the row of {run_id}", interval=0.005)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """One database and RUNS_ROOT for every trial, with an uninterrupted reference run."""
    folder = tmp_path_factory.mktemp("crash")
    db_file = folder / "crew.db"
    runs_root = folder / "runs"
    url = f"sqlite+aiosqlite:///{db_file}"
    env = process_env(url, runs_root, **ENV)
    (folder / "plan.json").write_text(json.dumps(PLAN), encoding="utf-8")
    with Db(url, runs_root) as db, Procs(folder, env) as procs:
        proc = start_run(procs, "reference", "reference", resume=False)
        wait_for_row(db, proc, "reference")
        started = time.monotonic()
        assert proc.wait(timeout=120) == 0, proc.stderr()
        duration = time.monotonic() - started
        assert json.loads(proc.stdout().splitlines()[-1])["status"] == "completed"
        reference = snapshot(runs_root / "reference")
        assert {p for p in reference if p.endswith(".md")} == {
            f"nodes/{key}/artifact_{key}.md" for key in KEYS
        }
        print(f"\nreference run: {duration:.2f} s from its creation to its exit")
        yield Bench(folder, db_file, runs_root, env, db, duration, reference)


def completed_keys(events: list[EventRow]) -> set[str]:
    return {e.node_key or "" for e in events if e.type == "NODE_COMPLETED"}


@dataclass(frozen=True)
class Kill:
    last_event_id: int
    """The newest event of the run when the process died."""
    done: set[str]
    """Nodes with a NODE_COMPLETED event by then."""


def check_events(events: list[EventRow], kills: list[Kill]) -> None:
    types = [e.type for e in events]
    assert types[:2] == ["RUN_STARTED", "PLAN_CREATED"], types[:5]
    assert [t for t in types if t in TERMINAL] == ["RUN_COMPLETED"], "a terminal event too many"
    assert types[-1] == "RUN_COMPLETED"
    ids = [e.id for e in events]
    assert ids == sorted(set(ids)), "event ids not unique and strictly increasing"
    # one process wrote at a time: an id missing inside the run would be a lost event
    assert ids == list(range(ids[0], ids[0] + len(ids))), "a gap in the run's event ids"
    # a resume killed before it wrote RUN_RESUMED leaves none, a run killed before it
    # started is started (RUN_STARTED) by the resume
    started = any(kill.last_event_id for kill in kills)
    assert (1 if started else 0) <= types.count("RUN_RESUMED") <= len(kills), types

    for kind in ("NODE_COMPLETED", "NODE_STARTED", "LLM_CALL"):
        counts = Counter(e.node_key for e in events if e.type == kind)
        if kind == "NODE_COMPLETED":
            assert counts == dict.fromkeys(KEYS, 1), counts
        else:
            assert set(counts) == set(KEYS), kind
    # after its completion, a node is never started or called again
    completed_at = {e.node_key: i for i, e in enumerate(events) if e.type == "NODE_COMPLETED"}
    for i, e in enumerate(events):
        if e.type in ("NODE_STARTED", "LLM_CALL"):
            assert i < completed_at[e.node_key], f"{e.type} of {e.node_key} after it completed"

    # and, the way an operator counts it: nothing done before a kill runs after it
    for kill in kills:
        after = [e for e in events if e.id > kill.last_event_id]
        assert after[0].type == ("RUN_RESUMED" if kill.last_event_id else "RUN_STARTED")
        again = {e.node_key for e in after if e.type in ("NODE_STARTED", "LLM_CALL")}
        assert not again & kill.done, f"called again after the kill: {again & kill.done}"
    if kills:
        last = [e for e in events if e.id > kills[-1].last_event_id]
        started = Counter(e.node_key for e in last if e.type == "NODE_STARTED")
        assert set(started) == set(KEYS) - kills[-1].done
        assert set(started.values()) <= {1}, started


def check_database(bench: Bench, run_id: str) -> None:
    with contextlib.closing(sqlite3.connect(bench.db_file, timeout=30)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    artifacts = bench.db.call(lambda repo: repo.list_artifacts(run_id=run_id))
    paths = Counter(a.path for a in artifacts)
    assert all(count == 1 for count in paths.values()), paths
    types = Counter((a.node_id is not None, a.type) for a in artifacts)
    assert types[(True, "markdown")] == len(KEYS) and types[(True, "sidecar")] == len(KEYS)
    for artifact in artifacts:
        assert artifact.content is not None, artifact.path
        stored = artifact.content.encode("utf-8")
        assert hashlib.sha256(stored).hexdigest() == artifact.sha256, artifact.path
        assert len(stored) == artifact.size, artifact.path
        assert (bench.runs_root / artifact.path).read_bytes() == stored, artifact.path


def trial_moments(seed: int, duration_s: float) -> list[float]:
    """When to kill, in seconds after the run's row exists (then after the resume has
    claimed the run): one kill, or two (the first resume killed too) one time in three."""
    rng = random.Random(seed)
    moments = [rng.uniform(0, duration_s)]
    if rng.random() < 1 / 3:
        moments.append(rng.uniform(0, duration_s / 2))
    return moments


def plant_temporary(bench: Bench, run_id: str, done: set[str], pid: int, seed: int) -> str:
    """What a kill in the middle of a write leaves, made sure of: the killed process's
    partial temporary copy of a pending node's markdown (`.<name>.<pid>.tmp`).
    Returns its path in the run folder ("" when every node had completed)."""
    pending = [key for key in KEYS if key not in done]
    if not pending:
        return ""
    key = random.Random(seed).choice(pending)
    whole = bench.reference[f"nodes/{key}/artifact_{key}.md"].encode("utf-8")
    path = bench.runs_root / run_id / "nodes" / key / f".artifact_{key}.md.{pid}.tmp"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(whole[: len(whole) // 2])
    return path.relative_to(bench.runs_root / run_id).as_posix()


@pytest.mark.parametrize("trial", range(TRIALS))
def test_killed_anywhere_then_resumed(bench: Bench, trial: int) -> None:
    seed = BASE_SEED + trial
    run_id = f"crash-{seed}"
    moments = trial_moments(seed, bench.duration_s)
    db = bench.db
    kills: list[Kill] = []
    landed: list[str] = []
    killed: list[int] = []
    planted = ""
    with Procs(bench.folder, bench.env) as procs:
        for number, moment in enumerate(moments):
            proc = start_run(procs, f"{run_id}-{number}", run_id, resume=number > 0)
            if number == 0:
                wait_for_row(db, proc, run_id)
            else:
                wait_for(
                    lambda p=proc: p.owns(db.run(run_id).owner) or not p.alive(),
                    timeout=60,
                    what=f"the resume #{number} of {run_id} to claim it",
                    procs=procs,
                    interval=0.005,
                )
            time.sleep(moment)
            if not proc.alive():
                assert proc.wait(timeout=5) == 0, proc.stderr()
                landed.append(f"{moment:.3f}s: after the exit")
                break
            proc.signal(signal.SIGKILL)
            if proc.wait(timeout=30) == 0:  # it exited just before the signal
                landed.append(f"{moment:.3f}s: after the exit")
                break
            assert proc.popen.returncode == -signal.SIGKILL, proc.stderr()
            killed.append(proc.pid)
            events = db.events(run_id)
            done = completed_keys(events)
            if events and events[-1].type == "RUN_COMPLETED":
                landed.append(f"{moment:.3f}s: after RUN_COMPLETED")
                break
            run = db.run(run_id)
            if not events:  # created (perhaps claimed), not started: still queued
                assert run.status == "queued", run.status
                landed.append(f"{moment:.3f}s: before the run started")
            else:
                assert run.status == "running" and run.owner, "a killed run's row changed"
                landed.append(f"{moment:.3f}s: {len(done)}/{len(KEYS)} nodes completed")
            kills.append(Kill(events[-1].id if events else 0, done))
            if number == 0:
                planted = plant_temporary(bench, run_id, done, proc.pid, seed)

        final = start_run(procs, f"{run_id}-final", run_id, resume=True)
        code = final.wait(timeout=120)
        assert code == 0, procs.logs()
        assert json.loads(final.stdout().splitlines()[-1])["status"] == "completed"
        strays = temporaries(bench.runs_root / run_id)
        print(
            f"\ntrial seed={seed}: kills at {'; '.join(landed)}; planted: {planted or '-'}; "
            f"temporaries left: {strays}"
        )

    run = db.run(run_id)
    assert run.status == "completed" and run.owner is None
    nodes = db.nodes(run_id)
    assert {key: node.status for key, node in nodes.items()} == dict.fromkeys(KEYS, "completed")
    check_events(db.events(run_id), kills)
    check_database(bench, run_id)
    files = snapshot(bench.runs_root / run_id)
    assert files.keys() == bench.reference.keys()
    for path, content in bench.reference.items():
        assert files[path] == content, f"{path} differs from the uninterrupted run's"
    # a killed writer's temporary copies (`.<name>.<pid>.tmp`) are removed by the resume
    assert not strays, f"temporaries left by the killed processes {killed}: {strays}"
