"""Plans and file snapshots for the crash-anywhere suite (this module holds no tests).

`crash_plan` generates a plan with the three shapes a scheduler can get wrong: chains,
fan-out (one node feeding many) and fan-in (a node waiting on many). `snapshot` reads a
run's folder into what must be equal between two runs of the same plan with the offline
provider (deterministic): markdown exactly, sidecars and summary without their timings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine_support import n, plan_dict

SIDECAR_TIMINGS = {"latency_ms", "elapsed_ms", "started_at", "ended_at"}
SUMMARY_TIMINGS = {"duration_ms"}


def crash_plan(branches: int = 6, chain: int = 3, loose: int = 4) -> dict[str, Any]:
    """`src` fans out to `branches` chains of `chain` nodes, gathered by two fan-in nodes;
    `loose` independent two-node chains gathered by a third; then a join, two reviews and
    a synthesis over them. The defaults make 40 nodes."""
    nodes = [n("src")]
    ends = []
    for b in range(branches):
        previous = f"fan{b}"
        nodes.append(n(previous, "src"))
        for i in range(1, chain + 1):
            nodes.append(n(f"c{b}-{i}", previous))
            previous = f"c{b}-{i}"
        ends.append(previous)
    half = branches // 2
    nodes += [n("in0", *ends[:half]), n("in1", *ends[half:])]
    loose_ends = []
    for r in range(loose):
        nodes += [n(f"r{r}"), n(f"r{r}-1", f"r{r}")]
        loose_ends.append(f"r{r}-1")
    nodes += [
        n("in2", *loose_ends),
        n("join", "in0", "in1"),
        n("rev0", "join", "in2"),
        n("rev1", "join", "in2"),
        n("fin", "rev0", "rev1", "in2", type="synthesis"),
    ]
    return plan_dict(*nodes, title="Crash anywhere")


def _without_run(text: str, run_id: str) -> str:
    return text.replace(f"/{run_id}/", "/<run>/").replace(f'"{run_id}"', '"<run>"')


def _drop(data: Any, keys: set[str]) -> Any:
    if isinstance(data, dict):
        return {k: _drop(v, keys) for k, v in data.items() if k not in keys}
    if isinstance(data, list):
        return [_drop(v, keys) for v in data]
    return data


def is_temporary(path: Path) -> bool:
    """A write's temporary file (`.<name>.<pid>.tmp`, renamed over `<name>` once whole)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def temporaries(run_dir: Path) -> list[str]:
    """The temporary files left in a run folder, relative to it."""
    return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if is_temporary(p))


def snapshot(run_dir: Path) -> dict[str, Any]:
    """Every file of a run folder but temporaries, by path relative to it, reduced to
    what two runs of the same plan share: markdown as is, JSON without timings and with
    the run id replaced by a placeholder."""
    run_id = run_dir.name
    files: dict[str, Any] = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and not is_temporary(p)):
        relative = path.relative_to(run_dir).as_posix()
        text = path.read_text(encoding="utf-8")
        if path.name.endswith(".llm.json"):
            files[relative] = _drop(json.loads(_without_run(text, run_id)), SIDECAR_TIMINGS)
        elif path.name == "summary.json":
            files[relative] = _drop(json.loads(_without_run(text, run_id)), SUMMARY_TIMINGS)
        elif path.suffix == ".json":
            files[relative] = json.loads(_without_run(text, run_id))
        else:
            files[relative] = text
    return files
