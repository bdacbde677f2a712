"""Prometheus metrics for `crew serve` (METRICS_ENABLED=1).

Imported only when metrics are on: importing this module is what loads
prometheus_client and registers the families, so a server with metrics off pays nothing.

Three feeds, none of which changes the engine:
- HTTP: the request middleware calls `observe_http` once per request with the route
  template (`/runs/{run_id}`), or `unmatched` for a path no route knows.
- Runs and nodes: a `RunMetrics` listener per run, fed the engine's committed events.
- LLM requests: an `LLMMetrics` observer on the server's LLM client, told of every
  provider request (each try, retries and fallbacks included) and every answered call.

Label values are bounded, because every distinct value is a new series: roles outside
the built-in set are `other`; providers outside the known ones are `other`; a model is
reported by name only when the configuration names it (LLM_DEFAULT_MODEL, <ROLE>_MODEL,
<PROVIDER>_FALLBACK_MODEL, or an OPENAI_PRICE_*_<MODEL>_PER_1K price), `default` when the
call named none, and `other` otherwise — a model sent by an API client never becomes a
label. HTTP methods outside the standard ones are `other`.

With PROMETHEUS_MULTIPROC_DIR set (required for `crew serve --workers N`, which sets it
itself when it is missing) values live in per-process files of that directory and
`/metrics` merges them, so any worker answers for all of them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from crew.domain.events import EventType
from crew.domain.providers import PROVIDER_NAMES
from crew.settings import ROLE_NAMES, Settings, price_env_key

log = logging.getLogger("crew.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS = bool(os.environ.get(MULTIPROC_ENV))
"""Decided when prometheus_client is imported, as prometheus_client itself does."""

OTHER = "other"
KNOWN_PROVIDERS = PROVIDER_NAMES
"""Built-in providers and installed plugins' (a bounded set: labels never grow unbounded)."""
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
RUN_STATUSES = ("completed", "failed", "canceled", "interrupted")
END_EVENTS = {
    EventType.RUN_COMPLETED: "completed",
    EventType.RUN_FAILED: "failed",
    EventType.RUN_CANCELED: "canceled",
    EventType.RUN_INTERRUPTED: "interrupted",
}

