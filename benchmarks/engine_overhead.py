"""Orchestration overhead: wall time per node of a run on a zero-latency offline provider.

Plans of 10 parallel chains (500, 1,000 and 5,000 nodes) on a file SQLite database, in
a folder of the working directory. Targets: <= 2 ms per node at 1,000 nodes, and the
per-node cost at 5,000 within 1.5x of the cost at 500 (no quadratic behaviour).

Two references are measured in the same run:
- the offline provider answering the same prompts directly (no scheduling, no
  database, no files);
- the filesystem floor: creating each node's folder and its two files (artifact and
  sidecar, written atomically as the engine does) one after another, nothing else.
  Every node of a run needs those three new inodes (DESIGN §4), and on some machines
  creating an inode costs about a millisecond of kernel time, which no scheduler can
  avoid; `crew_ms_per_node_1000` is what is left once that floor is taken out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _engine import bench_settings, chains_plan, filesystem_floor, in_temp_folder, timed_run

from crew.agents.executor import build_messages
from crew.agents.goal import Goal
from crew.agents.roles import resolve_role
from crew.llm.base import LLMRequest
from crew.llm.offline import OfflineProvider

SIZES = (500, 1000, 5000)
CHAINS = 10


async def provider_only(nodes: int) -> float:
    """Seconds for the offline provider alone to answer `nodes` executor prompts."""
    plan = chains_plan(CHAINS, nodes // CHAINS)
    provider = OfflineProvider()
    goal = Goal.from_plan(plan)
    role = resolve_role(None)
    started = time.perf_counter()
    for node in plan.nodes:
        messages = build_messages(
            goal=goal, node=node, role=role, dependency_outputs=[], language="fr"
        )
        await provider.complete(LLMRequest(role=role.name, messages=messages))
    return time.perf_counter() - started


async def measure(folder: Path) -> dict[str, Any]:
    per_node: dict[int, float] = {}
    reference: dict[int, float] = {}
    for size in SIZES:
        sub = folder / str(size)
        settings = bench_settings(sub, MAX_CONCURRENCY="16")
        _, seconds = await timed_run(settings, chains_plan(CHAINS, size // CHAINS))
        per_node[size] = seconds * 1000 / size
        reference[size] = (await provider_only(size)) * 1000 / size
    floor_1000 = filesystem_floor(folder / "floor", 1000) * 1000 / 1000
    return {
        "benchmark": "engine_overhead",
        "ms_per_node": {str(k): round(v, 3) for k, v in per_node.items()},
        "provider_only_ms_per_node": {str(k): round(v, 3) for k, v in reference.items()},
        "filesystem_floor_ms_per_node": round(floor_1000, 3),
        "crew_ms_per_node_1000": round(per_node[1000] - floor_1000 - reference[1000], 3),
        "ratio_to_filesystem_floor_1000": round(per_node[1000] / floor_1000, 2),
        "scaling_5000_vs_500": round(per_node[5000] / per_node[500], 3),
        "target_ms_per_node": 2.0,
        "target_scaling": 1.5,
    }


if __name__ == "__main__":
    in_temp_folder(measure)
