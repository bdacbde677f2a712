"""What the repository returns: frozen, plain dataclasses.

Callers (engine, CLI, API) get values they can pass around and serialise without an
open session or lazy loading; timestamps are aware UTC and JSON columns are decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    title: str
    status: str
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    request_id: str | None
    options: dict[str, Any]
    task_spec: dict[str, Any]
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cost_unknown: bool
    error: str | None
    owner: str | None
    heartbeat_at: datetime | None
    cancel_requested_at: datetime | None
    updated_at: datetime
    idempotency_key: str | None = None
    lease_expires_at: datetime | None = None
    lease_generation: int = 0
    recoveries: int = 0
    error_code: str | None = None
    reserved_tokens: int = 0
    reserved_cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class RunProgress:
    """A run's status, totals and cancel flag, without its plan and options.

    What an executing process re-reads while it runs (heartbeat, summary): the task
    spec of a run with thousands of nodes takes milliseconds to decode, every time.
    """

    id: str
    title: str
    status: str
    created_at: datetime
    started_at: datetime | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cost_unknown: bool
    cancel_requested_at: datetime | None
    owner: str | None = None
    lease_generation: int = 0


@dataclass(frozen=True, slots=True)
class NodeRecord:
    id: str
    run_id: str
    key: str
    position: int
    title: str
    type: str
    role: str | None
    status: str
    deps: list[str]
    spec: dict[str, Any]
    checksum: str | None
    attempts: int
    started_at: datetime | None
    ended_at: datetime | None
    error: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    claimed_by: str | None
    lease_expires_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    id: str
    run_id: str
    node_id: str | None
    type: str
    path: str
    content: str | None
    summary: str | None
    sha256: str
    size: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    run_id: str
    node_id: str | None
    node_key: str | None
    type: str
    level: str
    payload: dict[str, Any]
    message: str
    request_id: str | None
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class NewNode:
    """A node to insert with its run; the repository generates the id (uuid4)."""

    key: str
    position: int
    title: str
    type: str
    role: str | None
    deps: list[str]
    spec: dict[str, Any]
    status: str
    checksum: str | None = None


@dataclass(frozen=True, slots=True)
class NewArtifact:
    """An artifact to insert with `add_artifacts`; id and created_at are generated."""

    run_id: str
    node_id: str | None
    type: str
    path: str
    content: str | None
    summary: str | None
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One event for `add_events` (bulk insert); the timestamp defaults to now."""

    run_id: str
    type: str
    level: str
    message: str
    payload: dict[str, Any] = field(default_factory=dict)
    node_id: str | None = None
    node_key: str | None = None
    request_id: str | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    id: str
    name: str
    kind: str
    host: str
    pid: int
    status: str
    max_runs: int
    runs_held: int
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    """A run an executor now holds: the fencing token of its writes.

    `previous_owner`/`previous_status` say what the run was before this claim: a
    `running` run with another owner is a recovery (its lease expired).
    """

    run_id: str
    owner: str
    generation: int
    previous_owner: str | None
    previous_status: str
    recoveries: int
