"""What the API and the engine call into when observability is on, built from settings.

Every hook is None when its feature is off, and the modules behind them
(crew.observability.metrics, crew.observability.sentry) are imported only then: with
METRICS_ENABLED unset and no SENTRY_DSN, nothing of prometheus_client or sentry_sdk is
loaded and the request path does no extra work.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from crew.settings import Settings

HttpObserver = Callable[[str, str, int, float], None]
"""(method, route template or "unmatched", status, seconds)."""
ErrorReporter = Callable[[BaseException, dict[str, str]], None]
"""(exception, tags): an unhandled error, reported to Sentry."""


@dataclass(slots=True)
class Hooks:
    http: HttpObserver | None = None
    llm: Any = None
    """A crew.llm.client.CallObserver, or None."""
    report_error: ErrorReporter | None = None
    run_listener_factories: list[Callable[[], Any]] = field(default_factory=list)
    """Each builds one engine event listener for a run (it may have a `close()`)."""
    on_exit: list[Callable[[], None]] = field(default_factory=list)
    worker_claimed: Callable[[Any], None] | None = None
    """Told of every run an embedded or standalone worker claims (a crew.store Claim)."""
    worker_counts: Callable[[dict[str, int]], None] | None = None
    """Told the runs queued, held and orphaned, at each worker heartbeat."""

    def run_listeners(self) -> list[Any]:
        return [factory() for factory in self.run_listener_factories]


def server_hooks(settings: Settings, role_names: Iterable[str] = ()) -> Hooks:
    """The hooks of `crew serve` (and `crew worker`) for these settings; `role_names`
    are the roles metrics label by name (others are `other`)."""
    hooks = Hooks()
    if settings.metrics_enabled:
        from crew.observability import metrics

        hooks.http = metrics.observe_http
        roles = metrics.RoleLabels(role_names)
        hooks.llm = metrics.LLMMetrics(settings, roles)
        hooks.run_listener_factories.append(lambda: metrics.RunMetrics(roles))
        hooks.on_exit.append(metrics.process_exiting)
        hooks.worker_claimed = metrics.observe_claim
        hooks.worker_counts = metrics.observe_lease_counts
    if settings.sentry_dsn:
        from crew.observability import sentry

        hooks.report_error = sentry.report_exception
        hooks.run_listener_factories.append(lambda: sentry.RunReporter(settings))
    return hooks


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(path: str) -> None:
    """Create the directory and remove an earlier server's files, which would otherwise
    be merged into this one's counters (prometheus_client's multiprocess rule)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(path, name))
