"""`crew runs list` and `crew runs show`: what has run, and what it produced."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from crew.cli.common import handle_errors, load_cli_settings, run_async
from crew.domain.errors import InvalidInputError, NotFoundError

runs_app = typer.Typer(help="Inspect runs.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")


@runs_app.command("list")
@handle_errors
def list_runs(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option("--status", help="Only runs with this status."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many runs.")] = 20,
    json_output: Annotated[bool, typer.Option("--json", help="A JSON array on stdout.")] = False,
) -> None:
    """List runs, newest first."""
    from crew.domain.status import RunStatus

    if status is not None and status not in {s.value for s in RunStatus}:
        raise InvalidInputError(
            f"--status {status!r} is unknown (accepted: {', '.join(s.value for s in RunStatus)})"
        )
    if limit < 1:
        raise InvalidInputError("--limit must be at least 1")
    settings = load_cli_settings(ctx)

    async def main() -> list[dict[str, Any]]:
        from crew.engine.views import run_list_item
        from crew.store.reads import open_reads

        async with open_reads(settings) as reads:
            runs, counts = await reads.recent_runs(status, limit)
            return [run_list_item(r, counts.get(r.id, {})) for r in runs]

    items = run_async(main)
    if json_output:
        import json

        print(json.dumps(items, ensure_ascii=False))
        return
    if not items:
        typer.echo("no runs yet", err=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("id", "status", "title", "nodes", "tokens", "cost", "created"):
        table.add_column(column)
    for item in items:
        nodes = item["nodes"]
        cost = item["cost_usd"]
        table.add_row(
            item["id"],
            item["status"],
            item["title"],
            f"{nodes['completed']}/{nodes['total']}",
            str(item["input_tokens"] + item["output_tokens"]),
            "unknown" if cost is None else f"${cost:.4f}",
            item["created_at"][:19].replace("T", " "),
        )
    Console(no_color=None).print(table)


@runs_app.command("show")
@handle_errors
def show_run(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix.")],
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Show a run, its nodes, artifacts and totals."""
    settings = load_cli_settings(ctx)

    async def main() -> dict[str, Any]:
        from crew.engine.views import jsonable, lease_state, run_cost
        from crew.store.reads import open_reads

        async with open_reads(settings) as reads:
            target = await reads.resolve_run_id(run_id)
            contents = await reads.run_contents(target)
            if contents is None:
                raise NotFoundError(f"run {target} was deleted")
            run, nodes, artifacts = contents.run, contents.nodes, contents.artifacts
            keys = {n.id: n.key for n in nodes}
            data = jsonable(run)
            data["cost_usd"] = run_cost(run)
            data["lease"] = lease_state(run)
            data["nodes"] = [
                {k: v for k, v in jsonable(n).items() if k not in {"spec", "run_id"}} for n in nodes
            ]
            data["artifacts"] = [
                {
                    **{k: v for k, v in jsonable(a).items() if k not in {"content", "run_id"}},
                    "node_key": keys.get(a.node_id or ""),
                }
                for a in artifacts
            ]
            from crew.engine.summary import provider_counts_of

            data.update(  # calls per provider and by fallback, from the stored sidecars
                provider_counts_of(
                    a.content for a in artifacts if a.type == "sidecar" and a.content
                )
            )
            return data

    data = run_async(main)
    if json_output:
        import json

        print(json.dumps(data, ensure_ascii=False))
        return
    _print_run(data, settings)


