"""`crew serve`: the HTTP API (Starlette on uvicorn) over the same repository.

Starlette and uvicorn are imported when the command runs, never at `crew --help`.
uvicorn picks uvloop and httptools itself when they are installed ("auto").

Logging is crew's (LOG_LEVEL, LOG_FORMAT; uvicorn's own lines go through the same
handler). With METRICS_ENABLED and `--workers N > 1`, prometheus_client's multiprocess
mode is required: PROMETHEUS_MULTIPROC_DIR names a directory the workers share; when it
is not set, a temporary one is created for this server and removed when it stops. Either
way the directory's metric files from an earlier server are removed at start.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from crew.cli.common import handle_errors, load_cli_settings, state
from crew.domain.errors import InvalidInputError

NO_KEY_MESSAGE = (
    "no API key configured: the API would be open to anyone who can reach it. Set API_KEY "
    "(e.g. `export API_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')`, "
    "or API_KEY=... in .env; a comma-separated list allows rotation), or pass "
    "--insecure-no-auth with a loopback --host for local experiments."
)
GRACEFUL_SHUTDOWN_S = 15


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@handle_errors
def serve_command(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    reload: Annotated[
        bool, typer.Option("--reload", help="Restart on code changes (dev).")
    ] = False,
    workers: Annotated[int, typer.Option("--workers", help="Worker processes.", min=1)] = 1,
    root_path: Annotated[
        str, typer.Option("--root-path", help="URL prefix when served behind a proxy.")
    ] = "",
    insecure_no_auth: Annotated[
        bool,
        typer.Option("--insecure-no-auth", help="Serve without API key (loopback host only)."),
    ] = False,
) -> None:
    """Serve the HTTP API. [env: API_KEY, DATABASE_URL, CORS_ORIGINS, SERVE_MAX_CONCURRENT_RUNS,
    TASKS_DIR, TASKS_RATE_PER_MIN, TASKS_RATE_BURST, METRICS_ENABLED, PROMETHEUS_MULTIPROC_DIR,
    SENTRY_DSN, SENTRY_ENV, RELEASE, LOG_LEVEL, LOG_FORMAT]"""
    settings = load_cli_settings(ctx)
    if not settings.api_keys:
        if not insecure_no_auth:
            raise InvalidInputError(NO_KEY_MESSAGE)
        if not is_loopback(host):
            raise InvalidInputError(
                f"--insecure-no-auth is only allowed on a loopback host, not {host!r}; "
                "set API_KEY to serve on other interfaces"
            )
    import uvicorn

    verbose = state(ctx).verbose  # logging is configured by load_cli_settings
    level = "debug" if verbose else settings.log_level.lower()
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "root_path": root_path,
        "log_level": level,
        "log_config": None,  # crew's handler (configure_logging) formats uvicorn's lines too
        "access_log": False,
        "loop": "auto",
        "http": "auto",
        "proxy_headers": True,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
    }
    created_dir = _metrics_dir(settings.metrics_enabled, workers if not reload else 1)
    try:
        if reload or workers > 1:
            env_file = state(ctx).env_file
            if env_file is not None:
                os.environ["CREW_SERVE_ENV_FILE"] = str(env_file)
            if insecure_no_auth:
                os.environ["CREW_SERVE_INSECURE_NO_AUTH"] = "1"
            if verbose:
                os.environ["CREW_SERVE_VERBOSE"] = "1"
            uvicorn.run(
                "crew.api.app:app_from_environment",
                factory=True,
                reload=reload,
                workers=None if reload else workers,
                **common,
            )
            return
        _serve_one(settings, insecure_no_auth, common)
    finally:
        if created_dir is not None:
            import shutil

            shutil.rmtree(created_dir, ignore_errors=True)


def _metrics_dir(metrics_enabled: bool, workers: int) -> str | None:
    """Prepare PROMETHEUS_MULTIPROC_DIR when metrics need it; returns a directory this
    server created (to remove at exit), or None."""
    from crew.observability.hooks import MULTIPROC_ENV, prepare_multiprocess_dir

    configured = os.environ.get(MULTIPROC_ENV)
    if not metrics_enabled or (workers <= 1 and not configured):
        return None
    created = None
    if not configured:
        import tempfile

        configured = created = tempfile.mkdtemp(prefix="crew-metrics-")
        os.environ[MULTIPROC_ENV] = configured
    prepare_multiprocess_dir(configured)
    return created


def _serve_one(settings: Any, insecure_no_auth: bool, common: dict[str, Any]) -> None:
    import uvicorn

    from crew.api.app import create_app

    if settings.sentry_dsn:
        from crew.observability.sentry import init_sentry

        init_sentry(settings, component="serve")

    app = create_app(settings, insecure_no_auth=insecure_no_auth)

    signals = 0

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # SIGTERM/Ctrl-C: stop claiming runs; those in flight get
            # WORKER_SHUTDOWN_GRACE_S, then go back to the queue for the next server or
            # worker. Open event streams close. A second signal exits 130 at once: the
            # runs' leases then expire and other executors take them over.
            nonlocal signals
            signals += 1
            if signals > 1:
                os._exit(130)
            app.state.crew.begin_shutdown_threadsafe()
            super().handle_exit(sig, frame)

    Server(uvicorn.Config(app, **common)).run()
