"""`crew gc`: delete finished runs older than a duration, with their rows and files.

Retention is explicit and conservative: only completed, failed, canceled and interrupted
runs are candidates (never a queued, running or parked one), `--dry-run` shows what would
go, and the summary says how much space came back (see crew/engine/retention.py for when
the SQLite file is vacuumed).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from crew.cli.common import err_console_print, handle_errors, load_cli_settings, run_async
from crew.domain.errors import InvalidInputError

if TYPE_CHECKING:
    from crew.engine.retention import GcReport

FINISHED = ("completed", "failed", "canceled", "interrupted")
"""The same list as crew.store.retention.FINISHED_STATUSES (not imported: `--help` must
not load the store)."""
NEVER_COLLECTED = ("queued", "running", "awaiting_approval")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d{1,9}[smhdw])+")
_PART = re.compile(r"(\d+)([smhdw])")
SHOWN_CHARS = 40
MAX_DURATION = timedelta(days=36500)
"""A century: anything longer reaches back before any run, and past date arithmetic."""


def register(app: typer.Typer) -> None:
    app.command("gc")(gc_command)


def _quoted(value: str) -> str:
    """A user's value, cut so a huge one cannot flood the terminal."""
    return repr(value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "…")


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`, `2w`, or sums of them (`1d12h`)."""
    value = text.strip()
    if not _DURATION.fullmatch(value):
        raise InvalidInputError(
            f"--older-than {_quoted(text)} is not a duration: use a number followed by "
            "s, m, h, d or w (e.g. 30d, 12h, 90m)"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    if seconds > MAX_DURATION.total_seconds():
        raise InvalidInputError(f"--older-than {_quoted(text)} is too long (at most 36500d)")
    return timedelta(seconds=seconds)


def _check_statuses(statuses: list[str] | None) -> tuple[str, ...]:
    if not statuses:
        return FINISHED
    for status in statuses:
        if status in NEVER_COLLECTED:
            raise InvalidInputError(
                f"--status {status} cannot be collected: only finished runs are "
                f"({', '.join(FINISHED)})"
            )
        if status not in FINISHED:
            raise InvalidInputError(
                f"--status {_quoted(status)} is unknown (accepted: {', '.join(FINISHED)})"
            )
    return tuple(dict.fromkeys(statuses))


@handle_errors
def gc_command(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Delete finished runs that ended more than this ago: 30d, 12h, 90m, 2w, 1d12h.",
        ),
    ],
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="Only runs with this status (repeatable): completed, failed, canceled, "
            "interrupted. Default: all four.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be deleted; delete nothing.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Delete finished runs older than --older-than, with their rows and files under
    RUNS_ROOT; print what went and the space freed. Never touches queued or running runs."""
    age = parse_duration(older_than)
    statuses = _check_statuses(status)
    settings = load_cli_settings(ctx)

    async def main() -> GcReport:
        from crew.engine.retention import collect
        from crew.store.database import open_repository

        async with open_repository(settings) as repo:
            return await collect(
                repo.engine, settings.runs_root, older_than=age, statuses=statuses, dry_run=dry_run
            )

    report = run_async(main)
    if json_output:
        import json

        data = {"older_than": older_than, **report.to_dict()}
        print(json.dumps(data, ensure_ascii=False))
    else:
        print("\n".join(render(report, older_than)))
    failures = [run for run in report.runs if run.files_error]
    for run in failures:
        err_console_print(f"error: run {run.id}: its files could not be deleted: {run.files_error}")
    raise typer.Exit(1 if failures else 0)


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns


def render(report: GcReport, older_than: str) -> list[str]:
    verb = "would remove" if report.dry_run else "removed"
    lines = []
    for run in report.runs:
        ended = run.ended_at or run.created_at
        lines.append(
            f"{verb} {run.id}  {run.status:<11} ended {ended:%Y-%m-%d %H:%M}  "
            f"{human_bytes(run.freed_bytes):>9}  {run.title[:60]}"
        )
    count = len(report.runs)
    if not count:
        lines.append(f"no finished runs ended more than {older_than} ago")
    else:
        lines.append(
            f"{verb} {count} run(s), {'would free' if report.dry_run else 'freed'} "
            f"{human_bytes(report.freed_bytes)} (files {human_bytes(report.files_bytes)}, "
            f"database content {human_bytes(report.content_bytes)})"
        )
    vacuum = report.vacuum
    if vacuum is not None:
        sizes = f"{human_bytes(vacuum.file_bytes_before)} -> {human_bytes(vacuum.file_bytes_after)}"
        state = "vacuumed" if vacuum.ran else "not vacuumed"
        lines.append(f"database file {state} ({vacuum.reason}): {sizes}")
    return lines
