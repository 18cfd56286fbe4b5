"""How the `broker` CLI prints: aligned text tables for people, stable JSON for scripts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import msgspec

from broker.inspection import QueueStats, WorkerInfo
from broker.types import Job, JobEvent, LogLine

_GAP = "  "


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[str] = ()) -> str:
    """`rows` under `headers`, columns padded to their widest cell, two spaces apart.

    Columns named in `right` are right-aligned. Trailing blanks are trimmed from each line.
    """
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if header in right else cell.ljust(width)
            for cell, width, header in zip(cells, widths, headers, strict=True)
        ]
        return _GAP.join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    """`name  value` lines with the names padded to the same width."""
    width = max((len(name) for name, _ in pairs), default=0)
    return "\n".join(f"{name.ljust(width)}{_GAP}{value}".rstrip() for name, value in pairs)


def to_json(value: Any) -> str:
    """JSON text; datetimes are ISO 8601 with their offset (the database's UTC)."""
    return msgspec.json.encode(value).decode()


def when(value: datetime | None) -> str:
    """A database timestamp for a table: UTC, to the second, or '-'."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def duration(seconds: float | None) -> str:
    """A short human duration: 850ms, 42s, 3m05s, 2h10m, 4d03h; '-' for None."""
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 1:
        return f"{sign}{s * 1000:.0f}ms"
    whole = int(s)
    if whole < 60:
        return f"{sign}{whole}s"
    if whole < 3600:
        return f"{sign}{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{sign}{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{sign}{whole // 86400}d{whole % 86400 // 3600:02d}h"


def clip(text: str | None, width: int = 60) -> str:
    """One line of at most `width` characters ('-' for None)."""
    if text is None:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# --- JSON shapes (the same field names as the REST API) --------------------------------


def job_json(job: Job) -> dict[str, Any]:
    """A job as GET /v1/jobs/{id} shows it: durations in seconds, ISO timestamps."""
    return {
        "id": job.id,
        "queue": job.queue,
        "kind": job.kind,
        "args": job.args,
        "priority": job.priority,
        "state": job.state,
        "run_at": job.run_at,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "lease_epoch": job.lease_epoch,
        "lease_expires_at": job.lease_expires_at,
        "worker_id": job.worker_id,
        "idempotency_key": job.idempotency_key,
        "subject_key": job.subject_key,
        "result": job.result,
        "last_error": job.last_error,
        "tags": job.tags,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "cancel_requested_at": job.cancel_requested_at,
        "timeout": job.timeout.total_seconds() if job.timeout is not None else None,
        "group": job.group,
        "concurrency_key": job.concurrency_key,
        "deadline": job.deadline,
        "depends_on": job.depends_on,
    }


def event_json(event: JobEvent) -> dict[str, Any]:
    """An event row with its own field names (as the API shows it)."""
    return asdict(event)


def log_json(line: LogLine) -> dict[str, Any]:
    """A log line with its own field names (as the API shows it)."""
    return asdict(line)


def queue_json(q: QueueStats) -> dict[str, Any]:
    """A queue as GET /v1/queues shows it (limits included), plus its pause."""
    return {
        "queue": q.queue,
        "waiting": q.waiting,
        "queued": q.queued,
        "available": q.available,
        "scheduled": q.scheduled,
        "running": q.running,
        "succeeded": q.succeeded,
        "failed": q.failed,
        "cancelled": q.cancelled,
        "oldest_available_age_seconds": q.oldest_available_age_seconds,
        "paused": q.paused,
        "paused_at": q.paused_at,
        "pause_reason": q.pause_reason,
        "concurrency_limit": q.concurrency_limit,
        "rate_limit": q.rate_limit,
        "rate_period_seconds": q.rate_period_seconds,
        "served": q.served,
    }


def worker_json(w: WorkerInfo, skew_tolerance: float) -> dict[str, Any]:
    """A worker as GET /v1/workers shows it, plus `status` (alive, stopped or gone)."""
    return {
        "worker_id": w.worker_id,
        "host_id": w.host_id,
        "seq": w.seq,
        "hostname": w.hostname,
        "pid": w.pid,
        "queues": w.queues,
        "concurrency": w.concurrency,
        "version": w.version,
        "started_at": w.started_at,
        "last_seen": w.last_seen,
        "stopped_at": w.stopped_at,
        "last_seen_age_seconds": w.last_seen_age_seconds,
        "alive": w.status == "alive",
        "status": w.status,
        "running_jobs": w.running_jobs,
        "clock_skew_seconds": w.clock_skew_seconds,
        "clock_skew_exceeded": w.clock_skew_seconds is not None
        and abs(w.clock_skew_seconds) > skew_tolerance,
    }


class Progress:
    """A one-line counter on a terminal (`\\r`-rewritten) with the rate so far and, when the
    size is known, the percentage and the time left at that rate; silent when `stream` is
    not a terminal."""

    def __init__(self, stream: Any, total_bytes: int | None) -> None:
        self.stream = stream
        self.total_bytes = total_bytes
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.width = 0

    def line(self, jobs: int, bytes_read: int, elapsed: float) -> str:
        """The text shown after `elapsed` seconds, `jobs` enqueued from `bytes_read`."""
        text = f"enqueued {jobs:,} jobs"
        if self.total_bytes:
            text += f" ({min(100, bytes_read * 100 // self.total_bytes)}%)"
        if elapsed > 0:
            text += f", {jobs / elapsed:,.0f} jobs/s"
        if self.total_bytes and 0 < bytes_read < self.total_bytes and elapsed > 0:
            left = elapsed * (self.total_bytes - bytes_read) / bytes_read
            text += f", ETA {duration(left)}"
        return text

    def update(self, jobs: int, bytes_read: int) -> None:
        if not self.enabled:
            return
        text = self.line(jobs, bytes_read, time.monotonic() - self.started)
        # Pad over a longer previous line (the ETA part comes and goes).
        self.stream.write("\r" + text.ljust(self.width))
        self.width = len(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
