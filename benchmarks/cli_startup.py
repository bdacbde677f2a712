"""How long `crew --help` takes, as a ratio to a minimal three-command Typer app.

Startup is what a user pays on every command, so `crew --help` must stay within 1.2x of
the smallest possible Typer CLI: heavy libraries (SQLAlchemy, the HTTP stack, ...) have to
be imported by the commands that use them, not at startup. The reference app is written
and timed in the same run, on the same interpreter, so the ratio does not depend on the
machine. Runs are interleaved, after one warm-up each, so a slow phase of the machine
affects every command alike; the median resists outliers.

Prints one JSON line. Usage: python benchmarks/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.2

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command (>= 10)")
    args = parser.parse_args()
    runs = max(10, args.runs)

    with tempfile.TemporaryDirectory(prefix="crew-bench-") as tmp:
        workdir = Path(tmp)
        app = workdir / "minimal_app.py"
        app.write_text(MINIMAL_APP, encoding="utf-8")
        # Same environment for every command; an empty folder as working directory so a
        # stray .env cannot change what crew does.
        env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}

        commands: dict[str, list[str]] = {
            "crew_module": [sys.executable, "-m", "crew", "--help"],
            "minimal": [sys.executable, str(app), "--help"],
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
    result: dict[str, object] = {
        "benchmark": "cli_startup",
        "crew_help_s": round(medians["crew_module"], 4),
        "minimal_typer_help_s": round(medians["minimal"], 4),
        "ratio": round(medians["crew_module"] / medians["minimal"], 3),
        "runs": runs,
        "target_ratio": TARGET_RATIO,
    }
    if "crew_script" in medians:
        result["crew_script_help_s"] = round(medians["crew_script"], 4)
        result["crew_script_ratio"] = round(medians["crew_script"] / medians["minimal"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
