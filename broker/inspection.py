"""Read-only views of the broker for operators and the REST API (queries in sql/inspect.sql).

Same pattern as broker.lease: each function builds a `Statement` that a client executes
with `run()`. Nothing here changes a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from broker.lease import Row, Statement
from broker.types import JOB_STATES, Job

MAX_PAGE_SIZE = 500


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Optional filters for `list_jobs`; None means "any"."""

    queue: str | None = None
    state: str | None = None
    kind: str | None = None
    tag: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    group: str | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A queue's jobs per state, how long its oldest runnable job waited, its pause and its
    limits (None: unlimited; paused or limited queues are listed even when they hold no
    jobs)."""

    queue: str
    queued: int
    available: int
    scheduled: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    oldest_available_age_seconds: float
    paused: bool
    paused_at: datetime | None = None
    pause_reason: str | None = None
    waiting: int = 0  # jobs whose dependencies have not all succeeded
    concurrency_limit: int | None = None
    rate_limit: int | None = None
    rate_period_seconds: float | None = None
    # Whether a live worker (worker_status) serves the queue: queued jobs in a queue no
    # live worker serves wait until one starts (broker.routing).
    served: bool = True


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A registered worker; status (alive/stopped/gone) and ages use the database clock."""

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
    clock_skew_seconds: float | None
    last_seen_age_seconds: float
    running_jobs: int
    status: str


@dataclass(frozen=True, slots=True)
class Overview:
    """Whole-broker totals."""

    queued: int
    available: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    oldest_available_age_seconds: float
    workers_alive: int
    db_time: datetime
    waiting: int = 0


@dataclass(frozen=True, slots=True)
class QueueGauges:
    """A queue's jobs in every state (zeros included) and how long, in database time, its
    oldest runnable job (queued, run_at reached) has waited since run_at (0 when none)."""

    queue: str
    jobs: dict[str, int]
    oldest_available_age_seconds: float


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What the metrics endpoint reads from the database at once."""

    workers_alive: int
    queues: list[QueueGauges]


@dataclass(frozen=True, slots=True)
class RecentOutcomes:
    """How many of a queue's jobs ended in each finished state within the last `window`
    seconds of database time."""

    queue: str
    succeeded: int
    failed: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """A group's jobs per state (every state listed, zero included)."""

    group: str
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def list_jobs(filters: JobFilter, limit: int, before_id: int | None = None) -> Statement[list[Job]]:
    """Up to `limit` jobs matching `filters`, newest first, with id < before_id when given."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"page size must be between 1 and {MAX_PAGE_SIZE}")
    params = {
        "before_id": before_id,
        "queue": filters.queue,
        "state": filters.state,
        "kind": filters.kind,
        "tag": filters.tag,
        "created_after": filters.created_after,
        "created_before": filters.created_before,
        "group": filters.group,
        "limit": limit,
    }
    # Planned with its values: only a custom plan drops the filters left NULL and can read a
    # rare state from its partial index instead of walking the history by id.
    return Statement("jobs_list", params, lambda rows: [Job(*r) for r in rows], prepare=False)


def queues() -> Statement[list[QueueStats]]:
    """Per-queue counts by state and the age of the oldest runnable job."""
    return Statement("queues_list", {}, lambda rows: [QueueStats(*r) for r in rows])


def workers() -> Statement[list[WorkerInfo]]:
    """Every registered worker, grouped by host in (host_id, seq) order."""
    return Statement("workers_list", {}, lambda rows: [WorkerInfo(*r) for r in rows])


def overview() -> Statement[Overview]:
    """Totals by state, and how many workers are alive."""
    return Statement("stats_overview", {}, lambda rows: Overview(*rows[0]))


def metrics_snapshot() -> Statement[MetricsSnapshot]:
    """Live workers, and every listed queue's jobs per state (zeros included) and the age
    of its oldest runnable job, read in one statement for the metrics endpoint."""

    def decode(rows: list[Row]) -> MetricsSnapshot:
        queues = [
            QueueGauges(str(r[1]), dict(zip(JOB_STATES, map(int, r[2:8]), strict=True)), r[8])
            for r in rows
            if r[1] is not None
        ]
        return MetricsSnapshot(int(rows[0][0]), queues)

    return Statement("metrics_snapshot", {}, decode)


def group_counts(group: str) -> Statement[GroupCounts]:
    """How many jobs of `group` are in each state (jobs_group_idx; no table scan).
    Raises InvalidJobError for a name that no job can have."""
    from broker import spec

    spec.check_group(group)

    def decode(rows: list[Row]) -> GroupCounts:
        found = {str(r[0]): int(r[1]) for r in rows}
        return GroupCounts(group, {state: found.get(state, 0) for state in JOB_STATES})

    return Statement("group_counts", {"group": group}, decode)


def recent_outcomes(window: float = 3600.0) -> Statement[list[RecentOutcomes]]:
    """Per queue, the jobs that finished (succeeded, failed, cancelled) in the last `window`
    seconds, by finished_at in database time (jobs_finished_idx; cost grows with the
    window's volume, not with the history)."""
    if not window > 0:
        raise ValueError("window must be a positive number of seconds")
    return Statement(
        "queues_recent_outcomes",
        {"window": window},
        lambda rows: [RecentOutcomes(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows],
        prepare=False,
    )


def groups(after: str | None = None, limit: int = 100) -> Statement[list[GroupCounts]]:
    """Up to `limit` group names in name order (after `after` when given), each with its
    jobs per state; groups come from jobs_group_idx one probe per name (no scan of the
    history)."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"page size must be between 1 and {MAX_PAGE_SIZE}")

    def decode(rows: list[Row]) -> list[GroupCounts]:
        found: dict[str, dict[str, int]] = {}
        for name, state, jobs in rows:
            counts = found.setdefault(str(name), dict.fromkeys(JOB_STATES, 0))
            if state is not None:
                counts[str(state)] = int(jobs)
        return [GroupCounts(name, counts) for name, counts in found.items()]

    return Statement("groups_list", {"after": after, "limit": limit}, decode)


def schema_revision() -> Statement[str | None]:
    """The Alembic revision the database is at (undefined_table if never migrated)."""
    return Statement("schema_revision", {}, lambda rows: str(rows[0][0]) if rows else None)
