"""Leased execution with real processes: workers, servers and foreground runs that are
killed, paused and restarted while they hold runs; and, in process, the event order of
concurrent writers, the LISTEN connection, and the worker loop's failures.

Every process test (marked slow) is bounded: leases of 2 s (RUN_LEASE_S), runs made to
last with the offline provider's simulated latency (OFFLINE_LATENCY_MS), and waits that
fail with every process's log instead of hanging. Nothing here asserts how long anything
took. Every process a test starts is killed when it ends (worker_procs.Procs).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_support import n, plan_dict
from worker_procs import (
    API_KEY,
    Db,
    EventRow,
    Procs,
    of_type,
    pause,
    per_node,
    process_env,
    wait_for,
)

from crew.store.leases import Fence
from crew.store.records import NewEvent
from tests.api_helpers import H, api
from tests.api_server import free_port, wait_until_serving

DIAMOND = plan_dict(n("a"), n("b", "a"), n("c", "a"), n("d", "b", "c"), title="Diamond")
DIAMOND_KEYS = ["a", "b", "c", "d"]
CHAIN = plan_dict(*(n(f"s{i}", *([f"s{i - 1}"] if i else [])) for i in range(6)), title="Chain")
CHAIN_KEYS = [f"s{i}" for i in range(6)]
LOST_LEASE = "this process stops executing the run"
STOPPED = "this process stopped executing it"


def completed_nodes(events: list[EventRow], run_id: str) -> set[str]:
    return {e.node_key or "" for e in events if e.run_id == run_id and e.type == "NODE_COMPLETED"}


def assert_each_node_once(db: Db, run_ids: list[str], keys: list[str]) -> list[EventRow]:
    """Every run completed, each node completed exactly once (rows and events agree)."""
    events = db.events()
    completions = per_node(events, "NODE_COMPLETED")
    for run_id in run_ids:
        assert {key: completions[(run_id, key)] for key in keys} == dict.fromkeys(keys, 1), run_id
        nodes = db.nodes(run_id)
        assert {k: node.status for k, node in nodes.items()} == dict.fromkeys(keys, "completed")
        terminal = [e.type for e in events if e.run_id == run_id and e.type.startswith("RUN_")]
        assert terminal.count("RUN_COMPLETED") == 1 and terminal[-1] == "RUN_COMPLETED", terminal
        run = db.run(run_id)
        assert run.status == "completed" and run.owner is None
    return events


# ---- 1. three workers share a queue; one is killed --------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_three_workers_one_killed_every_run_completes_once(tmp_path: Path, pg_url: str) -> None:
    runs_root = tmp_path / "runs"
    env = process_env(pg_url, runs_root, OFFLINE_LATENCY_MS="200", MAX_CONCURRENCY="2")
    with Db(pg_url, runs_root) as db, Procs(tmp_path, env) as procs:
        run_ids = db.create_runs(DIAMOND, 30)
        workers = [procs.worker(f"w{i}", "--max-runs", "3") for i in range(3)]
        victim = workers[0]

        def victim_mid_run() -> list[str]:
            """The victim's runs, once one of them has some nodes done, not all."""
            held = db.held_by(victim)
            events = db.events()
            if any(0 < len(completed_nodes(events, r)) < len(DIAMOND_KEYS) for r in held):
                return held
            return []

        wait_for(victim_mid_run, timeout=30, what="the victim to be mid-run", procs=procs)
        victim.kill()
        # What the victim had written is final now: its runs, and the nodes it completed.
        held = {run_id: db.run(run_id).owner for run_id in db.held_by(victim)}
        assert held, "the victim finished its runs before it was killed"
        before = db.events()
        done_before = {r: completed_nodes(before, r) for r in held}
        assert any(done_before.values())

        wait_for(lambda: db.all_completed(run_ids), timeout=45, what="every run", procs=procs)
        events = assert_each_node_once(db, run_ids, DIAMOND_KEYS)

        # the victim's runs were taken over once their lease ran out, and said so
        for run_id, owner in held.items():
            resumed = [e.payload for e in of_type(events, "RUN_RESUMED") if e.run_id == run_id]
            assert (resumed[0]["reason"], resumed[0]["previous_owner"]) == ("lease_expired", owner)
            assert db.run(run_id).recoveries >= 1
        # the other runs were taken over only if their live owner missed its renewals (a
        # machine so loaded that an event loop stalled for a whole lease): never manually
        for event in of_type(events, "RUN_RESUMED"):
            assert event.payload["reason"] == "lease_expired", event.payload
        # no LLM call of a node completed before the kill was made again
        calls = per_node(events, "LLM_CALL")
        for run_id, keys in done_before.items():
            for key in keys:
                assert calls[(run_id, key)] == 1, (run_id, key)
        started_again = Counter(
            (e.run_id, e.node_key) for e in of_type(events, "NODE_STARTED") if e.run_id in held
        )
        for run_id, keys in done_before.items():
            assert all(started_again[(run_id, key)] == 1 for key in keys)
        for worker in workers[1:]:
            assert worker.alive(), worker.stderr()
            assert "Traceback" not in worker.stderr()


