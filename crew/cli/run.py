"""`crew run`: run a plan file, or plan with the supervisor and run, or resume a run."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from crew.cli.common import (
    discard_output,
    goal_from_options,
    handle_errors,
    load_cli_settings,
    run_async,
    use_color,
)
from crew.domain.errors import (
    BudgetExceededError,
    CrewError,
    InvalidInputError,
    UnavailableError,
)
from crew.domain.providers import BUILTIN_PROVIDERS, PROVIDER_NAMES
from crew.domain.vocabulary import DEFAULT_TITLE

if TYPE_CHECKING:
    from crew.domain.plan import Plan
    from crew.engine.journal import EngineEvent
    from crew.settings import Settings

EXIT_BY_STATUS = {"completed": 0, "failed": 1, "interrupted": 130, "canceled": 1}


def register(app: typer.Typer) -> None:
    app.command("run", no_args_is_help=False)(run_command)


def normalize_argv(argv: list[str]) -> list[str]:
    """Accept the prototype's `--run-id ID --resume` spelling as `--resume ID`."""
    if "--resume" not in argv or "--run-id" not in argv:
        return argv
    index = argv.index("--resume")
    following = argv[index + 1] if index + 1 < len(argv) else None
    if following is not None and not following.startswith("-"):
        return argv
    run_index = argv.index("--run-id")
    if run_index + 1 >= len(argv):
        return argv
    run_id = argv[run_index + 1]
    rest = [a for i, a in enumerate(argv) if i not in (index, run_index, run_index + 1)]
    return [*rest, "--resume", run_id]


