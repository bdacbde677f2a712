"""The API's read path under load, against a bare Starlette route in the same run.

A SQLite database with 10,000 runs (two nodes each) and one run of 100,000 events is
built by bulk insert; `crew serve` (one uvicorn worker) and a bare Starlette app that
returns a JSON body of the same size as `GET /runs?limit=50` are started on loopback
ports, and wrk drives them at 32 connections (a bounded asyncio/httpx loop is used when
wrk is not installed). Targets:
- `GET /runs?limit=50` (with its total) >= 20% of the bare route's requests/s;
- `GET /events?run_id=X&limit=200` first page vs `after_id` near the end: p50 ratio < 1.5
  (keyset paging, no offset scans), p99 of both < 75 ms.

With --database-url (or CREW_TEST_DATABASE_URL) naming a PostgreSQL database (its
public schema is wiped), the same rows are built there too and a second `crew serve`
reads them, measured in the same run: `GET /runs?limit=50` on PostgreSQL >= 0.8x the
SQLite figure, and the events' p99 < 75 ms on both.

Prints one JSON line. Usage: python benchmarks/api_reads.py [--duration S] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _api_data import finished_runs
from _postgres import wipe_postgres

RUNS = 10_000
EVENTS = 100_000
CONNECTIONS = 32
KEY = "bench-key"

BARE_APP = """
import json, sys
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

BODY = open(sys.argv[2], "rb").read()

async def runs(request):
    return Response(BODY, media_type="application/json")

app = Starlette(routes=[Route("/runs", runs)])

if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False, loop="auto", http="auto")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def build_database(url: str) -> str:
    """Bulk-insert the runs, nodes and events; returns the id of the big run."""
    from sqlalchemy import insert

    from crew.settings import settings_from_values
    from crew.store.database import open_repository
    from crew.store.models import events_table, nodes_table, runs_table

    settings = settings_from_values({"DATABASE_URL": url})
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    big = "big-run"
    async with open_repository(settings) as repo:
        runs, nodes = finished_runs(RUNS, t0, last_id=big)
        async with repo.engine.begin() as conn:
            await conn.execute(insert(runs_table), runs)
            await conn.execute(insert(nodes_table), nodes)
        for start in range(0, EVENTS, 10_000):
            rows = [
                {
                    "run_id": big,
                    "node_id": None,
                    "node_key": "n0",
                    "type": "LLM_CALL",
                    "level": "info",
                    "payload": {"run_id": big, "node_key": "n0", "i": i},
                    "message": f"call {i}",
                    "request_id": None,
                    "timestamp": t0 + timedelta(milliseconds=i),
                }
                for i in range(start, start + 10_000)
            ]
            async with repo.engine.begin() as conn:
                await conn.execute(insert(events_table), rows)
        last = await repo.last_event_id(big)
    assert last is not None
    return f"{big}:{last}"


def reset_postgres(url: str) -> None:
    asyncio.run(wipe_postgres(url))


def settle_postgres(url: str) -> None:
    """VACUUM ANALYZE after the bulk insert: the statistics and visibility map a database
    in use has (autovacuum would get there within a minute or so)."""
    import asyncpg

    async def settle() -> None:
        conn = await asyncpg.connect("postgresql://" + url.split("://", 1)[1])
        try:
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()

    asyncio.run(settle())


