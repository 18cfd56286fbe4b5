"""Operator views: queues, workers (with host aggregation and clock skew), stats, metrics."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, patch, post
from litestar.params import JSONBody, PathParameter
from prometheus_client import CONTENT_TYPE_LATEST

from api.auth import require
from api.deps import BrokerClient, runtime_of
from api.problems import responses
from api.schemas import (
    HostOut,
    PauseIn,
    QueueList,
    QueueOut,
    QueuePatch,
    QueuePauseOut,
    QueueSettingsOut,
    StatsOut,
    WorkerList,
    WorkerOut,
)
from api.strict import StrictJSON
from broker import inspection as views
from broker import queues as settings

QueueName = Annotated[str, PathParameter(description="Queue name.")]


class QueuesController(Controller):
    path = "/v1/queues"
    tags = ["operations"]
    security = [{"bearer": []}]
    guards = [require("admin")]

    @get("/", responses=responses(401, 403, 503), summary="Jobs per queue and state")
    async def index(self, client: BrokerClient) -> QueueList:
        rows = await client.run(views.queues())
        return QueueList(
            [
                QueueOut(
                    r.queue,
                    r.waiting,
                    r.queued,
                    r.available,
                    r.scheduled,
                    r.running,
                    r.succeeded,
                    r.failed,
                    r.cancelled,
                    r.oldest_available_age_seconds,
                    r.paused,
                    r.concurrency_limit,
                    r.rate_limit,
                    r.rate_period_seconds,
                    r.served,
                )
                for r in rows
            ]
        )

    @patch(
        "/{name:str}",
        dto=StrictJSON[QueuePatch],
        return_dto=None,
        responses=responses(400, 401, 403, 415, 422, 503),
        summary="Set a queue's concurrency and rate limits",
        description=(
            "At most concurrency_limit of the queue's jobs run at once, across all workers; "
            "at most rate_limit start per rate_period_seconds; both enforced by the claim in "
            "database time. A field left out keeps its value, null means unlimited; a limit "
            "below 1, a period that is not positive, or a rate_limit without a period is 422."
        ),
    )
    async def configure(
        self, name: QueueName, data: JSONBody[QueuePatch], client: BrokerClient
    ) -> QueueSettingsOut:
        given = {
            field: value
            for field, value in (
                ("concurrency_limit", data.concurrency_limit),
                ("rate_limit", data.rate_limit),
                ("rate_period", data.rate_period_seconds),
            )
            if value is not msgspec.UNSET
        }
        s = await client.run(settings.configure(name, **given))
        return QueueSettingsOut(
            s.queue, s.concurrency_limit, s.rate_limit, s.rate_period_seconds, s.paused
        )

    @post(
        "/{name:str}/pause",
        status_code=200,
        dto=StrictJSON[PauseIn],
        return_dto=None,
        responses=responses(400, 401, 403, 415, 422, 503),
        summary="Pause a queue: no more claims from it; running jobs finish",
    )
    async def pause(
        self, name: QueueName, client: BrokerClient, data: JSONBody[PauseIn | None] = None
    ) -> QueuePauseOut:
        reason = data.reason if data is not None else None
        changed = await client.run(settings.pause(name, reason))
        return QueuePauseOut(name, True, changed)

    @post(
        "/{name:str}/resume",
        status_code=200,
        responses=responses(400, 401, 403, 422, 503),
        summary="Resume a paused queue and wake its workers",
    )
    async def resume(self, name: QueueName, client: BrokerClient) -> QueuePauseOut:
        changed = await client.run(settings.resume(name))
        return QueuePauseOut(name, False, changed)


class WorkersController(Controller):
    path = "/v1/workers"
    tags = ["operations"]
    security = [{"bearer": []}]
    guards = [require("admin")]

    @get(
        "/",
        responses=responses(401, 403, 503),
        summary="Registered workers, and the same grouped by host",
        description=(
            "Status is alive, stopped or gone, judged on the database clock (the "
            "worker_status view). clock_skew_exceeded flags workers whose clock differs from "
            "the database's by more than BROKER_CLOCK_SKEW_TOLERANCE."
        ),
    )
    async def index(self, request: Request[Any, Any, Any], client: BrokerClient) -> WorkerList:
        runtime = runtime_of(request)
        tolerance = runtime.settings.clock_skew_tolerance
        rows = await client.run(views.workers())
        workers = [
            WorkerOut(
                worker_id=w.worker_id,
                host_id=w.host_id,
                seq=w.seq,
                hostname=w.hostname,
                pid=w.pid,
                queues=w.queues,
                concurrency=w.concurrency,
                version=w.version,
                started_at=w.started_at,
                last_seen=w.last_seen,
                stopped_at=w.stopped_at,
                last_seen_age_seconds=w.last_seen_age_seconds,
                status=w.status,  # type: ignore[arg-type]
                alive=w.status == "alive",
                running_jobs=w.running_jobs,
                clock_skew_seconds=w.clock_skew_seconds,
                clock_skew_exceeded=w.clock_skew_seconds is not None
                and abs(w.clock_skew_seconds) > tolerance,
            )
            for w in rows
        ]
        return WorkerList(workers, _hosts(workers, tolerance), tolerance)


def _hosts(workers: list[WorkerOut], tolerance: float) -> list[HostOut]:
    by_host: dict[str, list[WorkerOut]] = {}
    for w in workers:
        by_host.setdefault(w.host_id, []).append(w)
    hosts = []
    for host_id, members in by_host.items():
        alive = [w for w in members if w.alive]
        skews = [abs(w.clock_skew_seconds) for w in alive if w.clock_skew_seconds is not None]
        worst = max(skews) if skews else None
        hosts.append(
            HostOut(
                host_id=host_id,
                hostname=members[-1].hostname,
                workers=len(members),
                alive=len(alive),
                concurrency=sum(w.concurrency for w in alive),
                running_jobs=sum(w.running_jobs for w in members),
                max_abs_clock_skew_seconds=worst,
                clock_skew_exceeded=worst is not None and worst > tolerance,
            )
        )
    return hosts


class StatsController(Controller):
    path = "/v1/stats"
    tags = ["operations"]
    security = [{"bearer": []}]
    guards = [require("admin")]

    @get("/", responses=responses(401, 403, 503), summary="Broker-wide totals")
    async def index(self, client: BrokerClient) -> StatsOut:
        o = await client.run(views.overview())
        queue_rows = await client.run(views.queues())
        return StatsOut(
            waiting=o.waiting,
            queued=o.queued,
            available=o.available,
            running=o.running,
            succeeded=o.succeeded,
            failed=o.failed,
            cancelled=o.cancelled,
            total=o.waiting + o.queued + o.running + o.succeeded + o.failed + o.cancelled,
            oldest_available_age_seconds=o.oldest_available_age_seconds,
            workers_alive=o.workers_alive,
            queues=len(queue_rows),
            db_time=o.db_time,
        )


class MetricsController(Controller):
    path = "/metrics"
    tags = ["operations"]
    security = [{"bearer": []}]
    guards = [require("admin")]

    @get(
        "/",
        media_type=CONTENT_TYPE_LATEST,
        responses=responses(401, 403),
        summary="Prometheus metrics (text exposition format)",
        description=(
            "This process's counters and request metrics, and gauges read from the database "
            "(cached for a few seconds). While the database cannot be read it still answers "
            "200, with broker_database_up 0 and without the database gauges."
        ),
    )
    async def metrics(
        self, request: Request[Any, Any, Any], client: BrokerClient
    ) -> Response[bytes]:
        metrics = runtime_of(request).metrics
        await metrics.database.refresh(client)
        # As a header: given only as media_type, Litestar appends a second charset to it.
        return Response(metrics.render(), headers={"content-type": CONTENT_TYPE_LATEST})