@handle_errors
def run_command(
    ctx: typer.Context,
    task_file: Annotated[
        str | None, typer.Option("--task-file", help="Plan file to run ('-' reads stdin).")
    ] = None,
    use_supervisor: Annotated[
        bool, typer.Option("--use-supervisor", help="Plan with the supervisor, then run.")
    ] = False,
    title: Annotated[
        str, typer.Option("--title", help="The goal's title (with --use-supervisor).")
    ] = DEFAULT_TITLE,
    description: Annotated[
        str | None, typer.Option("--description", help="The goal's description.")
    ] = None,
    acceptance: Annotated[
        list[str] | None,
        typer.Option("--acceptance", help="An acceptance criterion (repeatable)."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="Continue an interrupted or failed run (id or prefix)."),
    ] = None,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Id for the new run (letters, digits, . _ -).")
    ] = None,
    override: Annotated[
        list[str] | None,
        typer.Option("--override", help="Force this node to run again on resume (repeatable)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and store the run; call no LLM.")
    ] = False,
    max_concurrency: Annotated[
        int | None,
        typer.Option("--max-concurrency", help="Nodes running at once. \\[env: MAX_CONCURRENCY]"),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option("--retries", help="Retries of a failing node. \\[env: NODE_RETRIES]"),
    ] = None,
    node_timeout: Annotated[
        float | None,
        typer.Option("--node-timeout", help="Seconds a node may take. \\[env: NODE_TIMEOUT_S]"),
    ] = None,
    executor_provider: Annotated[
        str | None,
        typer.Option(
            "--executor-provider",
            help="Provider for executors: "
            + ", ".join(BUILTIN_PROVIDERS)
            + " or an installed plugin's. \\[env: EXECUTOR_PROVIDER]",
        ),
    ] = None,
    executor_model: Annotated[
        str | None,
        typer.Option("--executor-model", help="Model for executors. \\[env: EXECUTOR_MODEL]"),
    ] = None,
    manager_provider: Annotated[
        str | None,
        typer.Option(
            "--manager-provider",
            help="Provider for managers: "
            + ", ".join(BUILTIN_PROVIDERS)
            + " or an installed plugin's. \\[env: MANAGER_PROVIDER]",
        ),
    ] = None,
    manager_model: Annotated[
        str | None,
        typer.Option("--manager-model", help="Model for managers. \\[env: MANAGER_MODEL]"),
    ] = None,
    supervisor_provider: Annotated[
        str | None,
        typer.Option(
            "--supervisor-provider",
            help="Provider for the supervisor: "
            + ", ".join(BUILTIN_PROVIDERS)
            + " or an installed plugin's. \\[env: SUPERVISOR_PROVIDER]",
        ),
    ] = None,
    supervisor_model: Annotated[
        str | None,
        typer.Option(
            "--supervisor-model", help="Model for the supervisor. \\[env: SUPERVISOR_MODEL]"
        ),
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option(
            "--max-cost",
            metavar="USD",
            help="Cost budget of the run: no LLM call starts that could exceed it (exit 3). "
            "\\[env: RUN_MAX_COST_USD]",
        ),
    ] = None,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            metavar="N",
            help="Token budget of the run (input + output), enforced the same way. "
            "\\[env: RUN_MAX_TOKENS]",
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON summary object on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            help="Queue the run and exit at once: a `crew worker` (or `crew serve`) "
            "executes it. Prints the run id (--json: {run_id, status}).",
        ),
    ] = False,
) -> None:
    """Run a plan (--task-file), plan and run (--use-supervisor), or resume (--resume)."""
    sources = [task_file is not None, use_supervisor, resume is not None]
    if sum(sources) != 1:
        raise InvalidInputError(
            "give exactly one of --task-file FILE (or - for stdin), --use-supervisor, "
            "or --resume RUN_ID"
        )
    if resume is not None and (run_id is not None or dry_run):
        raise InvalidInputError("--run-id and --dry-run apply to new runs, not to --resume")
    if override and resume is None:
        raise InvalidInputError("--override KEY only applies with --resume RUN_ID")
    if detach and (resume is not None or dry_run):
        raise InvalidInputError(
            "--detach queues a new run; it does not apply to --resume or --dry-run"
        )
    goal = goal_from_options(title, description, acceptance) if use_supervisor else None
    if run_id is not None:  # before anything is planned, opened or written
        from crew.engine.service import check_run_id

        check_run_id(run_id)
    role_flags = {
        "executor": (executor_provider, executor_model),
        "manager": (manager_provider, manager_model),
        "supervisor": (supervisor_provider, supervisor_model),
    }
    for kind, (provider_flag, _) in role_flags.items():
        if provider_flag is not None and provider_flag not in PROVIDER_NAMES:
            raise InvalidInputError(
                f"--{kind}-provider {provider_flag!r} is unknown "
                f"(accepted: {PROVIDER_NAMES.accepted()})"
            )
    if max_cost is not None and not max_cost >= 0:
        raise InvalidInputError(f"--max-cost must be a number of USD >= 0, not {max_cost:g}")
    if max_tokens is not None and max_tokens < 1:
        raise InvalidInputError(f"--max-tokens must be an integer >= 1, not {max_tokens}")
    settings = load_cli_settings(
        ctx,
        flags={
            "MAX_CONCURRENCY": max_concurrency,
            "NODE_RETRIES": retries,
            "NODE_TIMEOUT_S": node_timeout,
            "RUN_MAX_COST_USD": max_cost,
            "RUN_MAX_TOKENS": max_tokens,
        },
    )
    plan = _read_plan_file(task_file) if task_file is not None else None
    cli_llm: dict[str, dict[str, str]] = {}
    for kind, (provider_flag, model_flag) in role_flags.items():
        chosen = {k: v for k, v in (("provider", provider_flag), ("model", model_flag)) if v}
        if chosen:
            cli_llm[kind] = chosen
    changes: dict[str, Any] = {
        "max_concurrency": max_concurrency,
        "retries": retries,
        "node_timeout_s": node_timeout,
        "max_cost_usd": max_cost,
        "max_tokens": max_tokens,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if cli_llm:
        changes["llm"] = cli_llm

    observers: list[Any] = []
    if settings.sentry_dsn:  # failed runs and nodes are reported; metrics are the server's
        from crew.observability.sentry import RunReporter, init_sentry

        init_sentry(settings, component="run")
        observers.append(RunReporter(settings))

    view = _Progress(quiet=quiet or False, json_output=json_output)
    known: dict[str, str] = {}  # the run id once one exists, for --json on failure

    async def main() -> dict[str, Any]:
        from crew.engine.options import RunOptions
        from crew.engine.service import SupervisorCalls, create_run, execute_run, new_owner
        from crew.llm.client import LLMClient
        from crew.llm.registry import ProviderRegistry
        from crew.store.database import open_repository

        registry = ProviderRegistry(settings)
        client = LLMClient(settings, registry)
        try:
            async with open_repository(settings) as repo:
                if resume is not None:
                    target = await repo.resolve_run_id(resume)
                    known["run_id"] = target
                    resumer = new_owner()
                    async with _registered(repo, settings, resumer):
                        outcome = await execute_run(
                            repo,
                            settings,
                            client,
                            target,
                            resume=True,
                            rerun=tuple(override or ()),
                            option_changes=changes,
                            listeners=[*view.listeners(), *observers],
                            owner=resumer,
                        )
                    if outcome.already_completed:
                        view.say(f"run {target} is already completed; nothing to do")
                    return outcome.summary
                supervisor = None
                the_plan = plan
                if the_plan is None:
                    assert goal is not None  # no plan file and no resume: --use-supervisor
                    from crew.engine.planning import plan_goal

                    view.say(f"planning {goal.title!r} with the supervisor…")
                    # the supervisor's calls count against the run's budget too
                    result = await plan_goal(
                        client,
                        settings,
                        goal,
                        supervisor_llm=RunOptions(llm=cli_llm).llm_override("supervisor"),
                        max_cost_usd=settings.run_max_cost_usd,
                        max_tokens=settings.run_max_tokens,
                    )
                    the_plan = result.plan
                    supervisor = SupervisorCalls(calls=list(result.calls))
                options = RunOptions.from_settings(
                    settings, dry_run=dry_run, use_supervisor=use_supervisor, **changes
                )
                if dry_run:
                    view.preview(settings, client, the_plan, options, supervisor is not None)
                # A foreground run is leased to this process from its creation, so no
                # worker takes it; a detached one waits in the queue for one.
                owner: str | None = None if detach else new_owner()
                new_id = await create_run(
                    repo,
                    settings,
                    the_plan,
                    options=options,
                    run_id=run_id,
                    owner=owner,
                    supervisor=supervisor,
                )
                known["run_id"] = new_id
                if detach:
                    return {"run_id": new_id, "status": "queued", "detached": True}
                view.start(the_plan.title)
                assert owner is not None
                async with _registered(repo, settings, owner):
                    outcome = await execute_run(
                        repo,
                        settings,
                        client,
                        new_id,
                        listeners=[*view.listeners(), *observers],
                        owner=owner,
                    )
                return outcome.summary
        finally:
            view.stop()
            await registry.aclose()

    from crew.llm.ledger import recording

    with recording() as planning:  # the supervisor's calls (nodes keep their own ledgers)
        try:
            summary = run_async(main)
        except CrewError as error:  # planning failed, or interrupted (130): still one object
            if json_output:
                import json

                from crew.engine.summary import failure_summary

                failed = failure_summary(error, known.get("run_id"), planning)
                print(json.dumps(failed, ensure_ascii=False), flush=True)
            elif planning.answered and "run_id" not in known:
                from crew.cli.plan import spend_line

                view.say(f"supervisor: {spend_line(planning)}")  # spent, though no run exists
            raise
    if summary.get("detached"):
        if json_output:
            import json

            print(json.dumps({"run_id": summary["run_id"], "status": summary["status"]}))
        else:
            print(summary["run_id"])
        raise typer.Exit(0)
    view.finish(summary)
    raise typer.Exit(exit_code(summary))


def _registered(repo: Any, settings: Any, owner: str) -> Any:
    """This process in the workers registry while it executes its run (kind `run`)."""
    import os
    import socket

    from crew.engine.worker import registered

    return registered(
        repo,
        settings,
        worker_id=owner,
        name=f"run@{socket.gethostname()}:{os.getpid()}",
        kind="run",
        max_runs=1,
        state=lambda: (1, "running"),
    )


def exit_code(summary: dict[str, Any]) -> int:
    """The process exit code of a finished run (DESIGN §2): a spent budget is 3, a run
    whose only failures are providers that could not answer is 4."""
    if summary.get("error") == "budget_exceeded":
        return BudgetExceededError.exit_code
    if summary.get("error_code") == "provider_unavailable":
        return UnavailableError.exit_code
    return EXIT_BY_STATUS.get(summary["status"], 1)


def _read_plan_file(task_file: str) -> Plan:
    from crew.cli.common import read_plan_file

    return read_plan_file(task_file)


class _Progress:
    """Where progress goes: a live table on a terminal, plain lines otherwise."""

    def __init__(self, *, quiet: bool, json_output: bool) -> None:
        self.quiet = quiet
        self.json_output = json_output
        self.live: Any = None
        from crew.observability.logging import json_logs

        self.json_logs = json_logs()  # LOG_FORMAT=json: progress goes through the log
        self.tty = sys.stderr.isatty() and use_color(sys.stderr) and not self.json_logs
        self.preview_data: dict[str, Any] | None = None
        self.stderr_closed = False

    def say(self, message: str) -> None:
        if not self.quiet:
            self._progress_line(message)

    def _progress_line(self, text: str) -> None:
        """Write progress to stderr; once its reader has gone, stop writing progress.

        The run itself goes on (`crew run ... 2>&1 | head` must not leave it half done);
        only stdout's JSON or summary still counts, and the exit code says how it went.
        """
        if self.quiet or self.stderr_closed:
            return
        if self.json_logs:
            from crew.cli.event_lines import log_progress

            log_progress(text)
            return
        try:
            print(text, file=sys.stderr, flush=True)
        except BrokenPipeError:
            self.stderr_closed = True
            discard_output(sys.stderr)

    def start(self, title: str) -> None:
        if self.quiet or not self.tty:
            return
        from crew.cli.live import LiveView

        self.live = LiveView(title)

    def listeners(self) -> list[Any]:
        if self.quiet:
            return []
        if self.live is not None:
            return [self.live.listener]
        if self.json_logs:
            from crew.cli.event_lines import log_event

            return [log_event]
        return [self._print_event]

    def _print_event(self, event: EngineEvent) -> None:
        from crew.cli.event_lines import event_line

        self._progress_line(
            event_line(
                event_id=event.id,
                timestamp=event.timestamp,
                type=event.type.value,
                level=event.level.value,
                message=event.message,
                node_key=event.node_key,
            )
        )

    def preview(
        self, settings: Settings, client: Any, plan: Plan, options: Any, planned: bool
    ) -> None:
        from crew.engine.preview import preview_plan

        self.preview_data = preview_plan(settings, plan, options, supervisor_called=planned)
        if self.json_output or self.quiet:
            return
        lines = ["dry run: nothing will be called; this is what would run:"]
        for node in self.preview_data["nodes"]:
            lines.append(
                f"  {node['key']:<16} {node['type']:<9} {node['role'] or '(manager assigns)':<18} "
                f"{node['provider']}/{node['model'] or 'default'}  {node['title']}"
            )
        lines.append(f"  LLM calls that would be made: {self.preview_data['llm_calls']}")
        self._progress_line("\n".join(lines))

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def finish(self, summary: dict[str, Any]) -> None:
        if self.preview_data is not None:
            summary = {**summary, "dry_run": True, "preview": self.preview_data}
        if self.json_output:
            import json

            print(json.dumps(summary, ensure_ascii=False))
            return
        if self.quiet:
            return
        nodes = summary.get("nodes", {})
        cost = summary.get("cost_usd")
        lines = [
            f"run {summary['run_id']} {summary['status']}: "
            f"{nodes.get('completed', 0)}/{nodes.get('total', 0)} nodes completed, "
            f"{nodes.get('failed', 0)} failed, {nodes.get('skipped', 0)} skipped",
            f"tokens: {summary.get('input_tokens', 0)} in / {summary.get('output_tokens', 0)} out"
            f"; cost: {'unknown' if cost is None else f'${cost:.4f}'}"
            f"; {summary.get('duration_ms', 0) / 1000:.1f}s",
        ]
        providers = summary.get("providers") or {}
        if len(providers) > 1 or summary.get("fallback_calls"):
            lines.append(
                "answered by: "
                + ", ".join(f"{name} {count}" for name, count in sorted(providers.items()))
                + f" ({summary.get('fallback_calls', 0)} call(s) by a fallback provider)"
            )
        for path in summary.get("final", []):
            lines.append(f"deliverable: {path}")
        print("\n".join(lines))