# ---- 2. fencing: a paused owner continues after another took its run ---------------------


def paused_owner_taken_over(
    tmp_path: Path, db_url: str, procs: Procs, db: Db
) -> tuple[str, set[str], Any, Any]:
    """Worker A executes a chain run; it is paused mid-node past its lease and worker B
    takes the run over. Returns (run id, nodes A completed, A, B); A is still paused."""
    (run_id,) = db.create_runs(CHAIN, 1, prefix="fenced")
    first = procs.worker("a")

    def mid_node() -> bool:
        events = db.events(run_id)
        done = completed_nodes(events, run_id)
        started = {e.node_key for e in of_type(events, "NODE_STARTED")}
        return len(done) >= 2 and bool(started - done)

    wait_for(mid_node, timeout=30, what="A to be mid-node", procs=procs)
    pause(first, db_url)
    done_by_first = completed_nodes(db.events(run_id), run_id)
    owner_first = db.run(run_id).owner
    assert first.owns(owner_first)
    second = procs.worker("b")

    def taken_over() -> bool:
        """B holds the run and has recorded its RUN_RESUMED (or finished it)."""
        run = db.run(run_id)
        resumed = of_type(db.events(run_id), "RUN_RESUMED")
        return bool(resumed) and (second.owns(run.owner) or run.status == "completed")

    wait_for(taken_over, timeout=30, what="B to take the run over", procs=procs)
    return run_id, done_by_first, first, second


