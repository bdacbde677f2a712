"""How long crew's commands take, as ratios to a minimal three-command Typer app's --help.

Startup is what a user pays on every command, so `crew --help` must stay within 1.2x of
the smallest possible Typer CLI: heavy libraries (SQLAlchemy, the HTTP stack, ...) have to
be imported by the commands that use them, not at startup. The read commands are used in
shell loops (`crew runs list --json | jq ... | xargs crew runs show`), so on a SQLite
database of 1,000 runs (built here by bulk insert, one of them with 200 events)
`crew runs list --json`, `crew runs show ID --json` and `crew events tail ID --no-follow
--json` must stay within 1.6x of it; `crew doctor --json` is reported too. The reference
app is written and timed in the same run, on the same interpreter, so the ratios do not
depend on the machine. Runs are interleaved, after one warm-up each, so a slow phase of
the machine affects every command alike; the median resists outliers.

Prints one JSON line. Usage: python benchmarks/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _api_data import finished_runs

TARGET_RATIO = 1.2
TARGET_READ_RATIO = 1.6
RUNS = 1_000
EVENTS = 200
BIG_RUN = "bench-run"

MINIMAL_APP = '''\
import typer

app = typer.Typer(help="A minimal three-command app.", no_args_is_help=True)


@app.command()
def plan(title: str = typer.Option(..., help="Title.")) -> None:
    """Plan something."""
    typer.echo(title)


@app.command()
def run(task_file: str = typer.Option("-", help="Task file.")) -> None:
    """Run something."""
    typer.echo(task_file)


@app.command()
def serve(port: int = typer.Option(8000, help="Port.")) -> None:
    """Serve something."""
    typer.echo(port)


if __name__ == "__main__":
    app()
'''


def time_once(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0 or not result.stdout:
        sys.stderr.write(result.stderr.decode(errors="replace"))
        raise SystemExit(f"benchmark command failed ({result.returncode}): {' '.join(command)}")
    return elapsed


async def build_database(url: str) -> None:
    """RUNS finished runs of two nodes each; the newest, BIG_RUN, has EVENTS events."""
    from sqlalchemy import insert

    from crew.settings import settings_from_values
    from crew.store.database import open_repository
    from crew.store.models import events_table, nodes_table, runs_table

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    async with open_repository(settings_from_values({"DATABASE_URL": url})) as repo:
        runs, nodes = finished_runs(RUNS, t0, last_id=BIG_RUN)
        events = [
            {
                "run_id": BIG_RUN,
                "node_id": None,
                "node_key": "n0",
                "type": "LLM_CALL",
                "level": "info",
                "payload": {"run_id": BIG_RUN, "node_key": "n0", "i": i},
                "message": f"call {i}",
                "request_id": None,
                "timestamp": t0 + timedelta(milliseconds=i),
            }
            for i in range(EVENTS)
        ]
        async with repo.engine.begin() as conn:
            await conn.execute(insert(runs_table), runs)
            await conn.execute(insert(nodes_table), nodes)
            await conn.execute(insert(events_table), events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command (>= 10)")
    args = parser.parse_args()
    runs = max(10, args.runs)

    with tempfile.TemporaryDirectory(prefix="crew-bench-") as tmp:
        workdir = Path(tmp)
        app = workdir / "minimal_app.py"
        app.write_text(MINIMAL_APP, encoding="utf-8")
        url = f"sqlite+aiosqlite:///{workdir / 'crew.db'}"
        asyncio.run(build_database(url))
        # Same environment for every command; an empty folder as working directory so a
        # stray .env cannot change what crew does.
        env = {
            **os.environ,
            "NO_COLOR": "1",
            "COLUMNS": "100",
            "DATABASE_URL": url,
            "RUNS_ROOT": str(workdir / "runs"),
        }
        crew = [sys.executable, "-m", "crew"]
        commands: dict[str, list[str]] = {
            "crew_module": [*crew, "--help"],
            "minimal": [sys.executable, str(app), "--help"],
            "runs_list": [*crew, "runs", "list", "--json"],
            "runs_show": [*crew, "runs", "show", BIG_RUN, "--json"],
            "events_tail": [*crew, "events", "tail", BIG_RUN, "--no-follow", "--json"],
            "doctor": [*crew, "doctor", "--json"],
        }
        script = Path(sys.executable).with_name("crew")
        if script.is_file() and os.access(script, os.X_OK):
            commands["crew_script"] = [str(script), "--help"]

        for command in commands.values():
            time_once(command, workdir, env)  # warm-up: bytecode and file caches
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, command in commands.items():
                samples[name].append(time_once(command, workdir, env))

    medians = {name: statistics.median(values) for name, values in samples.items()}

    def ratio(name: str) -> float:
        return round(medians[name] / medians["minimal"], 3)

    result: dict[str, object] = {
        "benchmark": "cli_startup",
        "crew_help_s": round(medians["crew_module"], 4),
        "minimal_typer_help_s": round(medians["minimal"], 4),
        "ratio": ratio("crew_module"),
        "runs": runs,
        "target_ratio": TARGET_RATIO,
    }
    if "crew_script" in medians:
        result["crew_script_help_s"] = round(medians["crew_script"], 4)
        result["crew_script_ratio"] = ratio("crew_script")
    reads = ("runs_list", "runs_show", "events_tail")
    result["database_runs"] = RUNS
    for name in (*reads, "doctor"):
        result[f"{name}_s"] = round(medians[name], 4)
        result[f"{name}_ratio"] = ratio(name)
    result["target_read_ratio"] = TARGET_READ_RATIO
    result["ok"] = ratio("crew_module") <= TARGET_RATIO and all(
        ratio(name) <= TARGET_READ_RATIO for name in reads
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
