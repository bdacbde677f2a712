"""Sentry error reporting (SENTRY_DSN; SENTRY_ENV and RELEASE name where it comes from).

Initialised only with a DSN, by `crew serve` (each worker), `crew run` and `crew worker`.
What is reported, each with the tags `run_id`, `node_key`, `role`, `request_id` that apply:
- unhandled errors of API requests (the 500s the middleware answers);
- failed runs and failed nodes (RUN_FAILED, NODE_FAILED events, through `RunReporter`);
- a run whose execution crashed, and internal errors of `crew run`.

What is never sent: prompts, LLM outputs, request bodies, API keys, `Authorization`
headers. Nothing crew reports carries prompts or outputs (node errors are crew's own
messages); on top of that `before_send` drops request data, cookies, headers, query
strings, `extra`, local variables and breadcrumb data, and masks configured secret
values and secret-shaped strings everywhere in the event. The SDK collects no personal
data (`send_default_pii` off; every `data_collection` category off on SDKs that have
it) and its automatic framework integrations are not enabled (they attach requests).
"""

from __future__ import annotations

import logging
from typing import Any

import sentry_sdk

from crew import __version__
from crew.domain.events import EventType
from crew.observability import context
from crew.observability.redact import Redactor, secret_values
from crew.settings import Settings

log = logging.getLogger("crew.sentry")

MAX_TEXT = 300
"""Error texts are cut to this length: enough to page someone, not a document."""
TAG_NAMES = ("run_id", "node_key", "role", "request_id")
_REQUEST_KEEP = ("method", "url")


def init_sentry(settings: Settings, *, component: str) -> bool:
    """Start reporting if SENTRY_DSN is set; returns whether it did."""
    if not settings.sentry_dsn:
        return False
    from sentry_sdk.integrations.logging import LoggingIntegration

    redactor = Redactor(secret_values(settings))
    options: dict[str, Any] = {}
    if "data_collection" in sentry_sdk.consts.DEFAULT_OPTIONS:
        # Newer SDKs: the structured form of send_default_pii=False, every category off.
        off = {"mode": "off"}
        options["data_collection"] = {
            "user_info": False,
            "cookies": off,
            "http_headers": {"request": off},
            "http_bodies": [],
            "url_query_params": off,
            "gen_ai": {"inputs": False, "outputs": False},
            "database_query_data": False,
            "stack_frame_variables": False,
        }
    # Older SDKs: send_default_pii defaults to False, which is what crew wants.
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.sentry_env or "production",
        release=settings.release or f"crew@{__version__}",
        max_request_body_size="never",
        include_local_variables=False,
        auto_enabling_integrations=False,
        # Log records become breadcrumbs only; errors are reported explicitly, with tags.
        integrations=[LoggingIntegration(level=logging.INFO, event_level=None)],
        before_send=_hook(scrub_event, redactor),
        before_breadcrumb=_hook(scrub_breadcrumb, redactor),
        **options,
    )
    sentry_sdk.set_tag("component", component)
    return True


def _hook(scrub: Any, redactor: Redactor) -> Any:
    def hook(item: Any, hint: Any) -> Any:
        return scrub(item, redactor)

    return hook


def scrub_event(event: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """Remove what could carry prompts, outputs, bodies or keys; mask secrets left over."""
    event.pop("extra", None)
    request = event.get("request")
    if isinstance(request, dict):
        kept = {k: request[k] for k in _REQUEST_KEEP if k in request}
        if "url" in kept:
            kept["url"] = str(kept["url"]).split("?", 1)[0]
        event["request"] = kept
    user = event.get("user")
    if isinstance(user, dict):
        event["user"] = {k: v for k, v in user.items() if k == "id"}
    for exception in (event.get("exception") or {}).get("values") or ():
        for frame in (exception.get("stacktrace") or {}).get("frames") or ():
            frame.pop("vars", None)
    crumbs = event.get("breadcrumbs")
    if isinstance(crumbs, dict):
        crumbs["values"] = [scrub_breadcrumb(c, redactor) for c in crumbs.get("values") or ()]
    cleaned: dict[str, Any] = redactor.deep(event)
    return cleaned


def scrub_breadcrumb(crumb: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    kept: dict[str, Any] = {
        k: crumb[k] for k in ("type", "category", "level", "timestamp") if k in crumb
    }
    message = crumb.get("message")
    if isinstance(message, str):
        kept["message"] = redactor(message[:MAX_TEXT])
    return kept


def _tags(tags: dict[str, Any]) -> dict[str, str]:
    merged = {**context.current(), **{k: v for k, v in tags.items() if v}}
    return {k: str(v)[:200] for k, v in merged.items()}


def report_exception(error: BaseException, tags: dict[str, str]) -> None:
    """An unhandled error (API request, crashed run, CLI internal error)."""
    try:
        sentry_sdk.capture_exception(error, tags=_tags(tags))
    except Exception:  # reporting must never add a failure of its own
        log.debug("could not report to Sentry", exc_info=True)


def report_message(
    message: str, tags: dict[str, Any], *, fingerprint: list[str], details: dict[str, Any]
) -> None:
    try:
        sentry_sdk.capture_message(
            message,
            level="error",
            tags=_tags(tags),
            fingerprint=fingerprint,
            contexts={"crew": details},
        )
    except Exception:
        log.debug("could not report to Sentry", exc_info=True)


class RunReporter:
    """Engine event listener: reports NODE_FAILED and RUN_FAILED of one run."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._roles: dict[str, str] = {}

    def __call__(self, event: Any) -> None:
        payload = event.payload
        if event.type is EventType.NODE_STARTED and event.node_key:
            self._roles[event.node_key] = payload.get("role") or ""
        elif event.type is EventType.NODE_FAILED:
            role = payload.get("role") or self._roles.get(event.node_key or "", "")
            error = str(payload.get("error") or "")[:MAX_TEXT]
            report_message(
                f"node {event.node_key} failed ({role or 'no role'}): {error}",
                {
                    "run_id": event.run_id,
                    "node_key": event.node_key,
                    "role": role,
                    "request_id": event.request_id,
                },
                fingerprint=["crew-node-failed", role or "none"],
                details={"error": error, "attempts": payload.get("attempts")},
            )
        elif event.type is EventType.RUN_FAILED:
            error = str(payload.get("error") or "")[:MAX_TEXT]
            report_message(
                f"run failed: {error}",
                {"run_id": event.run_id, "request_id": event.request_id},
                fingerprint=["crew-run-failed"],
                details={"error": error, "nodes": payload.get("nodes")},
            )

    def close(self) -> None:
        self._roles.clear()


def flush(timeout_s: float = 2.0) -> None:
    client = sentry_sdk.get_client()
    if client.is_active():
        client.flush(timeout=timeout_s)
