"""Request and response bodies of the REST API as msgspec Structs (validated on decode)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

import msgspec
from msgspec import Meta

from broker.inspection import MAX_PAGE_SIZE
from broker.lease import DEFAULT_MAX_SNOOZES
from broker.spec import DEFAULT_QUEUE, JobSpec, QueueName
from broker.types import Job, JobEvent, JobState, LogLine

# Everything a submitter sends is the job spec of broker.spec (its fields, bounds and
# rules, the same at every door); what follows is the worker protocol and the answers.
WorkerId = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$")]
Seconds = Annotated[float, Meta(ge=0, le=366 * 86400)]
LeaseTtl = Annotated[float, Meta(ge=1, le=3600)]
# Ids and epochs are bigints, but the schema caps them at 2**53: JSON Schema bounds are
# floats, and 2**63 - 1 would be published as 2**63, a value the API then refuses.
MAX_BIGINT = 2**53
Epoch = Annotated[int, Meta(ge=0, le=MAX_BIGINT)]
MAX_BATCH = 5000
MAX_ERROR_LENGTH = 10_000


class JobIn(JobSpec, frozen=True):
    """A job to enqueue (broker.spec.JobSpec). Give run_at or delay (seconds), not both, and
    deadline or start_within (seconds), not both. Without `queue`, the job goes to the
    queue live workers declare for its kind, else `default` (broker.routing)."""

    # Not named is not `default`: the routed enqueue chooses (mypy: a wider type than
    # JobSpec's, on purpose; spec() narrows it back).
    queue: Annotated[
        QueueName | None,
        Meta(
            description="Default: the queue live workers declare for the kind (each "
            "records its tasks' queues), else `default`; the answer's `warnings` say when "
            "no live worker serves the queue the job went to."
        ),
    ] = None  # type: ignore[assignment]

    def spec(self) -> JobSpec:
        """The job spec to enqueue (`default` standing in for a queue not named)."""
        return msgspec.structs.replace(self, queue=self.queue or DEFAULT_QUEUE)


class BatchIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Jobs enqueued together in one transaction: all of them or none."""

    jobs: Annotated[list[JobIn], Meta(min_length=1, max_length=MAX_BATCH)]


class JobOut(msgspec.Struct, kw_only=True):
    """A job as the API shows it. Durations are seconds; times are the database's."""

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
    timeout: float | None
    group: str | None = None
    concurrency_key: str | None = None
    deadline: datetime | None = None
    depends_on: list[int] = []
    # Carrier data for the run, such as W3C trace context (docs/tracing.md).
    meta: dict[str, Any] = {}

    @classmethod
    def of(cls, job: Job, key_prefix: str = "") -> Self:
        """The API view of `job`; the caller's own idempotency-key scope is stripped."""
        key = job.idempotency_key
        if key is not None and key_prefix and key.startswith(key_prefix):
            key = key[len(key_prefix) :]
        return cls(
            id=job.id,
            queue=job.queue,
            kind=job.kind,
            args=job.args,
            priority=job.priority,
            state=job.state,
            run_at=job.run_at,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            lease_epoch=job.lease_epoch,
            lease_expires_at=job.lease_expires_at,
            worker_id=job.worker_id,
            idempotency_key=key,
            subject_key=job.subject_key,
            result=job.result,
            last_error=job.last_error,
            tags=job.tags,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            cancel_requested_at=job.cancel_requested_at,
            timeout=job.timeout.total_seconds() if job.timeout is not None else None,
            group=job.group,
            concurrency_key=job.concurrency_key,
            deadline=job.deadline,
            depends_on=job.depends_on,
            meta=job.meta,
        )


class EnqueuedOut(msgspec.Struct):
    """One job of a batch: its id, created=false for an idempotent repeat, and warnings
    (e.g. that no live worker serves the queue it went to)."""

    id: int
    created: bool
    warnings: list[str] = []


class JobCreatedOut(JobOut, kw_only=True):
    """The enqueued job, with warnings: e.g. that no live worker serves its queue, so it
    would wait until one starts."""

    warnings: list[str] = []


class BatchOut(msgspec.Struct):
    jobs: list[EnqueuedOut]


class JobPage(msgspec.Struct):
    """One page of jobs, newest first; pass next_cursor as `cursor` for the next page."""

    jobs: list[JobOut]
    next_cursor: str | None


class EventOut(msgspec.Struct):
    id: int
    job_id: int
    event: str
    epoch: int | None
    worker_id: str | None
    at: datetime
    detail: dict[str, Any] | None

    @classmethod
    def of(cls, e: JobEvent) -> EventOut:
        return cls(e.id, e.job_id, e.event, e.epoch, e.worker_id, e.at, e.detail)


class EventList(msgspec.Struct):
    events: list[EventOut]


class LogLineOut(msgspec.Struct):
    id: int
    job_id: int
    epoch: int
    at: datetime
    line: str

    @classmethod
    def of(cls, line: LogLine) -> LogLineOut:
        return cls(line.id, line.job_id, line.epoch, line.at, line.line)


class LogPage(msgspec.Struct):
    """Log lines oldest first; pass next_after as `after` to read on."""

    lines: list[LogLineOut]
    next_after: int


class StateOut(msgspec.Struct):
    """A job's state after a control action."""

    id: int
    state: JobState


class LeaseRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Claim up to `limit` jobs from `queues` for `lease_ttl` seconds (server default if unset)."""

    worker_id: WorkerId
    queues: Annotated[list[QueueName], Meta(min_length=1, max_length=64)]
    limit: Annotated[int, Meta(ge=1, le=MAX_PAGE_SIZE)] = 1
    lease_ttl: LeaseTtl | None = None


class LeaseOut(msgspec.Struct):
    """A claimed job: every later write must carry `lease_epoch` (the fencing token)."""

    job_id: int
    lease_epoch: int
    queue: str
    kind: str
    args: dict[str, Any]
    priority: int
    attempt: int
    max_attempts: int
    timeout: float | None
    worker_id: str
    lease_ttl: float
    # Carrier data the job was enqueued with, such as W3C trace context (docs/tracing.md).
    meta: dict[str, Any] = {}


class LeaseList(msgspec.Struct):
    leases: list[LeaseOut]


class HeartbeatIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    worker_id: WorkerId
    lease_epoch: Epoch
    lease_ttl: LeaseTtl | None = None


class HeartbeatOut(msgspec.Struct):
    """The lease was extended; cancel_requested tells the worker to stop the job."""

    job_id: int
    lease_epoch: int
    cancel_requested: bool


class CompleteIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    worker_id: WorkerId
    lease_epoch: Epoch
    result: Any = None


class FailIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A failed attempt: retried after backoff (or `delay` seconds) unless not retryable."""

    worker_id: WorkerId
    lease_epoch: Epoch
    error: Annotated[str, Meta(min_length=1, max_length=MAX_ERROR_LENGTH)]
    retryable: bool = True
    delay: Seconds | None = None


class SnoozeIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Run the job again after `delay` seconds without counting the attempt; once it has
    snoozed `max_snoozes` times the next snooze fails it."""

    worker_id: WorkerId
    lease_epoch: Epoch
    delay: Seconds
    max_snoozes: Annotated[int, Meta(ge=0, le=1_000_000)] = DEFAULT_MAX_SNOOZES


class LogsIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Lines a running job logged; stored only while the lease is held."""

    worker_id: WorkerId
    lease_epoch: Epoch
    lines: Annotated[
        list[Annotated[str, Meta(max_length=MAX_ERROR_LENGTH)]], Meta(min_length=1, max_length=500)
    ]


class LogsStored(msgspec.Struct):
    job_id: int
    stored: int


class WriteOut(msgspec.Struct):
    """A fenced write that applied; `state` is the job's new state."""

    job_id: int
    lease_epoch: int
    state: JobState


class QueueOut(msgspec.Struct):
    queue: str
    waiting: int
    queued: int
    available: int
    scheduled: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    oldest_available_age_seconds: float
    paused: bool
    # Limits (broker.configure_queue); None: unlimited.
    concurrency_limit: int | None = None
    rate_limit: int | None = None
    rate_period_seconds: float | None = None
    served: Annotated[
        bool,
        Meta(
            description="Whether a live worker serves the queue: queued jobs in a queue "
            "nobody serves wait until such a worker starts."
        ),
    ] = True


class QueueList(msgspec.Struct):
    queues: list[QueueOut]


class QueuePatch(msgspec.Struct, forbid_unknown_fields=True):
    """Limits to set; a field left out keeps its value, null makes it unlimited."""

    concurrency_limit: int | msgspec.UnsetType | None = msgspec.UNSET
    rate_limit: int | msgspec.UnsetType | None = msgspec.UNSET
    rate_period_seconds: float | msgspec.UnsetType | None = msgspec.UNSET


class QueueSettingsOut(msgspec.Struct):
    queue: str
    concurrency_limit: int | None
    rate_limit: int | None
    rate_period_seconds: float | None
    paused: bool


class PauseIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: str | None = None


class QueuePauseOut(msgspec.Struct):
    queue: str
    paused: bool
    # False when the queue already was in that state (resume of a running queue).
    changed: bool


class WorkerOut(msgspec.Struct):
    worker_id: str
    host_id: str
    seq: int
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    version: str | None
    started_at: datetime
    last_seen: datetime
    stopped_at: datetime | None
    last_seen_age_seconds: float
    status: Literal["alive", "stopped", "gone"]
    alive: bool
    running_jobs: int
    clock_skew_seconds: float | None
    clock_skew_exceeded: bool


class HostOut(msgspec.Struct):
    """Workers grouped by host (host_id survives restarts); skew is the worst seen."""

    host_id: str
    hostname: str
    workers: int
    alive: int
    concurrency: int
    running_jobs: int
    max_abs_clock_skew_seconds: float | None
    clock_skew_exceeded: bool


class WorkerList(msgspec.Struct):
    workers: list[WorkerOut]
    hosts: list[HostOut]
    clock_skew_tolerance_seconds: float


class StatsOut(msgspec.Struct):
    waiting: int
    queued: int
    available: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    total: int
    oldest_available_age_seconds: float
    workers_alive: int
    queues: int
    db_time: datetime


class GroupOut(msgspec.Struct):
    """A group's jobs per state (every state, zero included) and their total."""

    group: str
    counts: dict[str, int]
    total: int


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    status: str
    database: str
    schema_revision: str | None
    expected_revision: str


class Problem(msgspec.Struct, omit_defaults=True):
    """An error, as RFC 9457 problem details (application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None