def wait_ready(url: str, headers: dict[str, str], deadline_s: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, duration: float, headers: dict[str, str]) -> dict[str, float]:
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(duration))}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=duration + 30
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    result = {"rps": rps}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if match:
            result[f"p{pct}_ms"] = float(match.group(1)) * _UNITS[match.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses")
    return result


def httpx_load(url: str, duration: float, headers: dict[str, str]) -> dict[str, float]:
    """A bounded asyncio load loop, for machines without wrk."""
    import httpx

    async def main() -> dict[str, float]:
        latencies: list[float] = []
        stop = time.monotonic() + duration
        limits = httpx.Limits(max_connections=CONNECTIONS)
        async with httpx.AsyncClient(headers=headers, limits=limits, timeout=10) as client:

            async def worker() -> None:
                while time.monotonic() < stop:
                    t = time.perf_counter()
                    response = await client.get(url)
                    response.raise_for_status()
                    latencies.append((time.perf_counter() - t) * 1000)

            began = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
            elapsed = time.monotonic() - began
        latencies.sort()
        return {
            "rps": len(latencies) / elapsed,
            "p50_ms": statistics.median(latencies),
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        }

    return asyncio.run(main())


def serve(url: str, folder: Path, processes: list[subprocess.Popen[bytes]]) -> str:
    """Start `crew serve` on the database; its base URL once it answers."""
    env = {
        **os.environ,
        "API_KEY": KEY,
        "DATABASE_URL": url,
        "RUNS_ROOT": str(folder),
        "LOG_LEVEL": "WARNING",
    }
    port = free_port()
    processes.append(
        subprocess.Popen(
            [sys.executable, "-m", "crew", "serve", "--port", str(port)],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/runs?limit=50", {"X-API-Key": KEY})
    return base


def measure(load: Any, base: str, big: str, last: str, duration: float) -> dict[str, Any]:
    """/runs?limit=50, and the events' first page and a page near the end."""
    headers = {"X-API-Key": KEY}
    near_end = int(last) - 250  # a full page of 200 still follows
    urls = {
        "runs": f"{base}/runs?limit=50",
        "first": f"{base}/events?run_id={big}&limit=200",
        "end": f"{base}/events?run_id={big}&limit=200&after_id={near_end}",
    }
    for url in urls.values():
        load(url, 1.0, headers)  # warm-up
    return {name: load(url, duration, headers) for name, url in urls.items()}


def events_figures(prefix: str, result: dict[str, Any]) -> dict[str, float]:
    first, end = result["first"], result["end"]
    return {
        f"{prefix}events_first_p50_ms": round(first["p50_ms"], 2),
        f"{prefix}events_first_p99_ms": round(first["p99_ms"], 2),
        f"{prefix}events_end_p50_ms": round(end["p50_ms"], 2),
        f"{prefix}events_end_p99_ms": round(end["p99_ms"], 2),
        f"{prefix}events_p50_ratio": round(
            max(first["p50_ms"], end["p50_ms"]) / min(first["p50_ms"], end["p50_ms"]), 3
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0, help="Seconds per measurement.")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CREW_TEST_DATABASE_URL"),
        help="A PostgreSQL database to measure too (wiped first).",
    )
    args = parser.parse_args()
    postgres_url = args.database_url
    if postgres_url and not postgres_url.startswith("postgresql"):
        raise SystemExit("--database-url must name a PostgreSQL database")
    load = wrk if shutil.which("wrk") else httpx_load
    folder = Path(tempfile.mkdtemp(prefix="crew-api-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        url = f"sqlite+aiosqlite:///{folder / 'crew.db'}"
        big, last = asyncio.run(build_database(url)).split(":")
        crew = serve(url, folder, processes)
        import httpx

        headers = {"X-API-Key": KEY}
        body = httpx.get(f"{crew}/runs?limit=50", headers=headers, timeout=5).content
        (folder / "body.json").write_bytes(body)
        (folder / "bare.py").write_text(BARE_APP, encoding="utf-8")
        bare_port = free_port()
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(folder / "bare.py"),
                    str(bare_port),
                    str(folder / "body.json"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        bare = f"http://127.0.0.1:{bare_port}"
        wait_ready(f"{bare}/runs", {})
        load(f"{bare}/runs", 1.0, {})  # warm-up
        bare_result = load(f"{bare}/runs", args.duration, {})
        sqlite = measure(load, crew, big, last, args.duration)
        postgres = None
        if postgres_url:
            reset_postgres(postgres_url)
            pg_big, pg_last = asyncio.run(build_database(postgres_url)).split(":")
            settle_postgres(postgres_url)
            pg_crew = serve(postgres_url, folder, processes)
            pg_body = httpx.get(f"{pg_crew}/runs?limit=50", headers=headers, timeout=5).content
            if json.loads(pg_body)["total"] != json.loads(body)["total"]:
                raise SystemExit("the PostgreSQL database does not hold the same runs")
            postgres = measure(load, pg_crew, pg_big, pg_last, args.duration)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(folder, ignore_errors=True)
    ratio = sqlite["runs"]["rps"] / bare_result["rps"]
    figures = events_figures("", sqlite)
    ok = (
        ratio >= 0.2
        and figures["events_p50_ratio"] < 1.5
        and max(figures["events_first_p99_ms"], figures["events_end_p99_ms"]) < 75
    )
    result: dict[str, Any] = {
        "benchmark": "api_reads",
        "load_generator": load.__name__,
        "connections": CONNECTIONS,
        "runs": RUNS,
        "events": EVENTS,
        "bare_rps": round(bare_result["rps"]),
        "runs_rps": round(sqlite["runs"]["rps"]),
        "runs_ratio": round(ratio, 3),
        "target_runs_ratio": 0.2,
        **figures,
        "target_p50_ratio": 1.5,
        "target_p99_ms": 75,
    }
    if postgres is not None:
        pg_ratio = postgres["runs"]["rps"] / sqlite["runs"]["rps"]
        pg_figures = events_figures("pg_", postgres)
        result.update(
            {
                "pg_runs_rps": round(postgres["runs"]["rps"]),
                "pg_runs_p50_ms": round(postgres["runs"]["p50_ms"], 2),
                "pg_vs_sqlite_runs_ratio": round(pg_ratio, 3),
                "target_pg_vs_sqlite_ratio": 0.8,
                **pg_figures,
            }
        )
        ok = (
            ok
            and pg_ratio >= 0.8
            and max(pg_figures["pg_events_first_p99_ms"], pg_figures["pg_events_end_p99_ms"]) < 75
        )
    result["ok"] = ok
    print(json.dumps(result))


if __name__ == "__main__":
    main()
