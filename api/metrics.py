"""Prometheus metrics of one API app: its counters, HTTP request metrics, and job gauges
read from the database at scrape time (prometheus_client, on a registry of the app's own).

Every app gets its own CollectorRegistry, never prometheus_client's global REGISTRY, so
several apps in one process (tests, or an embedding application) count separately and a
second create_app() does not fail on duplicated names. That is also why the request
metrics come from the small ASGI middleware here and not from Litestar's PrometheusPlugin,
whose metrics live on the global registry (decision 017).

Counters are per API process (Prometheus sums them across instances). The database gauges
are read in one statement (broker.inspection.metrics_snapshot) at most once per
`DB_CACHE_SECONDS`, however many scrapes arrive; while the database cannot be read,
`broker_database_up` is 0, the database gauges are left out and the rest is served.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterator

import psycopg
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from broker import AsyncBroker, BrokerError
from broker import inspection as views
from broker.inspection import MetricsSnapshot
from broker.types import JOB_STATES

log = logging.getLogger(__name__)

CLAIM_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
HTTP_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# A scrape storm costs the database one query per this many seconds.
DB_CACHE_SECONDS = 2.0
# Longer than a healthy read by far, and short of Prometheus' default 10 s scrape timeout,
# so a scrape while the database is down still answers (with broker_database_up 0).
DB_READ_TIMEOUT = 2.0
# Label values that exist before anything happened, so their series start at 0.
API_END_STATES = ("queued", "succeeded", "failed", "cancelled")
API_WRITES = ("heartbeat", "complete", "fail", "snooze", "logs")


class DatabaseGauges:
    """A prometheus_client collector of the gauges read from the database; `refresh()`
    re-reads them when the last read is older than `ttl` seconds, one read at a time."""

    def __init__(self, ttl: float = DB_CACHE_SECONDS, timeout: float = DB_READ_TIMEOUT) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self._snapshot: MetricsSnapshot | None = None
        self._read_at = -math.inf
        self._reading: asyncio.Future[None] | None = None

    async def refresh(self, client: AsyncBroker) -> None:
        """Bring the snapshot up to date unless it is fresh. Concurrent callers share one
        read; a read that fails leaves no snapshot (broker_database_up 0) for `ttl` too, so
        an outage is not hit by every scrape either. Never raises for database errors."""
        if time.monotonic() - self._read_at < self.ttl:
            return
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read(client))
        # Shielded: a scrape that gives up does not cancel the read others wait for.
        await asyncio.shield(self._reading)

    async def _read(self, client: AsyncBroker) -> None:
        snapshot: MetricsSnapshot | None
        try:
            snapshot = await asyncio.wait_for(client.run(views.metrics_snapshot()), self.timeout)
        except TimeoutError:
            log.warning("metrics: the database did not answer within %g s", self.timeout)
            snapshot = None
        except (BrokerError, psycopg.Error) as exc:
            log.warning("metrics: cannot read the database: %s", exc)
            snapshot = None
        self._snapshot, self._read_at = snapshot, time.monotonic()

    def describe(self) -> Iterator[Metric]:
        """The families collect() yields (the registry checks their names for clashes)."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        up, jobs, oldest, alive = self._families()
        snapshot = self._snapshot
        up.add_metric([], 0 if snapshot is None else 1)
        yield up
        if snapshot is None:
            return
        for q in snapshot.queues:
            for state in JOB_STATES:
                jobs.add_metric([q.queue, state], q.jobs[state])
            oldest.add_metric([q.queue], q.oldest_available_age_seconds)
        alive.add_metric([], snapshot.workers_alive)
        yield from (jobs, oldest, alive)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        up = GaugeMetricFamily(
            "broker_database_up",
            "1 if the last read of the database for these metrics succeeded, else 0.",
        )
        jobs = GaugeMetricFamily(
            "broker_jobs", "Jobs in the database by queue and state.", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "broker_queue_oldest_age_seconds",
            "Seconds the oldest runnable job of the queue has waited since its run_at, by "
            "database time (0 when none waits).",
            labels=["queue"],
        )
        alive = GaugeMetricFamily(
            "broker_workers_alive",
            "Workers alive: not stopped and seen within 30 s (the worker_status view).",
        )
        return up, jobs, oldest, alive


class Metrics:
    """Everything one API app exposes, on its own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.enqueued = Counter(
            "broker_api_jobs_enqueued_total",
            "Jobs created through the API.",
            ["queue"],
            registry=r,
        )
        self.completed = Counter(
            "broker_api_jobs_completed_total",
            "Attempts ended through the API worker protocol, by the job's new state.",
            ["state"],
            registry=r,
        )
        self.lease_lost = Counter(
            "broker_api_lease_lost_total",
            "Worker writes rejected because the lease was lost (stale epoch), by write.",
            ["write"],
            registry=r,
        )
        self.claim_latency = Histogram(
            "broker_api_claim_duration_seconds",
            "Time to claim jobs for POST /v1/leases, in seconds.",
            buckets=CLAIM_LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "broker_api_http_requests_total",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "broker_api_http_request_duration_seconds",
            "Seconds from a request's arrival to the start of its response, by method and "
            "route template (a streamed body is not timed).",
            ["method", "route"],
            buckets=HTTP_DURATION_BUCKETS,
            registry=r,
        )
        for state in API_END_STATES:
            self.completed.labels(state)
        for write in API_WRITES:
            self.lease_lost.labels(write)
        self.database = DatabaseGauges()
        r.register(self.database)

    def render(self) -> bytes:
        """The registry in the text exposition format (serve it as CONTENT_TYPE_LATEST)."""
        return generate_latest(self.registry)

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered HTTP request."""
        self.requests.labels(method, route, str(status)).inc()
        self.request_duration.labels(method, route).observe(seconds)


class RequestMetrics:
    """ASGI middleware counting every routed HTTP request by method, route template (never
    the raw path, so the label stays bounded) and status, timed to its response's start.
    Litestar runs middleware for routed requests only: a 404 for a path no route has, or a
    405, is answered before it and not counted.

    Install with `DefineMiddleware(RequestMetrics, metrics=...)`. A request whose handler
    raised past every exception handler, or that ended without a response, counts as 500.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        route = scope.get("path_template", "")
        counted = False

        async def counting_send(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start" and not counted:
                counted = True
                self.metrics.request(
                    method, route, message["status"], time.perf_counter() - started
                )
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if not counted:
                self.metrics.request(method, route, 500, time.perf_counter() - started)
