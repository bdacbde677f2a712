"""`crew worker` (claim and execute queued runs) and `crew workers list` (who holds what).

A worker claims whole runs with a lease and executes them with the same engine as
`crew run`; start as many as you like, on one machine (SQLite) or many (PostgreSQL).
SIGTERM or Ctrl-C: stop claiming, let runs in flight go on for WORKER_SHUTDOWN_GRACE_S,
then give the unfinished ones back to the queue; a second signal exits 130 at once (the
leases of its runs then expire and other workers take them over).
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from crew.cli.common import handle_errors, load_cli_settings
from crew.domain.errors import InvalidInputError

workers_app = typer.Typer(help="Inspect the executing processes.", no_args_is_help=True)

EXIT_SECOND_SIGNAL = 130


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.add_typer(workers_app, name="workers")


@handle_errors
def worker(
    ctx: typer.Context,
    max_runs: Annotated[
        int,
        typer.Option(
            "--max-runs",
            metavar="N",
            help="Runs executed at once by this worker (each runs its nodes concurrently).",
        ),
    ] = 1,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Shown in `crew workers list` (default host:pid)."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            metavar="P",
            help="Serve Prometheus metrics of this worker on this port (all interfaces).",
        ),
    ] = None,
    once: Annotated[
        bool,
        typer.Option("--once", help="Drain the queue, then exit (for cron and CI)."),
    ] = False,
    json_output: Annotated[
        bool,
        typer.Option("--json", help="At exit, print what this worker did as one JSON object."),
    ] = False,
) -> None:
    """Claim queued runs (and runs whose executor died) and execute them.
    [env: DATABASE_URL, RUN_LEASE_S, RUN_MAX_RECOVERIES, WORKER_SHUTDOWN_GRACE_S,
    WORKER_POLL_S, MAX_CONCURRENCY, LLM_*]"""
    if max_runs < 1:
        raise InvalidInputError(f"--max-runs must be an integer >= 1, not {max_runs}")
    if metrics_port is not None and not 0 < metrics_port < 65536:
        raise InvalidInputError(f"--metrics-port must be a port number, not {metrics_port}")
    if name is not None and not (0 < len(name) <= 255 and name.isprintable()):
        raise InvalidInputError("--name must be 1 to 255 printable characters")
    settings = load_cli_settings(ctx)
    import asyncio

    stats = asyncio.run(_main(settings, max_runs, name, metrics_port, once))
    if json_output:
        import json

        print(
            json.dumps(
                {
                    "claimed": stats.claimed,
                    "recovered": stats.recovered,
                    "finished": stats.finished,
                    "released": stats.released,
                }
            )
        )


async def _main(
    settings: Any, max_runs: int, name: str | None, metrics_port: int | None, once: bool
) -> Any:
    import asyncio
    import contextlib
    import logging
    import os
    import signal

    from crew.engine.worker import Worker
    from crew.llm.client import LLMClient
    from crew.llm.registry import ProviderRegistry
    from crew.observability.hooks import server_hooks
    from crew.store.database import open_repository
    from crew.store.notify import listen_for_queued_runs

    log = logging.getLogger("crew.worker")
    if metrics_port is not None and not settings.metrics_enabled:
        settings = _with_metrics(settings)
    from crew.agents.roles import BUILTIN_ROLES

    hooks = server_hooks(settings, BUILTIN_ROLES)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        try:
            start_http_server(metrics_port)
        except OSError as error:  # taken, or not ours to bind: say which flag, not a trace
            raise InvalidInputError(
                f"--metrics-port {metrics_port}: cannot listen there ({error.strerror or error})"
            ) from None
    registry = ProviderRegistry(settings)
    client = LLMClient(settings, registry, observer=hooks.llm)
    try:
        async with open_repository(settings) as repo:
            runner = Worker(
                repo,
                settings,
                client,
                name=name,
                kind="worker",
                max_runs=max_runs,
                listeners=hooks.run_listeners,
                on_claim=hooks.worker_claimed,
                on_counts=hooks.worker_counts,
            )
            signals = 0

            def on_signal() -> None:
                nonlocal signals
                signals += 1
                if signals == 1:
                    print(
                        f"worker {runner.name}: stopping; runs in flight get "
                        f"{settings.worker_shutdown_grace_s:g}s, then go back to the queue "
                        "(signal again to exit now)",
                        file=sys.stderr,
                        flush=True,
                    )
                    runner.shutdown()
                else:
                    log.warning("second signal: exiting now; leases expire and runs recover")
                    os._exit(EXIT_SECOND_SIGNAL)

            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, on_signal)
            async with listen_for_queued_runs(
                settings.database_url, lambda _run_id: runner.wake()
            ) as listening:
                print(
                    f"worker {runner.name} ({runner.id}) started: up to {max_runs} run(s) at "
                    f"once, {'NOTIFY and ' if listening else ''}polling every "
                    f"{settings.worker_poll_s:g}s",
                    file=sys.stderr,
                    flush=True,
                )
                return await runner.run(once=once)
    finally:
        await registry.aclose()


def _with_metrics(settings: Any) -> Any:
    import dataclasses

    return dataclasses.replace(settings, metrics_enabled=True)


@workers_app.command("list")
@handle_errors
def list_workers(
    ctx: typer.Context,
    json_output: Annotated[bool, typer.Option("--json", help="A JSON array on stdout.")] = False,
) -> None:
    """List the executing processes (workers, servers, foreground runs) and what they hold."""
    settings = load_cli_settings(ctx)
    from crew.cli.common import run_async

    async def main() -> list[dict[str, Any]]:
        from crew.engine.views import worker_item
        from crew.store.database import open_repository

        async with open_repository(settings) as repo:
            workers = await repo.list_workers()
            held = await repo.runs_held_by([w.id for w in workers])
            return [worker_item(w, held.get(w.id, []), settings.run_lease_s) for w in workers]

    items = run_async(main)
    if json_output:
        import json

        print(json.dumps(items, ensure_ascii=False))
        return
    if not items:
        typer.echo("no workers registered", err=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("name", "kind", "host", "pid", "status", "runs", "last beat", "started"):
        table.add_column(column, overflow="fold")
    for item in items:
        table.add_row(
            item["name"],
            item["kind"],
            item["host"],
            str(item["pid"]),
            item["status"] + ("" if item["alive"] else " (silent)"),
            f"{len(item['runs'])}/{item['max_runs']}",
            item["heartbeat_at"][:19].replace("T", " "),
            item["started_at"][:19].replace("T", " "),
        )
    Console(no_color=None).print(table)
