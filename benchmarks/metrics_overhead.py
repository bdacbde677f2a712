"""What Prometheus metrics cost on the API's read path: `GET /runs?limit=50`, on vs off.

Two `crew serve` processes (one uvicorn worker each, LOG_LEVEL=WARNING) share a small
SQLite database (500 runs, two nodes each); one has METRICS_ENABLED=1, the other not.
After a warm-up, wrk (32 connections; a bounded asyncio/httpx loop when wrk is missing)
drives them in alternation, several rounds each, so a slow phase of the machine hits
both alike; the median requests/s of each side is compared. Everything is on 127.0.0.1.
Target: metrics cost less than 10% of the throughput (ratio on/off >= 0.90). For scale,
the in-process cost of recording one request's metrics is timed too (`observe_http_us`):
the throughput difference is mostly run-to-run noise around that.

Prints one JSON line. Usage: python benchmarks/metrics_overhead.py [--duration S] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from _api_data import finished_runs
from api_reads import CONNECTIONS, free_port, httpx_load, wait_ready, wrk

RUNS = 500
KEY = "bench-key"
TARGET_RATIO = 0.9


async def build_database(url: str) -> None:
    from sqlalchemy import insert

    from crew.settings import settings_from_values
    from crew.store.database import open_repository
    from crew.store.models import nodes_table, runs_table

    settings = settings_from_values({"DATABASE_URL": url})
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    runs, nodes = finished_runs(RUNS, t0)
    async with open_repository(settings) as repo, repo.engine.begin() as conn:
        await conn.execute(insert(runs_table), runs)
        await conn.execute(insert(nodes_table), nodes)


def start_server(folder: Path, url: str, port: int, metrics: bool) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"METRICS_ENABLED", "PROMETHEUS_MULTIPROC_DIR", "SENTRY_DSN"}
    }
    env.update({"API_KEY": KEY, "DATABASE_URL": url, "RUNS_ROOT": str(folder)})
    env["LOG_LEVEL"] = "WARNING"
    if metrics:
        env["METRICS_ENABLED"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "crew", "serve", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def observe_cost_us(n: int = 100_000) -> float:
    """Microseconds the middleware's metrics hook takes per request, in this process."""
    import time

    from crew.observability.metrics import observe_http

    started = time.perf_counter()
    for _ in range(n):
        observe_http("GET", "/runs", 200, 0.004)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=3.0, help="Seconds per measurement.")
    parser.add_argument("--rounds", type=int, default=5, help="Measurements per server.")
    args = parser.parse_args()
    load = wrk if shutil.which("wrk") else httpx_load
    folder = Path(tempfile.mkdtemp(prefix="crew-metrics-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    headers = {"X-API-Key": KEY}
    try:
        url = f"sqlite+aiosqlite:///{folder / 'crew.db'}"
        asyncio.run(build_database(url))
        ports = {"on": free_port(), "off": free_port()}
        for name, port in ports.items():
            processes.append(start_server(folder, url, port, metrics=name == "on"))
        targets = {name: f"http://127.0.0.1:{port}/runs?limit=50" for name, port in ports.items()}
        for target in targets.values():
            wait_ready(target, headers)
        import httpx

        scrape = httpx.get(f"http://127.0.0.1:{ports['on']}/metrics", timeout=5)
        off_scrape = httpx.get(f"http://127.0.0.1:{ports['off']}/metrics", timeout=5)
        assert scrape.status_code == 200 and "crew_http_requests_total" in scrape.text
        assert off_scrape.status_code == 404
        for target in targets.values():
            load(target, 1.0, headers)  # warm-up
        rps: dict[str, list[float]] = {"on": [], "off": []}
        for round_number in range(args.rounds):
            order = ("off", "on") if round_number % 2 == 0 else ("on", "off")
            for name in order:
                rps[name].append(load(targets[name], args.duration, headers)["rps"])
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(folder, ignore_errors=True)
    on, off = statistics.median(rps["on"]), statistics.median(rps["off"])
    ratio = on / off
    print(
        json.dumps(
            {
                "benchmark": "metrics_overhead",
                "load_generator": load.__name__,
                "connections": CONNECTIONS,
                "rounds": args.rounds,
                "duration_s": args.duration,
                "metrics_off_rps": round(off),
                "metrics_on_rps": round(on),
                "ratio": round(ratio, 3),
                "overhead_pct": round((1 - ratio) * 100, 1),
                "observe_http_us": round(observe_cost_us(), 2),
                "target_ratio": TARGET_RATIO,
                "ok": ratio >= TARGET_RATIO,
            }
        )
    )


if __name__ == "__main__":
    main()