def _print_run(data: dict[str, Any], settings: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cost = data["cost_usd"]
    console.print(f"[bold]{data['title']}[/]  ({data['id']})")
    console.print(
        f"status: {data['status']}   created: {data['created_at']}   "
        f"started: {data['started_at'] or '-'}   ended: {data['ended_at'] or '-'}"
    )
    console.print(
        f"tokens: {data['input_tokens']} in / {data['output_tokens']} out   "
        f"cost: {'unknown' if cost is None else f'${cost:.4f}'}"
    )
    if len(data.get("providers") or {}) > 1 or data.get("fallback_calls"):
        console.print(
            "answered by: "
            + ", ".join(f"{name} {count}" for name, count in sorted(data["providers"].items()))
            + f" ({data['fallback_calls']} call(s) by a fallback provider)"
        )
    if data.get("owner"):
        holder = {"held": "held by", "expired": "was held by"}.get(data["lease"], "held by")
        console.print(
            f"lease: {holder} {data['owner']} until {data['lease_expires_at'] or '-'}"
            + ("  (expired: a worker will take the run over)" if data["lease"] == "expired" else "")
        )
    if data.get("recoveries"):
        console.print(f"recoveries: {data['recoveries']}")
    if data.get("error"):
        console.print(f"[red]error:[/] {data['error']}")
    table = Table(title="nodes")
    # fold, never cut: a piped table is 80 columns wide and a cut key or path is useless
    for column in ("key", "type", "status", "role", "attempts", "tokens", "time", "error"):
        table.add_column(column, overflow="fold")
    for node in data["nodes"]:
        elapsed = ""
        if node["started_at"] and node["ended_at"]:
            from datetime import datetime

            delta = datetime.fromisoformat(node["ended_at"]) - datetime.fromisoformat(
                node["started_at"]
            )
            elapsed = f"{delta.total_seconds():.1f}s"
        table.add_row(
            node["key"],
            node["type"],
            node["status"],
            node["role"] or "-",
            str(node["attempts"]),
            str(node["input_tokens"] + node["output_tokens"]),
            elapsed,
            node["error"] or "",
        )
    console.print(table)
    artifacts = Table(title="artifacts")
    for column in ("node", "type", "path", "size"):
        artifacts.add_column(column, overflow="fold")
    for artifact in data["artifacts"]:
        artifacts.add_row(
            artifact["node_key"] or "-",
            artifact["type"],
            str(settings.runs_root / artifact["path"]),
            str(artifact["size"]),
        )
    console.print(artifacts)


@runs_app.command("export")
@handle_errors
def export_run(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="Run id or a unique prefix.")],
    directory: Annotated[
        Path, typer.Argument(help="Where to write the run's folder (DIR/<run_id>/...).")
    ],
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Write a run's whole folder (plan, artifacts, sidecars, summary) from the database.

    Works on any machine that reaches the database: the database holds every file's
    content, so nothing has to be copied from the machine that executed the run.
    """
    if directory.exists() and not directory.is_dir():
        raise InvalidInputError(f"{directory} exists and is not a directory")
    settings = load_cli_settings(ctx)

    async def main() -> dict[str, Any]:
        from crew.domain.plan import parse_plan
        from crew.engine.files import RunFiles
        from crew.engine.service import restore_files
        from crew.store.database import open_repository

        async with open_repository(settings) as repo:
            target = await repo.resolve_run_id(run_id)
            run = await repo.get_run(target)
            artifacts = await repo.list_artifacts(run_id=target)
        assert run is not None
        missing = [a.path for a in artifacts if a.content is None]
        try:
            written = restore_files(
                RunFiles(directory, target), parse_plan(run.task_spec), artifacts
            )
        except OSError as error:
            raise InvalidInputError(f"cannot write under {directory}: {error}") from None
        return {
            "run_id": target,
            "directory": str(directory / target),
            "files": 1 + len(artifacts) - len(missing),
            "written": written,
            "without_content": missing,
        }

    result = run_async(main)
    if json_output:
        import json

        print(json.dumps(result, ensure_ascii=False))
        return
    typer.echo(
        f"exported run {result['run_id']} to {result['directory']} "
        f"({result['files']} file(s), {result['written']} written)",
        err=True,
    )
    for path in result["without_content"]:
        typer.echo(f"warning: {path} has no stored content (recorded by an older crew)", err=True)