def file_states(runs_root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(runs_root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in runs_root.rglob("*")
        if p.is_file()
    }


def snapshot(db: Db, run_id: str, runs_root: Path) -> tuple[Any, ...]:
    """Everything of a run, in the database and on disk."""
    return (
        db.run(run_id),
        db.nodes(run_id),
        db.artifacts(run_id),
        db.events(run_id),
        file_states(runs_root),
    )


@pytest.mark.slow
def test_fencing_a_paused_owner_writes_nothing_after_the_takeover(
    tmp_path: Path, db_url: str
) -> None:
    """A is paused mid-node past its lease; B takes the run over and finishes it; then A
    goes on: from then on nothing of the run changes, in the database or on disk."""
    runs_root = tmp_path / "runs"
    env = process_env(db_url, runs_root, OFFLINE_LATENCY_MS="300", MAX_CONCURRENCY="1")
    with Db(db_url, runs_root) as db, Procs(tmp_path, env) as procs:
        run_id, done_by_first, first, _ = paused_owner_taken_over(tmp_path, db_url, procs, db)
        wait_for(lambda: db.all_completed([run_id]), timeout=30, what="the run", procs=procs)
        before = snapshot(db, run_id, runs_root)
        first.signal(signal.SIGCONT)
        wait_for(lambda: STOPPED in first.stderr(), timeout=20, what="A to stop", procs=procs)
        assert snapshot(db, run_id, runs_root) == before

        # the run is B's: each node completed once, A's in-flight answer never landed
        events = assert_each_node_once(db, [run_id], CHAIN_KEYS)
        assert per_node(events, "LLM_CALL") == Counter({(run_id, k): 1 for k in CHAIN_KEYS})
        resumed_at = next(i for i, e in enumerate(events) if e.type == "RUN_RESUMED")
        assert events[resumed_at].payload["reason"] == "lease_expired"
        assert first.owns(events[resumed_at].payload["previous_owner"])
        after = {e.node_key for e in of_type(events[resumed_at:], "NODE_STARTED")}
        assert after == set(CHAIN_KEYS) - done_by_first
        assert events[-1].type == "RUN_COMPLETED"
        run = db.run(run_id)
        assert run.recoveries == 1 and run.lease_generation == 2
        for artifact in db.artifacts(run_id):
            data = (runs_root / artifact.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == artifact.sha256, artifact.path
        summary = json.loads((runs_root / run_id / "summary.json").read_text(encoding="utf-8"))
        assert summary["status"] == "completed"
        # A lived on (it only lost that run), and said why it stopped
        assert first.alive() and "Traceback" not in first.stderr()
        assert LOST_LEASE in first.stderr()


# ---- 3. crew serve restarted while it executes runs --------------------------------------


def start_servers(procs: Procs, servers: dict[str, dict[str, str]]) -> list[tuple[Any, str]]:
    """Start `crew serve` processes side by side (name: extra environment); returns
    (process, base URL) for each, once it answers."""
    started = []
    for name, env in servers.items():
        port = free_port()
        started.append((procs.serve(name, port, **env), f"http://127.0.0.1:{port}"))
    for server, base in started:
        wait_until_serving(server.popen, f"{base}/health", timeout_s=30)  # type: ignore[arg-type]
    return started


def start_server(procs: Procs, name: str, **env: str) -> tuple[Any, str]:
    ((server, base),) = start_servers(procs, {name: env})
    return server, base


def post_task(base: str, plan: dict[str, Any], client: httpx.Client | None = None) -> str:
    send = client or httpx
    response = send.post(
        f"{base}/tasks",
        json={"title": plan["title"], "task": plan},
        headers={"X-API-Key": API_KEY},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_serve_restarted_while_runs_execute(tmp_path: Path, sqlite_url: str, signum: int) -> None:
    runs_root = tmp_path / "runs"
    env = process_env(
        sqlite_url,
        runs_root,
        OFFLINE_LATENCY_MS="300",
        MAX_CONCURRENCY="1",
        WORKER_SHUTDOWN_GRACE_S="0.5",
    )
    with Db(sqlite_url, runs_root) as db, Procs(tmp_path, env) as procs:
        server, base = start_server(procs, "serve1")
        run_ids = [post_task(base, CHAIN) for _ in range(3)]

        def all_mid_run() -> bool:
            events = db.events()
            return all(0 < len(completed_nodes(events, r)) < len(CHAIN_KEYS) for r in run_ids)

        wait_for(all_mid_run, timeout=30, what="3 runs mid-way", procs=procs)
        owner = db.run(run_ids[0]).owner
        assert server.owns(owner)
        server.signal(signum)
        code = server.wait(timeout=30)
        # the runs left unfinished (all of them, unless the machine was slow enough for
        # one to reach its end before the signal)
        runs = db.runs()
        stopped = [r for r in run_ids if runs[r].status != "completed"]
        assert stopped
        if signum == signal.SIGTERM:
            assert code in (0, -signal.SIGTERM), server.stderr()  # a clean shutdown
            assert "Traceback" not in server.stderr()
            # given back to the queue at the end of the grace period, not interrupted
            assert all((runs[r].status, runs[r].owner) == ("queued", None) for r in stopped)
        done_before = {r: completed_nodes(db.events(), r) for r in run_ids}

        start_server(procs, "serve2")
        wait_for(lambda: db.all_completed(run_ids), timeout=30, what="the runs", procs=procs)
        events = assert_each_node_once(db, run_ids, CHAIN_KEYS)
        reason = "released" if signum == signal.SIGTERM else "lease_expired"
        for run_id in run_ids:
            mine = [e for e in events if e.run_id == run_id]
            types = [e.type for e in mine]
            assert "RUN_INTERRUPTED" not in types
            if run_id not in stopped:
                assert "RUN_RESUMED" not in types
                continue
            assert types.count("RUN_RELEASED") == (1 if signum == signal.SIGTERM else 0)
            (resumed,) = of_type(mine, "RUN_RESUMED")
            assert resumed.payload["reason"] == reason
            assert resumed.payload["previous_owner"] == (None if reason == "released" else owner)
            calls = per_node(mine, "LLM_CALL")
            assert all(calls[(run_id, key)] == 1 for key in done_before[run_id])


# ---- 4. a foreground crew run killed, finished by a worker -------------------------------


@pytest.mark.slow
def test_killed_foreground_run_is_finished_by_a_worker(tmp_path: Path, sqlite_url: str) -> None:
    runs_root = tmp_path / "runs"
    env = process_env(sqlite_url, runs_root, OFFLINE_LATENCY_MS="300", MAX_CONCURRENCY="1")
    (tmp_path / "plan.json").write_text(json.dumps(CHAIN), encoding="utf-8")
    with Db(sqlite_url, runs_root) as db, Procs(tmp_path, env) as procs:
        worker = procs.worker("w")
        foreground = procs.start("run", "run", "--task-file", "plan.json", "--run-id", "fg")
        wait_for(
            lambda: len(completed_nodes(db.events("fg"), "fg")) >= 2,
            timeout=30,
            what="the foreground run to be mid-way",
            procs=procs,
        )
        foreground.kill()
        owner = db.run("fg").owner
        assert foreground.owns(owner) and db.run("fg").status == "running"
        done_before = completed_nodes(db.events("fg"), "fg")
        assert done_before < set(CHAIN_KEYS)

        wait_for(lambda: db.all_completed(["fg"]), timeout=30, what="the run", procs=procs)
        events = assert_each_node_once(db, ["fg"], CHAIN_KEYS)
        (resumed,) = of_type(events, "RUN_RESUMED")
        assert resumed.payload["reason"] == "lease_expired"
        assert resumed.payload["previous_owner"] == owner
        calls = per_node(events, "LLM_CALL")
        assert all(calls[("fg", key)] == 1 for key in done_before)
        assert "recovers run fg" in worker.stderr()


# ---- 5. API processes that only queue, workers that execute ------------------------------

PAIR = plan_dict(n("a"), n("b", "a"), title="Pair")
PAIR_KEYS = ["a", "b"]
SINGLE = plan_dict(n("a"), title="Single")


def burst(bases: list[str], count: int, plan: dict[str, Any]) -> list[str]:
    """`count` POST /tasks at once, spread over the servers."""
    with httpx.Client() as client, ThreadPoolExecutor(max_workers=16) as pool:
        futures = [
            pool.submit(post_task, bases[i % len(bases)], plan, client) for i in range(count)
        ]
        return [future.result() for future in futures]


def assert_started_once(db: Db, run_ids: list[str], executors: list[Any]) -> None:
    """Each run was started once, by one of `executors`, and never taken over."""
    events = db.events()
    started = Counter(e.run_id for e in of_type(events, "RUN_STARTED"))
    assert started == Counter(dict.fromkeys(run_ids, 1))
    assert not of_type(events, "RUN_RESUMED")
    for event in of_type(events, "RUN_STARTED"):
        assert any(proc.owns(event.payload["owner"]) for proc in executors), event.payload


@pytest.mark.slow
@pytest.mark.postgres
def test_two_api_processes_two_workers_a_burst_of_tasks(tmp_path: Path, pg_url: str) -> None:
    runs_root = tmp_path / "runs"
    # nobody is killed here: a lease long enough that no renewal is late, however loaded
    env = process_env(pg_url, runs_root, TASKS_RATE_BURST="100", RUN_LEASE_S="15")
    with Db(pg_url, runs_root) as db, Procs(tmp_path, env) as procs:
        workers = [procs.worker(f"w{i}", "--max-runs", "8") for i in range(2)]
        # queueing only: the setting, and its alias from the design contract
        only_queue = {
            "api0": {"SERVE_EMBEDDED_WORKER": "false"},
            "api1": {"CREW_EXECUTION": "workers"},
        }
        servers = start_servers(procs, only_queue)
        bases = [base for _, base in servers]
        run_ids = burst(bases, 50, SINGLE)
        assert len(set(run_ids)) == 50
        wait_for(lambda: db.all_completed(run_ids), timeout=45, what="50 runs", procs=procs)
        assert_each_node_once(db, run_ids, ["a"])
        assert_started_once(db, run_ids, workers)
        for proc in procs.procs:
            assert proc.alive() and "Traceback" not in proc.stderr(), proc.stderr()


@pytest.mark.slow
def test_sqlite_two_workers_and_serve_on_one_file(tmp_path: Path, sqlite_url: str) -> None:
    runs_root = tmp_path / "runs"
    env = process_env(
        sqlite_url, runs_root, OFFLINE_LATENCY_MS="50", TASKS_RATE_BURST="100", RUN_LEASE_S="15"
    )
    with Db(sqlite_url, runs_root) as db, Procs(tmp_path, env) as procs:
        workers = [procs.worker(f"w{i}", "--max-runs", "4") for i in range(2)]
        server, base = start_server(procs, "serve", SERVE_MAX_CONCURRENT_RUNS="4")
        run_ids = burst([base], 16, DIAMOND) + db.create_runs(DIAMOND, 8, prefix="direct")
        wait_for(lambda: db.all_completed(run_ids), timeout=45, what="24 runs", procs=procs)
        assert_each_node_once(db, run_ids, DIAMOND_KEYS)
        assert_started_once(db, run_ids, [*workers, server])
        for proc in procs.procs:
            assert proc.alive(), proc.stderr()
            assert "database is locked" not in proc.stderr().lower(), proc.stderr()
            assert "Traceback" not in proc.stderr(), proc.stderr()


# ---- 6. event order with several writers on one run --------------------------------------


async def interleave_writers(repo: Any, run_id: str, fence: Any, rounds: int) -> tuple[Any, Any]:
    """Writers adding events to one run in parallel transactions, and a follower reading
    `id > last` all along. Returns (ids the follower saw, ids in the table)."""
    import random

    rng = random.Random(11)
    done = asyncio.Event()

    def event(i: int) -> NewEvent:
        return NewEvent(
            run_id=run_id, type="NODE_RETRYING", level="info", message=f"e{i}", payload={}
        )

    async def group_commits() -> None:  # the owner's fenced group commits
        for i in range(rounds):
            async with repo.bulk(fence) as writer:
                await writer.add_events([event(i) for _ in range(rng.randint(1, 4))])

    async def one_shot() -> None:  # API actions: one event, one transaction
        for i in range(rounds):
            await repo.add_event(
                run_id=run_id, type="RUN_CANCELED", level="info", message=f"{i}", payload={}
            )

    async def slow_commits() -> None:  # an event, then more work before the commit
        for i in range(rounds):
            async with repo.batch() as writer:
                await writer.add_event(
                    run_id=run_id, type="NODE_FAILED", level="info", message=f"{i}", payload={}
                )
                await asyncio.sleep(rng.random() * 0.005)

    seen: list[int] = []

    async def follow() -> None:
        last = 0
        while True:
            finished = done.is_set()
            for record in await repo.list_events(run_id, after_id=last):
                assert record.id > last
                seen.append(record.id)
                last = record.id
            if finished:
                return

    follower = asyncio.create_task(follow())
    writers = [
        group_commits(),
        group_commits(),
        one_shot(),
        one_shot(),
        slow_commits(),
        slow_commits(),
    ]
    await asyncio.gather(*writers)
    done.set()
    await follower
    stored = [record.id for record in await repo.list_events(run_id)]
    return seen, stored


@pytest.mark.postgres
async def test_a_follower_never_misses_an_event_of_concurrent_writers(
    tmp_path: Path, pg_url: str
) -> None:
    from engine_support import harness

    async with harness(tmp_path, pg_url) as h:
        run_id = await h.create(PAIR)
        now = datetime.now(UTC)
        claim = await h.repo.claim_run(run_id, "owner-1", now, now + timedelta(minutes=1))
        assert claim is not None
        fence = Fence(run_id, claim.owner, claim.generation)
        seen, stored = await interleave_writers(h.repo, run_id, fence, rounds=40)
    assert len(stored) > 200
    assert seen == stored  # every event, in id order, none skipped


# ---- 7. a run continued on another machine (another RUNS_ROOT) ---------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_a_run_continued_with_another_runs_root(tmp_path: Path, pg_url: str) -> None:
    first_root, second_root = tmp_path / "first" / "runs", tmp_path / "second" / "runs"
    env = process_env(pg_url, first_root, OFFLINE_LATENCY_MS="300", MAX_CONCURRENCY="1")
    (tmp_path / "plan.json").write_text(json.dumps(CHAIN), encoding="utf-8")
    with Db(pg_url, first_root) as db, Procs(tmp_path, env) as procs:
        worker = procs.worker("w", RUNS_ROOT=str(second_root))
        foreground = procs.start("run", "run", "--task-file", "plan.json", "--run-id", "xm")
        wait_for(
            lambda: len(completed_nodes(db.events("xm"), "xm")) >= 2,
            timeout=30,
            what="the run to be mid-way",
            procs=procs,
        )
        foreground.kill()
        done_before = completed_nodes(db.events("xm"), "xm")
        assert done_before < set(CHAIN_KEYS)
        wait_for(lambda: db.all_completed(["xm"]), timeout=30, what="the run", procs=procs)
        assert "recovers run xm" in worker.stderr()

        events = assert_each_node_once(db, ["xm"], CHAIN_KEYS)
        resumed_at = next(i for i, e in enumerate(events) if e.type == "RUN_RESUMED")
        after = {e.node_key for e in of_type(events[resumed_at:], "NODE_STARTED")}
        assert after == set(CHAIN_KEYS) - done_before  # nothing completed was run again
        calls = per_node(events, "LLM_CALL")
        assert all(calls[("xm", key)] == 1 for key in done_before)
        # the second machine holds every file of the run, the first ones from the database
        artifacts = db.artifacts("xm")
        assert {a.path for a in artifacts} >= {f"xm/nodes/{k}/artifact_{k}.md" for k in CHAIN_KEYS}
        for artifact in artifacts:
            data = (second_root / artifact.path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == artifact.sha256, artifact.path
        assert json.loads((second_root / "xm" / "plan.json").read_text(encoding="utf-8")) == (
            json.loads((first_root / "xm" / "plan.json").read_text(encoding="utf-8"))
        )
        summary = json.loads((second_root / "xm" / "summary.json").read_text(encoding="utf-8"))
        assert summary["status"] == "completed"
        # the first machine never got the files of the nodes completed after the kill
        for key in set(CHAIN_KEYS) - done_before:
            assert not (first_root / "xm" / "nodes" / key / f"artifact_{key}.md").exists()

    # an API on a third machine, without any of the files, serves them from the database
    with api(pg_url, tmp_path / "third", SERVE_EMBEDDED_WORKER="false") as client:
        for artifact in artifacts:
            response = client.get(f"/artifacts/{artifact.id}/download", headers=H)
            assert response.status_code == 200, (artifact.path, response.text)
            assert hashlib.sha256(response.content).hexdigest() == artifact.sha256
    assert not (tmp_path / "third" / "runs").exists()


# ---- 8. a run whose executors keep dying -------------------------------------------------


@pytest.mark.slow
def test_a_run_recovered_too_often_ends_failed(tmp_path: Path, db_url: str) -> None:
    runs_root = tmp_path / "runs"
    env = process_env(db_url, runs_root, RUN_MAX_RECOVERIES="1")
    with Db(db_url, runs_root) as db, Procs(tmp_path, env) as procs:
        (run_id,) = db.create_runs(PAIR, 1, prefix="poison")

        async def die_twice(repo: Any) -> int:
            """Two executors claim the run and die: their leases are already over."""
            now = datetime.now(UTC)
            past = now - timedelta(seconds=1)
            assert await repo.claim_run(run_id, "host:1:dead", now, past)
            await repo.update_run(run_id, status="running", started_at=now)
            claim = await repo.claim_next_run("host:2:dead", now, past)
            assert claim is not None and claim.recoveries == 1
            return int(claim.recoveries)

        assert db.call(die_twice) == 1
        worker = procs.worker("w", "--once", "--json")
        assert worker.wait(timeout=30) == 0, worker.stderr()
        stats = json.loads(worker.stdout())
        assert stats["recovered"] == 1 and stats["finished"] == {"failed": 1}
        run = db.run(run_id)
        assert (run.status, run.error_code, run.owner) == ("failed", "too_many_recoveries", None)
        assert run.recoveries == 2
        events = db.events(run_id)
        assert [e.type for e in events][-1] == "RUN_FAILED"
        assert events[-1].payload["error_code"] == "too_many_recoveries"
        assert events[-1].payload["previous_owner"] == "host:2:dead"
        assert not of_type(events, "NODE_STARTED")  # nothing was executed again
        assert {node.status for node in db.nodes(run_id).values()} == {"canceled"}


@pytest.mark.slow
def test_a_run_that_cannot_start_does_not_block_the_queue(tmp_path: Path, sqlite_url: str) -> None:
    runs_root = tmp_path / "runs"
    env = process_env(sqlite_url, runs_root)
    with Db(sqlite_url, runs_root) as db, Procs(tmp_path, env) as procs:
        (bad,) = db.create_runs(PAIR, 1, prefix="bad")
        db.call(lambda repo: repo.update_run(bad, task_spec={"title": "T", "plan": []}))
        (good,) = db.create_runs(PAIR, 1, prefix="good")
        worker = procs.worker("w", "--once")
        try:
            code = worker.wait(timeout=6)
        except subprocess.TimeoutExpired:
            code = None
        claims = worker.stderr().count(f"run {bad} could not execute")
        assert code == 0, f"still running after {claims} claims of the bad run"
        assert db.run(good).status == "completed"
        assert db.run(bad).status == "failed"


# ---- NOTIFY: the listening connection comes back ------------------------------------------

LISTENERS = (  # this database's only: other databases on the server may have workers too
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
)


@pytest.mark.postgres
async def test_listening_for_queued_runs_survives_a_lost_connection(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    from crew.store.notify import listen_for_queued_runs

    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    heard: list[str] = []

    async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
        for _ in range(400):
            if await condition():
                return
            await asyncio.sleep(0.025)
        raise AssertionError(f"timed out waiting for {what}")

    def heard_it(payload: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return payload in heard

        return check

    other = await asyncpg.connect(dsn)
    try:
        async with listen_for_queued_runs(
            pg_url, heard.append, reconnect_delays_s=[0.05]
        ) as listening:
            assert listening
            await other.execute("SELECT pg_notify('crew_runs_queued', 'one')")
            await until(heard_it("one"), "the first notification")
            (pid,) = [row[0] for row in await other.fetch(LISTENERS)]
            await other.execute("SELECT pg_terminate_backend($1)", pid)  # a server restart

            async def listening_again() -> bool:
                return [row[0] for row in await other.fetch(LISTENERS)] not in ([], [pid])

            await until(listening_again, "a new LISTEN connection")
            await until(heard_it(""), "the wake-up after reconnecting")
            await other.execute("SELECT pg_notify('crew_runs_queued', 'two')")
            await until(heard_it("two"), "a notification after the loss")
        assert await other.fetch(LISTENERS) == []  # closed on exit
    finally:
        await other.close()
    assert "LISTEN connection for queued runs was lost" in caplog.text


def test_worker_metrics_port_in_use_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from engine_support import setup_cli_env
    from typer.testing import CliRunner

    from crew.cli.main import app

    setup_cli_env(tmp_path, monkeypatch)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["worker", "--once", "--metrics-port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"--metrics-port {port}: cannot listen there" in result.output
    assert "internal error" not in result.output


async def test_a_finished_run_keeps_no_lease_expiry(tmp_path: Path, db_url: str) -> None:
    from engine_support import harness

    async with harness(tmp_path, db_url) as h:
        outcome = await h.run(PAIR)
        run = await h.repo.get_run(outcome.run_id)
    assert run is not None and run.status == "completed"
    assert (run.owner, run.heartbeat_at, run.lease_expires_at) == (None, None, None)


async def test_once_worker_gives_its_runs_back_when_the_queue_cannot_be_read(
    tmp_path: Path, sqlite_url: str
) -> None:
    """`crew worker --once` stops when it cannot read the queue; the run it is executing
    goes back to the queue instead of being cut off as `interrupted` at exit."""
    from engine_support import harness, offline_text
    from fakes import ScriptedProvider

    from crew.domain.errors import DatabaseUnavailableError
    from crew.engine.worker import Worker

    provider = ScriptedProvider(default=offline_text, delay_s=0.3)
    async with harness(
        tmp_path, sqlite_url, provider, WORKER_POLL_S="0.2", WORKER_SHUTDOWN_GRACE_S="5"
    ) as h:
        run_id = await h.create(CHAIN)
        claims = 0
        claim_next_run = h.repo.claim_next_run

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            nonlocal claims
            claims += 1
            if claims <= 2:  # the run, then nothing more to claim
                return await claim_next_run(*args, **kwargs)
            raise DatabaseUnavailableError("the database went away")

        h.repo.claim_next_run = flaky  # type: ignore[method-assign]
        worker = Worker(h.repo, h.settings, h.client, max_runs=2)
        with pytest.raises(DatabaseUnavailableError):
            await worker.run(once=True)
        # what asyncio.run does to the tasks left when `crew worker` exits
        left = list(worker._active.values())
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)
        run = await h.repo.get_run(run_id)
        assert (run.status, run.owner) == ("queued", None)
        assert [e.type for e in await h.events(run_id)][-1] == "RUN_RELEASED"


async def test_a_worker_whose_loop_failed_runs_again(tmp_path: Path, sqlite_url: str) -> None:
    """crew serve restarts its embedded worker when its loop fails: the restarted loop
    claims runs again."""
    from engine_support import harness

    from crew.engine.worker import Worker

    async with harness(tmp_path, sqlite_url, WORKER_POLL_S="0.05") as h:
        claim_next_run = h.repo.claim_next_run

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug in the loop")

        h.repo.claim_next_run = broken  # type: ignore[method-assign]
        worker = Worker(h.repo, h.settings, h.client)
        with pytest.raises(RuntimeError):
            await worker.run()
        h.repo.claim_next_run = claim_next_run  # type: ignore[method-assign]
        run_id = await h.create(PAIR)
        again = asyncio.create_task(worker.run())
        try:
            for _ in range(200):
                run = await h.repo.get_run(run_id)
                if run is not None and run.status == "completed":
                    break
                await asyncio.sleep(0.05)
            assert run is not None and run.status == "completed"
        finally:
            worker.shutdown()
            await again


async def test_a_worker_with_a_fast_clock_leaves_live_runs_alone(
    tmp_path: Path, db_url: str
) -> None:
    from engine_support import harness

    async with harness(tmp_path, db_url) as h:
        run_id = await h.create(PAIR)
        now = datetime.now(UTC)
        lease = timedelta(seconds=h.settings.run_lease_s)
        assert await h.repo.claim_run(run_id, "host-a:1:owner", now, now + lease)
        await h.repo.update_run(run_id, status="running", started_at=now)
        # the owner renewed a moment ago; host b's clock is RUN_LEASE_S + 1 s ahead
        ahead = now + lease + timedelta(seconds=1)
        assert await h.repo.claim_next_run("host-b:2:worker", ahead, ahead + lease) is None


async def test_a_worker_that_takes_its_own_run_back_keeps_track_of_it(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A worker stalled past its own lease (a long pause of the whole process) may claim
    the run it is executing: the old execution stops at its next fenced write, and the
    new one must stay the worker's (held, drained and released on shutdown)."""
    from engine_support import harness, offline_text
    from fakes import ScriptedProvider

    from crew.engine.worker import Worker

    provider = ScriptedProvider(default=offline_text, delay_s=0.3)
    async with harness(
        tmp_path, sqlite_url, provider, WORKER_POLL_S="0.05", WORKER_SHUTDOWN_GRACE_S="5"
    ) as h:
        run_id = await h.create(CHAIN)
        worker = Worker(h.repo, h.settings, h.client, max_runs=2)
        loop = asyncio.create_task(worker.run())

        async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
            for _ in range(400):
                if await condition():
                    return
                await asyncio.sleep(0.025)
            raise AssertionError(f"timed out waiting for {what}")

        async def mid_run() -> bool:
            return "NODE_COMPLETED" in await h.types(run_id)

        async def new_execution_going() -> bool:
            types = await h.types(run_id)
            return (
                "RUN_RESUMED" in types and "NODE_COMPLETED" in types[types.index("RUN_RESUMED") :]
            )

        try:
            await until(mid_run, "the run to be mid-way")
            # the worker's own lease runs out (as after a long pause), and it looks again
            past = datetime.now(UTC) - timedelta(seconds=1)
            await h.repo.update_run(run_id, lease_expires_at=past)
            worker.wake()
            await until(new_execution_going, "the run's second execution")
            assert worker.stats.claimed == 2 and worker.stats.recovered == 0  # not a recovery
            resumed = [e for e in await h.events(run_id) if e.type == "RUN_RESUMED"]
            assert resumed[-1].payload["reason"] == "lease_expired"  # nobody released it
            assert resumed[-1].payload["recoveries"] == 0
            assert worker.active_runs == {run_id} and worker.runs_held == 1
        finally:
            worker.shutdown()
            await asyncio.wait_for(loop, timeout=30)
            # executions the worker lost track of would outlive it: stop them (bounded)
            orphans = [t for t in asyncio.all_tasks() if t.get_name().startswith("crew-run-")]
            for task in orphans:
                task.cancel()
            await asyncio.wait_for(asyncio.gather(*orphans, return_exceptions=True), 30)
        assert not orphans, "an execution outlived its worker"
        run = await h.repo.get_run(run_id)
        assert run is not None and run.status in ("queued", "completed") and run.owner is None
