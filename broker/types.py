"""The broker's row and value types: a leaf module (standard library only), so any layer
can name a job, a lease or a state without importing the database code.

The values are what broker.lease's statements decode rows into; their columns are those
of broker/schema.py. River keeps its `rivertype` the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar, get_args

JobState = Literal["waiting", "queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
TERMINAL_STATES: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")


class StopReason(StrEnum):
    """Why a worker stops a running handler (its cancellation names it)."""

    CANCEL = "cancel requested"
    LOST = "lease lost"
    SHUTDOWN = "worker shutdown"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class Enqueued:
    """Result of an enqueue: the job id, and False in `created` for an idempotent replay.
    `warnings` come from a routed enqueue (broker.routing): e.g. that no live worker serves
    the queue the job went to."""

    id: int
    created: bool
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Fence:
    """What every fenced write presents: the job, the lease epoch of the claim that made
    this holder its owner, and the holder. A write matches only while that epoch holds
    the job `running`; an HTTP worker sends just these three."""

    job_id: int
    epoch: int
    worker_id: str


@dataclass(frozen=True, slots=True)
class Lease:
    """A claimed job and the epoch (fencing token) every later write must present."""

    job_id: int
    epoch: int
    queue: str
    kind: str
    args: dict[str, Any]
    priority: int
    attempt: int
    max_attempts: int
    timeout: float | None
    worker_id: str
    # Carrier data the job was enqueued with (trace context: broker.tracing).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def fence(self) -> Fence:
        return Fence(self.job_id, self.epoch, self.worker_id)


# Anything a fenced write can be made for: a whole lease or just its fence.
Held = Lease | Fence


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """Whether one fenced write applied; `state` is the job's new state when known."""

    job_id: int
    epoch: int
    applied: bool
    state: JobState | None


# A holder of a lease as the caller knows it: the worker keeps whole leases, the HTTP
# worker protocol only their fences.
H = TypeVar("H", Lease, Fence)


@dataclass(frozen=True, slots=True)
class HeartbeatOutcome(Generic[H]):
    """Leases extended, leases lost, and held jobs whose cancellation was requested."""

    extended: list[H]
    lost: list[H]
    cancel_requested: list[H]


@dataclass(frozen=True, slots=True)
class Reaped:
    """A job whose lease expired, and where the reaper sent it (queued/failed/cancelled)."""

    job_id: int
    state: JobState


@dataclass(frozen=True, slots=True)
class Job:
    """A row of broker.jobs."""

    id: int
    queue: str
    kind: str
    args: dict[str, Any]
    priority: int
    state: JobState
    run_at: datetime
    attempts: int
    max_attempts: int
    lease_epoch: int
    lease_expires_at: datetime | None
    worker_id: str | None
    idempotency_key: str | None
    subject_key: str | None
    result: Any
    last_error: str | None
    tags: list[str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    timeout: timedelta | None
    group: str | None = None
    concurrency_key: str | None = None
    deadline: datetime | None = None
    # The jobs this one waits for (or waited for), from broker.job_dependencies.
    depends_on: list[int] = field(default_factory=list)
    # Carrier data for the run, such as trace context (broker.tracing).
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A row of broker.job_events."""

    id: int
    job_id: int
    event: str
    epoch: int | None
    worker_id: str | None
    at: datetime
    detail: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class LogLine:
    """A row of broker.job_logs."""

    id: int
    job_id: int
    epoch: int
    at: datetime
    line: str