HTTP_REQUESTS = Counter(
    "crew_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "crew_http_request_duration_seconds",
    "Time to answer an HTTP request (to the end of the response), by method and route.",
    ["method", "route"],
)
RUNS = Counter(
    "crew_runs_total", "Runs this server finished executing, by final status.", ["status"]
)
RUNS_IN_PROGRESS = Gauge(
    "crew_runs_in_progress",
    "Runs this server is executing now.",
    multiprocess_mode="livesum",
)
RUNS_BY_LEASE = Gauge(
    "crew_runs_by_lease",
    "Runs in the database by lease state, as a worker last counted them: queued, held "
    "(running with a live lease) and orphaned (running, lease expired: to be recovered).",
    ["state"],
    multiprocess_mode="mostrecent",
)
RUN_CLAIMS = Counter(
    "crew_run_claims_total",
    "Runs this process's worker claimed, by kind: new (queued) or recovered (its owner's "
    "lease had expired).",
    ["kind"],
)
RUN_DURATION = Histogram(
    "crew_run_duration_seconds",
    "Wall time of a run's execution in this server (from start or resume to its end).",
    ["status"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
)
NODES = Counter(
    "crew_nodes_total",
    "Nodes that ended, by status (completed, failed, skipped, canceled) and role.",
    ["status", "role"],
)
NODE_DURATION = Histogram(
    "crew_node_duration_seconds",
    "Wall time of a node that ran (completed or failed), retries included, by role.",
    ["role"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800),
)
LLM_REQUESTS = Counter(
    "crew_llm_requests_total",
    "Requests to LLM providers (every try), by provider, model, role and outcome "
    "(ok, error, canceled).",
    ["provider", "model", "role", "outcome"],
)
LLM_DURATION = Histogram(
    "crew_llm_request_duration_seconds",
    "Time an LLM provider took to answer one request, by provider and model.",
    ["provider", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
LLM_TOKENS = Counter(
    "crew_llm_tokens_total",
    "Tokens of answered LLM calls, by provider, model and type (input, output).",
    ["provider", "model", "type"],
)
LLM_COST = Counter(
    "crew_llm_cost_usd_total",
    "Cost in USD of answered LLM calls whose price is known, by provider and model.",
    ["provider", "model"],
)
BUDGET_EXCEEDED = Counter("crew_budget_exceeded_total", "Runs that hit their cost or token budget.")

for _status in RUN_STATUSES:  # present at 0 from the first scrape, so rate() works at once
    RUNS.labels(_status)


class RoleLabels:
    """A role as a label: the roles the caller names (the built-in ones) by name, every
    other role (recruited ones, a plan's inventions) as `other`. Passed in, so metrics do
    not depend on the agents layer."""

    def __init__(self, known: Iterable[str]) -> None:
        self.known = frozenset(known)

    def __call__(self, role: str | None) -> str:
        return role if role in self.known else OTHER


def provider_label(provider: str | None) -> str:
    return provider if provider is not None and provider in KNOWN_PROVIDERS else OTHER


class ModelLabels:
    """The bounded set of model label values: the models the configuration names."""

    def __init__(self, settings: Settings, extra: Iterable[str] = ()) -> None:
        names = {settings.llm_default_model, settings.ollama_fallback_model}
        names.add(settings.openai_fallback_model)
        names.update(settings.for_role_kind(kind).model for kind in ROLE_NAMES)
        names.update(extra)
        self.models = frozenset(n for n in names if n)
        self.priced = frozenset(settings.openai_prompt_prices) | frozenset(
            settings.openai_completion_prices
        )
        self._cache: dict[str | None, str] = {}

    def __call__(self, model: str | None) -> str:
        label = self._cache.get(model)
        if label is None:
            label = self._label(model)
            if len(self._cache) < 1024:
                self._cache[model] = label
        return label

    def _label(self, model: str | None) -> str:
        if not model:
            return "default"
        if model in self.models or price_env_key(model) in self.priced:
            return model
        return OTHER


_http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_claim(claim: Any) -> None:
    recovered = claim.previous_status == "running" and claim.previous_owner != claim.owner
    RUN_CLAIMS.labels("recovered" if recovered else "new").inc()


def observe_lease_counts(counts: dict[str, int]) -> None:
    for state in ("queued", "held", "orphaned"):
        RUNS_BY_LEASE.labels(state).set(counts.get(state, 0))


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    """One answered request (the middleware passes the route template or `unmatched`)."""
    key = (method, route, status)
    children = _http_children.get(key)
    if children is None:
        name = method if method in HTTP_METHODS else OTHER
        children = (
            HTTP_REQUESTS.labels(name, route, str(status)),
            HTTP_DURATION.labels(name, route),
        )
        _http_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


class LLMMetrics:
    """The LLM client's observer: one per server process (see crew.llm.client)."""

    def __init__(self, settings: Settings, roles: RoleLabels) -> None:
        self.model = ModelLabels(settings)
        self.role = roles

    def request_done(
        self, provider: str, model: str | None, role: str, outcome: str, seconds: float
    ) -> None:
        p, m = provider_label(provider), self.model(model)
        LLM_REQUESTS.labels(p, m, self.role(role), outcome).inc()
        LLM_DURATION.labels(p, m).observe(seconds)

    def call_done(self, result: Any) -> None:
        p, m = provider_label(result.provider), self.model(result.request.model)
        LLM_TOKENS.labels(p, m, "input").inc(max(0, result.response.input_tokens))
        LLM_TOKENS.labels(p, m, "output").inc(max(0, result.response.output_tokens))
        if result.cost_usd is not None and result.cost_usd > 0:
            LLM_COST.labels(p, m).inc(result.cost_usd)


class RunMetrics:
    """An engine event listener for one run's execution in this process.

    It keeps the little state the events need (when the run and each node started, the
    roles the plan and the manager gave) and drops it with the run. `close()` is called
    when the execution ends whatever happened, so a run whose process path raised still
    leaves `crew_runs_in_progress`.
    """

    def __init__(self, roles: RoleLabels) -> None:
        self.role = roles
        self._started: float | None = None
        self._nodes_started: dict[str, float] = {}
        self._roles: dict[str, str | None] = {}

    def __call__(self, event: Any) -> None:
        try:
            self._handle(event)
        except Exception:  # metrics must never break a run
            log.debug("metrics listener failed on %s", event.type, exc_info=True)

    def _handle(self, event: Any) -> None:
        kind, payload, key = event.type, event.payload, event.node_key
        now = time.monotonic()
        if kind in (EventType.RUN_STARTED, EventType.RUN_RESUMED):
            if self._started is None:
                RUNS_IN_PROGRESS.inc()
            self._started = now
        elif kind is EventType.PLAN_CREATED:
            for node in payload.get("nodes", ()):
                self._roles[node.get("key")] = node.get("role")
        elif kind is EventType.MANAGER_ASSIGNED:
            self._roles.update(payload.get("assignments") or {})
        elif kind is EventType.NODE_STARTED and key is not None:
            self._nodes_started.setdefault(key, now)
            self._roles[key] = payload.get("role") or self._roles.get(key)
        elif kind in (EventType.NODE_COMPLETED, EventType.NODE_FAILED) and key is not None:
            role = self.role(payload.get("role") or self._roles.get(key))
            status = "completed" if kind is EventType.NODE_COMPLETED else "failed"
            NODES.labels(status, role).inc()
            began = self._nodes_started.pop(key, None)
            if began is not None:
                NODE_DURATION.labels(role).observe(now - began)
            elif payload.get("latency_ms") is not None:
                NODE_DURATION.labels(role).observe(float(payload["latency_ms"]) / 1000)
        elif kind is EventType.NODE_SKIPPED and key is not None:
            NODES.labels("skipped", self.role(self._roles.get(key))).inc()
        elif kind is EventType.BUDGET_EXCEEDED:
            BUDGET_EXCEEDED.inc()
        elif kind in END_EVENTS:
            status = END_EVENTS[kind]
            RUNS.labels(status).inc()
            for node in payload.get("canceled_nodes") or ():
                NODES.labels("canceled", self.role(self._roles.get(node))).inc()
            if self._started is not None:
                RUN_DURATION.labels(status).observe(now - self._started)
                RUNS_IN_PROGRESS.dec()
                self._started = None
            elif payload.get("duration_ms") is not None:
                RUN_DURATION.labels(status).observe(float(payload["duration_ms"]) / 1000)
            self._nodes_started.clear()

    def close(self) -> None:
        if self._started is not None:
            RUNS_IN_PROGRESS.dec()
            self._started = None


def exposition() -> tuple[bytes, str]:
    """The text format body and its content type (merged across workers if needed)."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def process_exiting() -> None:
    """A worker is stopping: its live gauge values must stop counting (multiprocess)."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
