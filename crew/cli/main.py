"""The `crew` Typer application: global options and command registration.

Only Typer and crew's light modules are imported here so `crew --help` starts fast;
each command imports the store, engine or server when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crew import __version__
from crew.cli import light_params
from crew.cli.common import state

light_params.install()  # plain parameters without importing Pydantic (see the module)

app = typer.Typer(
    name="crew",
    help="Plan and run multi-agent LLM crews, and watch them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"crew {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    env_file: Annotated[
        Path | None,
        typer.Option("--env-file", help="Read settings from this file instead of ./.env."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug logs.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Plan and run multi-agent LLM crews, and watch them."""
    current = state(ctx)
    current.env_file = env_file
    current.verbose = verbose


def _register() -> None:
    from crew.cli import db, doctor, events, plan, run, runs, serve, worker

    plan.register(app)
    run.register(app)
    runs.register(app)
    events.register(app)
    db.register(app)
    serve.register(app)
    doctor.register(app)
    worker.register(app)
    from crew.cli import gc  # retention: `crew gc`

    gc.register(app)


_register()


def run() -> None:
    """Console-script entry point."""
    import sys

    from crew.cli.run import normalize_argv

    app(args=normalize_argv(sys.argv[1:]), prog_name="crew")
