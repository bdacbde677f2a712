"""`crew events tail`: print a run's events and follow them until the run ends.

Following polls the database with a keyset cursor (events after the last id seen), so
it works the same whether the run executes in this process, another one, or a server.
A poll is one read transaction on the read path (crew/store/reads.py): the run, then
its events after the cursor. On SQLite an unchanged database answers it from the
reader's cache without running the SQL, so polling every POLL_INTERVAL_S costs little.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from crew.cli.common import handle_errors, load_cli_settings, run_async
from crew.domain.errors import NotFoundError

events_app = typer.Typer(help="Read a run's events.", no_args_is_help=True)

POLL_INTERVAL_S = 0.03
"""The wait between polls while following: a new event is printed about this long, at
most, after its commit (plus the poll itself, well under a millisecond on SQLite)."""
EXIT_BY_STATUS = {"completed": 0, "failed": 1, "canceled": 1, "interrupted": 130}


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")


@events_app.command("tail")
@handle_errors
def tail(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix.")],
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per line on stdout.")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep following until the run ends.")
    ] = True,
    since: Annotated[
        int | None, typer.Option("--since", help="Only events after this event id.")
    ] = None,
) -> None:
    """Print a run's events; follow new ones until the run ends."""
    settings = load_cli_settings(ctx)

    async def main() -> str:
        import asyncio

        from crew.cli.event_lines import event_json, event_line
        from crew.domain.status import RunStatus
        from crew.engine.views import lease_state
        from crew.store.reads import open_reads

        async with open_reads(settings) as reads:
            target = await reads.resolve_run_id(run_id)
            cursor = since
            orphan_noticed = False
            while True:
                run, events = await reads.run_and_events(target, cursor, 500)
                if run is None:
                    raise NotFoundError(f"run {target} was deleted")
                for event in events:
                    if json_output:
                        line = event_json(
                            event_id=event.id,
                            run_id=event.run_id,
                            timestamp=event.timestamp,
                            type=event.type,
                            level=event.level,
                            message=event.message,
                            payload=event.payload,
                            node_key=event.node_key,
                            request_id=event.request_id,
                        )
                    else:
                        line = event_line(
                            event_id=event.id,
                            timestamp=event.timestamp,
                            type=event.type,
                            level=event.level,
                            message=event.message,
                            node_key=event.node_key,
                        )
                    print(line, flush=True)
                    cursor = event.id
                if len(events) == 500:
                    continue  # more are waiting: drain before deciding anything
                status: str = run.status
                # The status was read before the events: once it is terminal, everything
                # up to it has been printed.
                if not follow or RunStatus(status).is_terminal:
                    return status
                if lease_state(run) == "expired" and not orphan_noticed:
                    # Nobody is executing it right now; a worker will take it over.
                    orphan_noticed = True
                    print(
                        f"run {target}: its executor stopped; it continues once a "
                        f"`crew worker` or `crew serve` claims it (or `crew run --resume "
                        f"{target}`)",
                        file=sys.stderr,
                        flush=True,
                    )
                await asyncio.sleep(POLL_INTERVAL_S)

    status = run_async(main)
    if not follow and status in ("queued", "running"):
        raise typer.Exit(0)
    code = EXIT_BY_STATUS.get(status, 0)
    if code and not json_output:
        print(f"run {status}", file=sys.stderr)
    raise typer.Exit(code)
