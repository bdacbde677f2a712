"""Resume cost: a 1,000-node run with 999 nodes completed, resumed.

The run is executed to completion, then its last node is marked failed (as if its call
had failed) and the run `failed`; resuming must re-check the 999 completed nodes (their
checksums) and run the one that failed. Target: < 1 s. The reference measured in the
same run is the time the first execution took for the same plan.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _engine import bench_settings, chains_plan, in_temp_folder, timed_run

from crew.engine.service import execute_run
from crew.llm.client import LLMClient
from crew.llm.registry import ProviderRegistry
from crew.store.database import open_repository


async def measure(folder: Path) -> dict[str, Any]:
    settings = bench_settings(folder, MAX_CONCURRENCY="16")
    run_id, first = await timed_run(settings, chains_plan(10, 100))
    registry = ProviderRegistry(settings)
    try:
        async with open_repository(settings) as repo:
            last = (await repo.list_nodes(run_id))[-1]
            await repo.update_node(last.id, status="failed", error="simulated failure")
            await repo.update_run(run_id, status="failed", error="1 node(s) failed")
            started = time.perf_counter()
            outcome = await execute_run(
                repo, settings, LLMClient(settings, registry), run_id, resume=True
            )
            elapsed = time.perf_counter() - started
            events = await repo.list_events(run_id)
    finally:
        await registry.aclose()
    resumed_at = max(e.id for e in events if e.type == "RUN_RESUMED")
    rerun = [e.node_key for e in events if e.id > resumed_at and e.type == "NODE_STARTED"]
    return {
        "benchmark": "engine_resume",
        "nodes": 1000,
        "completed_before_resume": 999,
        "status": outcome.status.value,
        "nodes_rerun": len(rerun),
        "resume_s": round(elapsed, 3),
        "first_execution_s": round(first, 3),
        "ratio_to_first_execution": round(elapsed / first, 3),
        "target_s": 1.0,
    }


if __name__ == "__main__":
    in_temp_folder(measure)
