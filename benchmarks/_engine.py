"""Shared setup for the engine benchmarks: plans, a settings object, one timed run.

Runs go through the same service functions `crew run` uses (create_run, execute_run),
on a file SQLite database in a temporary folder, with the offline provider.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from crew.domain.plan import Plan, parse_plan
from crew.engine.files import RunFiles
from crew.engine.options import RunOptions
from crew.engine.service import create_run, execute_run
from crew.llm.client import LLMClient
from crew.llm.registry import ProviderRegistry
from crew.settings import Settings, settings_from_values
from crew.store.database import open_repository


def chains_plan(chains: int, length: int) -> Plan:
    """`chains` independent chains of `length` nodes each."""
    nodes = []
    for c in range(chains):
        for i in range(length):
            key = f"c{c}-{i}"
            deps = [f"c{c}-{i - 1}"] if i else []
            nodes.append({"id": key, "title": f"Step {i} of chain {c}", "deps": deps})
    return parse_plan({"title": f"{chains}x{length} chains", "plan": nodes})


def fan_out_plan(width: int) -> Plan:
    nodes = [{"id": f"n{i}", "title": f"Independent task {i}"} for i in range(width)]
    return parse_plan({"title": f"{width} independent nodes", "plan": nodes})


def bench_settings(folder: Path, **values: str) -> Settings:
    return settings_from_values(
        {
            "RUNS_ROOT": str(folder / "runs"),
            "DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'crew.db'}",
            "NODE_RETRIES": "0",
            **values,
        }
    )


async def timed_run(settings: Settings, plan: Plan, **option_changes: Any) -> tuple[str, float]:
    """Create and execute a run; returns (run id, seconds of create + execute)."""
    registry = ProviderRegistry(settings)
    client = LLMClient(settings, registry)
    try:
        async with open_repository(settings) as repo:
            options = RunOptions.from_settings(settings, **option_changes)
            started = time.perf_counter()
            run_id = await create_run(repo, settings, plan, options=options)
            outcome = await execute_run(repo, settings, client, run_id)
            elapsed = time.perf_counter() - started
            if outcome.status.value != "completed":
                raise SystemExit(f"benchmark run ended {outcome.status.value}")
            return run_id, elapsed
    finally:
        await registry.aclose()


def filesystem_floor(folder: Path, nodes: int) -> float:
    """Seconds to create `nodes` node folders with their two files, sequentially."""
    files = RunFiles(folder, "floor")
    text = "x" * 2000
    started = time.perf_counter()
    for i in range(nodes):
        files.write_text(files.artifact(f"n{i}"), text)
        files.write_text(files.artifact_sidecar(f"n{i}"), text)
    return time.perf_counter() - started


def in_temp_folder(body: Callable[[Path], Awaitable[dict[str, Any]]]) -> None:
    """Run `body` in a fresh temporary folder and print its result as one JSON line."""
    # In the working directory, like real runs: a system temp folder may sit on a
    # different, slower filesystem and measure that instead of crew.
    with tempfile.TemporaryDirectory(prefix=".crew-bench-", dir=".") as folder:
        result = asyncio.run(body(Path(folder)))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
