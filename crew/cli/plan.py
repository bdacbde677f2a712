"""`crew plan`: run the supervisor only and print the validated plan.

`--json` prints exactly the plan file format, so `crew plan --json > plan.json` feeds
`crew run --task-file plan.json`. Only the LLM layer and the domain are imported: no
database, no HTTP server.

Every supervisor call is accounted for, whether planning succeeds or not: stderr says
how many calls it took and what they spent, and with `--out FILE` their sidecar is
written next to the plan (`FILE` without its suffix, plus `.llm.json`). A model that
cannot produce a plan exits 4 (ModelAnswerError); `-v` logs its raw answers.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from crew.cli.common import (
    err_console_print,
    goal_from_options,
    handle_errors,
    load_cli_settings,
    use_color,
)
from crew.domain.errors import InvalidInputError

if TYPE_CHECKING:
    from crew.agents.supervisor import Goal, SupervisorResult
    from crew.llm.ledger import CallLedger
    from crew.settings import Settings


class PlanFormat(StrEnum):
    TABLE = "table"
    TREE = "tree"
    JSON = "json"
    MERMAID = "mermaid"


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)


@handle_errors
def plan_command(
    ctx: typer.Context,
    title: Annotated[str, typer.Option("--title", "-t", help="The goal's title.")],
    description: Annotated[
        str | None, typer.Option("--description", "-d", help="What the deliverable is about.")
    ] = None,
    acceptance: Annotated[
        list[str] | None,
        typer.Option("--acceptance", "-a", help="An acceptance criterion (repeatable)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the plan file format (same as --format json).")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Also write the plan file (JSON) here.", dir_okay=False),
    ] = None,
    fmt: Annotated[
        PlanFormat | None,
        typer.Option("--format", "-f", help="Output format (default: table)."),
    ] = None,
    supervisor_provider: Annotated[
        str | None,
        typer.Option(
            "--supervisor-provider",
            envvar="SUPERVISOR_PROVIDER",
            help="LLM provider of the supervisor (offline, ollama, openai).",
        ),
    ] = None,
    supervisor_model: Annotated[
        str | None,
        typer.Option("--supervisor-model", envvar="SUPERVISOR_MODEL", help="Supervisor model."),
    ] = None,
    language: Annotated[
        str | None,
        typer.Option("--language", envvar="CREW_LANGUAGE", help="Prompt language (fr, en)."),
    ] = None,
) -> None:
    """Plan a goal with the supervisor and print the validated plan (no run)."""
    settings = load_cli_settings(
        ctx,
        {
            "SUPERVISOR_PROVIDER": supervisor_provider,
            "SUPERVISOR_MODEL": supervisor_model,
            "CREW_LANGUAGE": language,
        },
    )
    goal = goal_from_options(title, description, acceptance)
    if as_json and fmt not in (None, PlanFormat.JSON):
        raise InvalidInputError(f"--json conflicts with --format {fmt}")
    chosen = PlanFormat.JSON if as_json else (fmt or PlanFormat.TABLE)

    import asyncio

    from crew.domain.errors import CrewError
    from crew.llm.ledger import recording

    with recording() as book:
        try:
            result = asyncio.run(_plan(settings, goal))
        except CrewError as error:
            if book:
                err_console_print(f"supervisor: {spend_line(book)}")
                if out is not None:
                    write_sidecar(out, book, settings, str(error))
            raise
    call = result.calls[-1]
    err_console_print(
        f"plan: {len(result.plan.nodes)} nodes in {result.attempts} attempt(s) "
        f"({call.provider}/{call.model}); {spend_line(book)}"
    )
    import json

    document = json.dumps(result.plan.to_dict(), ensure_ascii=False, indent=2) + "\n"
    if out is not None:
        write_atomic(out, document)
        write_sidecar(out, book, settings, None)
        err_console_print(f"plan written to {out}")
    if chosen is PlanFormat.JSON:
        sys.stdout.write(document)
        sys.stdout.flush()
        return
    from crew.cli.render import print_plan

    print_plan(result.plan, chosen.value, color=use_color())


async def _plan(settings: Settings, goal: Goal) -> SupervisorResult:
    from crew.engine.planning import plan_goal
    from crew.llm.client import LLMClient
    from crew.llm.registry import ProviderRegistry

    registry = ProviderRegistry(settings)
    try:
        return await plan_goal(LLMClient(settings, registry), settings, goal)
    finally:
        await registry.aclose()


def spend_line(book: CallLedger) -> str:
    """What the supervisor's calls spent, in one line."""
    input_tokens, output_tokens, cost = book.usage()
    failed = f", {len(book.failed)} failed" if book.failed else ""
    shown = "unknown" if cost is None else f"${cost:.6f}"
    return (
        f"{len(book.answered)} call(s) answered{failed}, "
        f"{input_tokens} in / {output_tokens} out tokens, cost {shown}"
    )


def write_sidecar(out: Path, book: CallLedger, settings: Settings, error: str | None) -> None:
    """The supervisor's sidecar next to the plan file: every call, failed ones included."""
    import json

    from crew.engine.sidecar import build_sidecar

    if not book:
        return
    sidecar = build_sidecar(
        run_id="",
        node_key=None,
        role="Supervisor",
        operation="chat",
        calls=book.answered,
        prompt_max_chars=settings.sidecar_prompt_max_chars,
        error=error,
        failed=book.failed,
    )
    write_atomic(out.with_suffix(".llm.json"), json.dumps(sidecar, ensure_ascii=False, indent=2))


def write_atomic(path: Path, text: str) -> None:
    """Write the plan file atomically; the folder must exist (it is the user's choice)."""
    from crew.engine.files import write_atomic as write_bytes_atomic

    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InvalidInputError(f"--out: folder does not exist: {folder}")
    write_bytes_atomic(path, text.encode("utf-8"))
