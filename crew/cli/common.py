"""What every command shares: global options, settings loading, error translation.

Errors from anywhere below arrive as crew.domain.errors.CrewError subclasses carrying
their exit code; this module turns them into one readable paragraph on stderr, with a
traceback only under `-v`.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer

from crew.domain.errors import CrewError, InterruptedRunError, InvalidInputError

if TYPE_CHECKING:
    from crew.agents.goal import Goal
    from crew.domain.plan import Plan

EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a writer whose pipe's reader exited."""

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class CliState:
    env_file: Path | None = None
    verbose: bool = False


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def load_cli_settings(ctx: typer.Context, flags: Mapping[str, Any] | None = None) -> Any:
    """Settings with CLI flags (as variable name -> value) on top of everything else.

    Every command that reads settings comes through here, so this is also where logging
    is configured (LOG_LEVEL, LOG_FORMAT, secrets masked; `-v`: DEBUG and tracebacks):
    once the command runs, never at import or for `--help`.
    """
    from crew.observability.logging import configure_logging
    from crew.settings import load_settings

    current = state(ctx)
    settings = load_settings(env_file=current.env_file, flags=flags)
    configure_logging(settings, verbose=current.verbose)
    return settings


def goal_from_options(title: str, description: str | None, acceptance: list[str] | None) -> Goal:
    """The goal given with --title, --description and --acceptance.

    A blank title or criterion is refused rather than dropped: it is usually an empty
    shell variable, and planning for nothing would hide that.
    """
    from crew.agents.goal import Goal
    from crew.domain.limits import MAX_DESCRIPTION, MAX_ITEM, MAX_ITEMS, MAX_TITLE, check_text

    if not title.strip():
        raise InvalidInputError("--title must not be empty")
    criteria = [criterion.strip() for criterion in acceptance or ()]
    if not all(criteria):
        raise InvalidInputError("--acceptance must not be empty")
    problems: list[str] = []
    check_text(title, "--title", MAX_TITLE, problems)
    if description:
        check_text(description, "--description", MAX_DESCRIPTION, problems)
    if len(criteria) > MAX_ITEMS:
        problems.append(f"--acceptance is given {len(criteria)} times (at most {MAX_ITEMS})")
    for criterion in criteria:
        check_text(criterion, "--acceptance", MAX_ITEM, problems)
    if problems:
        raise InvalidInputError("invalid goal", problems=problems)
    return Goal(
        title=title.strip(),
        description=description.strip() if description and description.strip() else None,
        acceptance=tuple(criteria),
    )


def read_plan_file(task_file: str) -> Plan:
    """The validated plan of a plan file, or of stdin for `-`.

    Read as bytes, at most MAX_PLAN_BYTES, and decoded strictly (crew.domain.json_input):
    every way a file can be wrong is an InvalidInputError (exit 2), never a traceback.
    """
    from crew.domain.json_input import decode_json
    from crew.domain.limits import MAX_PLAN_BYTES
    from crew.domain.plan import parse_plan

    if task_file == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        raw: str | bytes = (stdin or sys.stdin).read(MAX_PLAN_BYTES + 1)
        source = "stdin"
    else:
        try:
            with open(task_file, "rb") as file:
                raw = file.read(MAX_PLAN_BYTES + 1)
        except FileNotFoundError:
            raise InvalidInputError(f"plan file not found: {task_file}") from None
        except (OSError, ValueError) as error:
            reason = getattr(error, "strerror", None) or error
            raise InvalidInputError(f"cannot read plan file {task_file}: {reason}") from None
        source = task_file
    if len(raw) > MAX_PLAN_BYTES:
        raise InvalidInputError(
            f"{source} is too large: a plan is at most {MAX_PLAN_BYTES // (1024 * 1024)} MiB"
        )
    return parse_plan(decode_json(raw, source))


def discard_output(stream: Any) -> None:
    """Point a stream whose pipe's reader has gone at /dev/null, so that later writes and
    the flush at exit go nowhere instead of raising BrokenPipeError again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def err_console_print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def use_color(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    return stream.isatty() and not os.environ.get("NO_COLOR")


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Run a command, translating CrewError and Ctrl-C into exit codes (DESIGN §2)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        verbose = _verbose_from(args, kwargs)
        try:
            return func(*args, **kwargs)
        except CrewError as error:
            if verbose:
                traceback.print_exc()
            err_console_print(f"error: {error}")
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err_console_print("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # The reader of stdout went away (`crew events tail ID | head`): stop quietly,
            # with the status a process killed by SIGPIPE has.
            discard_output(sys.stdout)
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as error:  # a bug: say so plainly, keep the traceback for -v
            if "sentry_sdk" in sys.modules:  # only loaded when SENTRY_DSN started it
                from crew.observability.sentry import report_exception

                report_exception(error, {})
            if verbose:
                traceback.print_exc()
            err_console_print(
                f"internal error: {error.__class__.__name__}: {error} (run with -v for details)"
            )
            raise typer.Exit(1) from None

    return wrapper


def _verbose_from(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bool:
    for value in (*args, *kwargs.values()):
        if isinstance(value, typer.Context):
            return state(value).verbose
    return False


def run_async(main: Callable[[], Awaitable[R]]) -> R:
    """Run a command's coroutine; SIGTERM cancels it like Ctrl-C does.

    Cancellation reaches the engine as CancelledError, which leaves a run `interrupted`
    and resumable before the process exits 130.
    """
    # Imported here, not at the top: asyncio costs ~15 ms, a tenth of `crew --help`.
    import asyncio
    import contextlib
    import signal

    async def runner() -> R:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None:
            # not possible outside the main thread or on platforms without signals
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGTERM, task.cancel)
        return await main()

    try:
        return asyncio.run(runner())
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise InterruptedRunError("interrupted") from None
