"""`crew db upgrade|current|revision`: the database schema, through Alembic.

Migrations use ALEMBIC_DATABASE_URL when it is set (a sync URL, for example with a
role allowed to run DDL) and DATABASE_URL otherwise. Alembic and SQLAlchemy are
imported inside the commands: `crew --help` must not load them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer

from crew.cli.common import err_console_print, handle_errors, load_cli_settings

T = TypeVar("T")

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="DATABASE_URL",
        help="Database to migrate (sqlite+aiosqlite://... or postgresql+asyncpg://...).",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    db_app = typer.Typer(
        name="db",
        help="Database schema migrations (Alembic).",
        no_args_is_help=True,
    )
    db_app.command("upgrade")(upgrade_command)
    db_app.command("current")(current_command)
    db_app.command("revision")(revision_command)
    app.add_typer(db_app)


def _migration_url(ctx: typer.Context, database_url: str | None) -> str:
    settings = load_cli_settings(ctx, {"DATABASE_URL": database_url})
    return str(settings.alembic_database_url or settings.database_url)


def _display(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid URL>"


@contextmanager
def _alembic_errors() -> Iterator[None]:
    """Alembic reports bad revisions and unreachable heads as CommandError: exit 2."""
    from alembic.util.exc import CommandError

    from crew.domain.errors import InvalidInputError

    try:
        yield
    except CommandError as error:
        raise InvalidInputError(str(error)) from None


def _run(fn: Callable[[], T]) -> T:
    with _alembic_errors():
        return fn()


@handle_errors
def upgrade_command(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    database_url: DatabaseUrlOption = None,
) -> None:
    """Upgrade the database schema (to the newest revision by default)."""
    from crew.store import migrate

    url = _migration_url(ctx, database_url)
    before = _run(lambda: migrate.current(url))
    _run(lambda: migrate.upgrade(url, revision))
    after = _run(lambda: migrate.current(url))
    where = _display(url)
    if before == after:
        typer.echo(f"{where}: already at {after or 'base'}")
    else:
        typer.echo(f"{where}: upgraded from {before or 'base'} to {after}")


@handle_errors
def current_command(
    ctx: typer.Context,
    database_url: DatabaseUrlOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the database's schema revision and whether it is the newest one."""
    from crew.store import migrate

    url = _migration_url(ctx, database_url)
    revision = _run(lambda: migrate.current(url))
    head = _run(migrate.head)
    at_head = revision == head
    if as_json:
        payload: dict[str, Any] = {"revision": revision, "head": head, "at_head": at_head}
        import json

        typer.echo(json.dumps(payload))
        return
    if at_head:
        typer.echo(f"{revision} (head)")
    elif revision is None:
        typer.echo(f"none (empty database; head is {head}: run `crew db upgrade`)")
    else:
        typer.echo(f"{revision} (behind head {head}: run `crew db upgrade`)")


@handle_errors
def revision_command(
    ctx: typer.Context,
    message: Annotated[str, typer.Option("--message", "-m", help="What the revision changes.")],
    autogenerate: Annotated[
        bool,
        typer.Option(
            "--autogenerate",
            help="Fill the revision from the difference between the models and the database.",
        ),
    ] = False,
    database_url: DatabaseUrlOption = None,
) -> None:
    """Create a migration script in migrations/versions (source checkout only)."""
    from crew.store import migrate

    url = _migration_url(ctx, database_url) if autogenerate else None
    path = _run(lambda: migrate.revision(message, autogenerate=autogenerate, url=url))
    typer.echo(str(path))
    err_console_print(
        "review the script, then set SCHEMA_HEAD in crew/store/__init__.py to its revision id"
    )
