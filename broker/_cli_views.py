"""Read-only statements of the operator CLI (queries in sql/cli.sql): queues with their pause
state, and workers with the status the broker.worker_status view gives them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from broker.lease import Statement


@dataclass(frozen=True, slots=True)
class QueueRow:
    """A queue's jobs per state, how long its oldest runnable job waited, and its pause."""

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
    paused_at: datetime | None
    pause_reason: str | None


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A registered worker; `status` is alive, stopped or gone by the database clock."""

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


def queue_stats() -> Statement[list[QueueRow]]:
    """Every queue that has jobs or is paused, by name."""
    return Statement("cli_queue_stats", {}, lambda rows: [QueueRow(*r) for r in rows])


def workers() -> Statement[list[WorkerRow]]:
    """Every registered worker, in (host_id, seq) order."""
    return Statement("cli_workers", {}, lambda rows: [WorkerRow(*r) for r in rows])


@dataclass(frozen=True, slots=True)
class Summary:
    """Workers alive now, and the database's time."""

    workers_alive: int
    db_time: datetime


def summary() -> Statement[Summary]:
    """How many workers the worker_status view calls alive, and the database's now()."""
    return Statement("cli_summary", {}, lambda rows: Summary(*rows[0]))
