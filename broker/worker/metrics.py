"""A worker's Prometheus metrics, served on `--metrics-port` (docs/metrics.md).

The runtime and the writer report what happens through the hooks of `Metrics`, which
records nothing: without `--metrics-port` a worker imports no prometheus_client and starts
no server. `PrometheusMetrics` records into prometheus_client metrics on a registry of its
own (never the library's global one), which `MetricsServer` serves over HTTP.

With `--processes N` the supervisor serves and its children record: prometheus_client's
multiprocess mode, each child writing its values to files in a directory the supervisor
empties before any child starts (`MultiprocessDir`), and the supervisor summing them on
every scrape (MultiProcessCollector). A restarted child's predecessor keeps its files, so
the sums never go down (decision 017).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from broker.errors import ConfigError
from broker.lease import CancelAcked, Completed, Failed, Finish, Released, Snoozed
from broker.types import Lease, WriteOutcome

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry, Counter, Histogram

DEFAULT_METRICS_HOST = "0.0.0.0"
# prometheus_client reads it when imported: the supervisor sets it for its children.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

RUN_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
BATCH_SIZE_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# What ended a job's attempt on this worker (broker_worker_jobs_total's outcome label).
OUTCOMES = ("succeeded", "retried", "failed", "snoozed", "cancelled", "released", "lost")
# The name of each fenced write, as job_events' stale_write_rejected detail spells it.
WRITES: dict[type, str] = {
    Completed: "complete",
    Failed: "fail",
    CancelAcked: "cancel",
    Released: "release",
    Snoozed: "snooze",
}


def outcome_of(row: Finish, written: WriteOutcome) -> str:
    """The outcome label of a finish row the database has answered: its new state decides
    (a retryable failure on its last attempt fails; a snooze past its cap fails)."""
    if not written.applied:
        return "lost"
    if written.state in ("succeeded", "failed", "cancelled"):
        return written.state
    return _REQUEUED[type(row)]


# A row's outcome when the job is runnable again after it (or its new state is unknown).
_REQUEUED: dict[type, str] = {
    Completed: "succeeded",
    Failed: "retried",
    CancelAcked: "cancelled",
    Released: "released",
    Snoozed: "snoozed",
}


class Metrics:
    """What the worker reports; this base records nothing (no --metrics-port)."""

    def claimed(self, jobs: int) -> None:
        """A claim statement returned `jobs` leases (0 included)."""

    def ran(self, held: Lease, seconds: float, outcome: Finish | None) -> None:
        """A handler ran for `seconds` (returned, raised or was stopped); `outcome` is the
        write that ends it, None when the job is no longer ours (its lease was lost)."""

    def written(self, row: Finish, outcome: WriteOutcome) -> None:
        """The finish statement applied `row`, or refused it for a stale epoch."""

    def lease_lost(self) -> None:
        """A lease this worker held was reported lost; its handler is stopped."""

    def flushed(self, rows: int) -> None:
        """The writer sent one finish statement of `rows` rows."""

    def write_retried(self) -> None:
        """The writer keeps a batch to send again: the database was unavailable."""

    def write_dropped(self) -> None:
        """The writer dropped an outcome or log line that failed on its own."""


class PrometheusMetrics(Metrics):
    """Records into prometheus_client metrics on `registry` (a new one if None); the
    series of `kinds` start at zero."""

    def __init__(self, registry: CollectorRegistry | None, kinds: tuple[str, ...] = ()) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.jobs = Counter(
            "broker_worker_jobs_total",
            "Job attempts this worker ended, by kind and outcome (succeeded, retried, failed, "
            "snoozed, cancelled, released, lost).",
            ["kind", "outcome"],
            registry=r,
        )
        self.run_seconds = Histogram(
            "broker_worker_job_run_seconds",
            "Seconds a handler ran, by kind.",
            ["kind"],
            buckets=RUN_SECONDS_BUCKETS,
            registry=r,
        )
        self.claim_batch = Histogram(
            "broker_worker_claim_batch_size",
            "Jobs per claim statement (0 when the queues were empty).",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.leases_lost = Counter(
            "broker_worker_leases_lost_total",
            "Leases this worker held that a heartbeat (or a newer claim) found lost.",
            registry=r,
        )
        self.stale_writes = Counter(
            "broker_worker_stale_writes_total",
            "Outcome writes the database refused for a stale epoch, by write.",
            ["write"],
            registry=r,
        )
        self.finish_batch = Histogram(
            "broker_worker_finish_batch_size",
            "Outcomes per finish statement the writer sent.",
            buckets=BATCH_SIZE_BUCKETS[1:],
            registry=r,
        )
        self.write_retries = Counter(
            "broker_worker_write_retries_total",
            "Times the writer kept a batch to retry because the database was unavailable.",
            registry=r,
        )
        self.writes_dropped = Counter(
            "broker_worker_writes_dropped_total",
            "Outcomes and log lines the writer dropped because they failed on their own.",
            registry=r,
        )
        # labels() takes a lock and builds a key on every call: children are looked up
        # once and kept (1.6 against 3.0 us of hooks per job, decision 017).
        self._jobs: dict[tuple[str, str], Counter] = {}
        self._runs: dict[str, Histogram] = {}
        for kind in kinds:
            for outcome in OUTCOMES:
                self._count(kind, outcome, 0)
            self._run(kind)
        for write in WRITES.values():
            self.stale_writes.labels(write)

    def _count(self, kind: str, outcome: str, amount: int = 1) -> None:
        child = self._jobs.get((kind, outcome))
        if child is None:
            child = self._jobs[kind, outcome] = self.jobs.labels(kind, outcome)
        if amount:
            child.inc(amount)

    def _run(self, kind: str) -> Histogram:
        child = self._runs.get(kind)
        if child is None:
            child = self._runs[kind] = self.run_seconds.labels(kind)
        return child

    def claimed(self, jobs: int) -> None:
        self.claim_batch.observe(jobs)

    def ran(self, held: Lease, seconds: float, outcome: Finish | None) -> None:
        self._run(held.kind).observe(seconds)
        if outcome is None:
            self._count(held.kind, "lost")

    def written(self, row: Finish, outcome: WriteOutcome) -> None:
        # A worker's rows always hold whole leases (the HTTP protocol's hold only fences).
        kind = row.lease.kind if isinstance(row.lease, Lease) else ""
        self._count(kind, outcome_of(row, outcome))
        if not outcome.applied:
            self.stale_writes.labels(WRITES[type(row)]).inc()

    def lease_lost(self) -> None:
        self.leases_lost.inc()

    def flushed(self, rows: int) -> None:
        self.finish_batch.observe(rows)

    def write_retried(self) -> None:
        self.write_retries.inc()

    def write_dropped(self) -> None:
        self.writes_dropped.inc()


def process_registry() -> CollectorRegistry:
    """A registry for a worker that serves its own metrics: its process metrics too."""
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def multiprocess_registry(path: Path) -> CollectorRegistry:
    """A registry that sums, on every scrape, what the processes recorded under `path`."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return registry


class MultiprocessDir:
    """The directory the supervisor's children record into: `PROMETHEUS_MULTIPROC_DIR`
    when set (its *.db files removed at start, the directory kept), else a new temporary
    directory removed at `close()`."""

    def __init__(self) -> None:
        given = os.environ.get(MULTIPROC_ENV)
        self._owned = not given
        if given:
            self.path = Path(given)
            self.path.mkdir(parents=True, exist_ok=True)
            for stale in self.path.glob("*.db"):
                stale.unlink()
        else:
            self.path = Path(tempfile.mkdtemp(prefix="broker-metrics-"))

    def process_died(self, pid: int) -> None:
        """Forget a dead child's live gauges (its counters and histograms stay summed)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)


class MetricsServer:
    """prometheus_client's HTTP exposition of `registry` on host:port, in a thread of its
    own, until `stop()`. Raises ConfigError when the address cannot be bound."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        try:
            server, thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port = int(server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
