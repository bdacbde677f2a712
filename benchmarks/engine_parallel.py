"""Parallel efficiency: 200 independent nodes, 50 ms simulated latency, 16 at once.

The ideal makespan is ceil(200 / 16) x 50 ms: what a perfect scheduler with no
overhead would take. The result is ideal / measured (1.0 is perfect; target >= 0.90).
Measured from the run's first event to its last, as the engine records them.

Every node creates three inodes (its folder, artifact and sidecar), and the node files
of a wave must be written within that wave's 50 ms. On a filesystem that makes inode
creation slow (on the benchmark machines: for about a minute after many files were
deleted, e.g. by a test run), that alone can exceed the budget. The filesystem floor
(the same 200 folders and files created one after another) is measured after the run,
so that the result says which case it measured.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _engine import bench_settings, fan_out_plan, filesystem_floor, in_temp_folder, timed_run

from crew.store.database import open_repository

NODES = 200
LATENCY_MS = 50
CONCURRENCY = 16


async def measure(folder: Path) -> dict[str, Any]:
    settings = bench_settings(
        folder, MAX_CONCURRENCY=str(CONCURRENCY), OFFLINE_LATENCY_MS=str(LATENCY_MS)
    )
    run_id, wall = await timed_run(settings, fan_out_plan(NODES))
    async with open_repository(settings) as repo:
        events = await repo.list_events(run_id)
    makespan = (events[-1].timestamp - events[0].timestamp).total_seconds()
    ideal = math.ceil(NODES / CONCURRENCY) * LATENCY_MS / 1000
    floor = filesystem_floor(folder / "floor", NODES)
    return {
        "benchmark": "engine_parallel",
        "nodes": NODES,
        "latency_ms": LATENCY_MS,
        "max_concurrency": CONCURRENCY,
        "ideal_makespan_s": round(ideal, 3),
        "makespan_s": round(makespan, 3),
        "wall_s_with_setup": round(wall, 3),
        "efficiency": round(ideal / makespan, 3),
        "filesystem_floor_s": round(floor, 3),
        "filesystem_floor_vs_ideal": round(floor / ideal, 3),
        "target_efficiency": 0.9,
    }


if __name__ == "__main__":
    in_temp_folder(measure)
