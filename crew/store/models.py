"""The tables of DESIGN §4 as SQLModel classes.

The repository queries them through SQLAlchemy Core (`Model.__table__`), not the ORM:
rows are written and read in bulk, and Core skips identity-map bookkeeping we never use.
The classes are still SQLModel tables so Alembic and anyone reading the schema see one
declaration. Column types are spelled out (`sa_type`) so the migration can be plain
SQLAlchemy and match these classes exactly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlmodel import Field, SQLModel

from crew.store.types import UTCDateTime, event_id_type, json_type

# Named constraints let future migrations drop or alter them by name, including SQLite's
# batch mode, which has to recreate tables and needs the names to match.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata

_ZERO = {"server_default": "0"}


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_created_at", "created_at"),
        Index("ix_runs_started_at", "started_at"),
        Index("ix_runs_status_created_at", "status", "created_at"),
        Index("ix_runs_idempotency_key", "idempotency_key", unique=True),
        Index("ix_runs_status_lease_expires_at", "status", "lease_expires_at"),
    )

    id: str = Field(sa_type=String(64), primary_key=True)
    title: str = Field(sa_type=Text())
    status: str = Field(sa_type=String(16))
    created_at: datetime = Field(sa_type=UTCDateTime())
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    request_id: str | None = Field(default=None, sa_type=String(128))
    options: dict[str, Any] = Field(default_factory=dict, sa_type=json_type())
    task_spec: dict[str, Any] = Field(default_factory=dict, sa_type=json_type())
    input_tokens: int = Field(default=0, sa_type=Integer(), sa_column_kwargs=_ZERO)
    output_tokens: int = Field(default=0, sa_type=Integer(), sa_column_kwargs=_ZERO)
    cost_usd: float = Field(default=0.0, sa_type=Float(), sa_column_kwargs=_ZERO)
    # True once any call's price was unknown: cost_usd is then a lower bound.
    cost_unknown: bool = Field(
        default=False, sa_type=Boolean(), sa_column_kwargs={"server_default": false()}
    )
    error: str | None = Field(default=None, sa_type=Text())
    # The lease: the executor holding the run, its last renewal, and when the lease runs
    # out (then any executor may claim the run and resume it). Every claim bumps the
    # generation; an owner's writes are fenced on (owner, generation).
    owner: str | None = Field(default=None, sa_type=String(255))
    heartbeat_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    lease_generation: int = Field(default=0, sa_type=Integer(), sa_column_kwargs=_ZERO)
    # Automatic takeovers of this run after its owner died (RUN_MAX_RECOVERIES bounds it).
    recoveries: int = Field(default=0, sa_type=Integer(), sa_column_kwargs=_ZERO)
    # Why the run ended (crew.domain.status.EndReason), kept so a later command can tell.
    error_code: str | None = Field(default=None, sa_type=String(32))
    # Budget reservations of the calls in flight, shared by every process acting on the run.
    reserved_tokens: int = Field(default=0, sa_type=Integer(), sa_column_kwargs=_ZERO)
    reserved_cost_usd: float = Field(default=0.0, sa_type=Float(), sa_column_kwargs=_ZERO)
    cancel_requested_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    updated_at: datetime = Field(sa_type=UTCDateTime())
    # A digest of (API key, Idempotency-Key) for runs started by `POST /tasks`: a repeated
    # request finds its run here, across restarts and server processes.
    idempotency_key: str | None = Field(default=None, sa_type=String(64))


class Node(SQLModel, table=True):
    __tablename__ = "nodes"
    __table_args__ = (
        UniqueConstraint("run_id", "key"),
        Index("ix_nodes_run_id_position", "run_id", "position"),
        Index("ix_nodes_run_id_status", "run_id", "status"),
    )

    id: str = Field(sa_type=String(36), primary_key=True)
    run_id: str = Field(sa_type=String(64), foreign_key="runs.id", ondelete="CASCADE")
    key: str = Field(sa_type=String(64))
    position: int = Field(sa_type=Integer())
    title: str = Field(sa_type=Text())
    type: str = Field(sa_type=String(16))
    role: str | None = Field(default=None, sa_type=String(128))
    status: str = Field(sa_type=String(16))
    deps: list[str] = Field(default_factory=list, sa_type=json_type())
    spec: dict[str, Any] = Field(default_factory=dict, sa_type=json_type())
    checksum: str | None = Field(default=None, sa_type=String(64))
    attempts: int = Field(default=0, sa_type=Integer(), sa_column_kwargs=_ZERO)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    error: str | None = Field(default=None, sa_type=Text())
    input_tokens: int = Field(default=0, sa_type=Integer(), sa_column_kwargs=_ZERO)
    output_tokens: int = Field(default=0, sa_type=Integer(), sa_column_kwargs=_ZERO)
    # NULL means "unknown": one call with an unknown price makes the node's cost unknown,
    # and NULL + x stays NULL in SQL, so the increment keeps it that way by itself.
    cost_usd: float | None = Field(default=0.0, sa_type=Float(), sa_column_kwargs=_ZERO)
    claimed_by: str | None = Field(default=None, sa_type=String(255))
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    created_at: datetime = Field(sa_type=UTCDateTime())


class Artifact(SQLModel, table=True):
    __tablename__ = "artifacts"
    __table_args__ = (
        Index("ix_artifacts_node_id", "node_id"),
        Index("ix_artifacts_run_id_type", "run_id", "type"),
        # One row per file: a node that runs again overwrites its files, and its new
        # rows replace the old ones (ARTIFACT_CREATED events keep the history).
        Index("ux_artifacts_run_id_path", "run_id", "path", unique=True),
    )

    id: str = Field(sa_type=String(36), primary_key=True)
    run_id: str = Field(sa_type=String(64), foreign_key="runs.id", ondelete="CASCADE")
    # Nullable: the supervisor's sidecar and the run summary belong to the run itself.
    node_id: str | None = Field(
        default=None, sa_type=String(36), foreign_key="nodes.id", ondelete="CASCADE"
    )
    type: str = Field(sa_type=String(32))
    path: str = Field(sa_type=Text())  # relative to RUNS_ROOT, posix separators
    content: str | None = Field(default=None, sa_type=Text())
    summary: str | None = Field(default=None, sa_type=Text())
    sha256: str = Field(sa_type=String(64))
    size: int = Field(sa_type=Integer())
    created_at: datetime = Field(sa_type=UTCDateTime())


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_run_id_id", "run_id", "id"),
        Index("ix_events_run_id_type", "run_id", "type"),
        # AUTOINCREMENT: SQLite must never hand out an id again, even after the newest
        # rows were deleted, or a follower's cursor could skip events.
        {"sqlite_autoincrement": True},
    )

    # Monotonic: followers use the last id they saw as their cursor.
    id: int | None = Field(default=None, sa_type=event_id_type(), primary_key=True)
    run_id: str = Field(sa_type=String(64), foreign_key="runs.id", ondelete="CASCADE")
    node_id: str | None = Field(
        default=None, sa_type=String(36), foreign_key="nodes.id", ondelete="CASCADE"
    )
    node_key: str | None = Field(default=None, sa_type=String(64))
    type: str = Field(sa_type=String(32))
    level: str = Field(sa_type=String(16))
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=json_type())
    message: str = Field(sa_type=Text())
    request_id: str | None = Field(default=None, sa_type=String(128))
    timestamp: datetime = Field(sa_type=UTCDateTime())


class Worker(SQLModel, table=True):
    """An executing process (`crew worker`, `crew serve`, a foreground `crew run`).

    Rows are written by the process itself (register, heartbeat, deregister) and read
    by operators; a row whose heartbeat is old belongs to a process that died.
    """

    __tablename__ = "workers"
    __table_args__ = (Index("ix_workers_heartbeat_at", "heartbeat_at"),)

    id: str = Field(sa_type=String(255), primary_key=True)
    name: str = Field(sa_type=String(255))
    kind: str = Field(sa_type=String(16))
    host: str = Field(sa_type=String(255))
    pid: int = Field(sa_type=Integer())
    status: str = Field(sa_type=String(16))
    max_runs: int = Field(default=1, sa_type=Integer(), sa_column_kwargs={"server_default": "1"})
    runs_held: int = Field(default=0, sa_type=Integer(), sa_column_kwargs=_ZERO)
    started_at: datetime = Field(sa_type=UTCDateTime())
    heartbeat_at: datetime = Field(sa_type=UTCDateTime())


runs_table = Run.__table__  # type: ignore[attr-defined]
nodes_table = Node.__table__  # type: ignore[attr-defined]
artifacts_table = Artifact.__table__  # type: ignore[attr-defined]
events_table = Event.__table__  # type: ignore[attr-defined]
workers_table = Worker.__table__  # type: ignore[attr-defined]
