"""The HTTP worker protocol: claim leases, then heartbeat/complete/fail under the lease epoch.

Workers in any language use it. Each write carries the epoch returned by the claim and is
fenced in the database exactly like the Python worker's; a lost lease answers 409.
"""

from __future__ import annotations

import time
from typing import Any

from litestar import Controller, Request, post
from litestar.params import JSONBody

from api.auth import require
from api.deps import BrokerClient, runtime_of
from api.problems import responses
from api.schemas import (
    CompleteIn,
    FailIn,
    HeartbeatIn,
    HeartbeatOut,
    LeaseList,
    LeaseOut,
    LeaseRequest,
    SnoozeIn,
    WriteOut,
)
from api.strict import JobId, StrictJSON, job_id_is_a_number
from broker import AsyncBroker, Failure, LeaseLost, lease
from broker.types import Fence


class LeasesController(Controller):
    """Worker protocol endpoints; they need the `work` scope."""

    path = "/v1"
    tags = ["worker protocol"]
    security = [{"bearer": []}]
    before_request = staticmethod(job_id_is_a_number)
    guards = [require("work")]

    @post(
        "/leases",
        status_code=200,
        dto=StrictJSON[LeaseRequest],
        return_dto=None,
        responses=responses(400, 401, 403, 413, 415, 503),
        summary="Claim jobs",
        description="Leases up to `limit` runnable jobs (priority, then run_at, then id).",
    )
    async def claim(
        self, request: Request[Any, Any, Any], data: JSONBody[LeaseRequest], client: BrokerClient
    ) -> LeaseList:
        runtime = runtime_of(request)
        ttl = data.lease_ttl or runtime.settings.lease_ttl
        started = time.perf_counter()
        leases = await client.claim(data.queues, data.limit, data.worker_id, ttl)
        runtime.metrics.claim_latency.observe(time.perf_counter() - started)
        return LeaseList(
            [
                LeaseOut(
                    job_id=held.job_id,
                    lease_epoch=held.epoch,
                    queue=held.queue,
                    kind=held.kind,
                    args=held.args,
                    priority=held.priority,
                    attempt=held.attempt,
                    max_attempts=held.max_attempts,
                    timeout=held.timeout,
                    worker_id=held.worker_id,
                    lease_ttl=ttl,
                    meta=held.meta,
                )
                for held in leases
            ]
        )

    @post(
        "/jobs/{job_id:str}/heartbeat",
        status_code=200,
        dto=StrictJSON[HeartbeatIn],
        return_dto=None,
        responses=responses(400, 401, 403, 404, 409, 413, 415, 503),
        summary="Extend a lease",
    )
    async def heartbeat(
        self,
        request: Request[Any, Any, Any],
        job_id: JobId,
        data: JSONBody[HeartbeatIn],
        client: BrokerClient,
    ) -> HeartbeatOut:
        runtime = runtime_of(request)
        ttl = data.lease_ttl or runtime.settings.lease_ttl
        outcome = await client.heartbeat([Fence(job_id, data.lease_epoch, data.worker_id)], ttl)
        if outcome.lost:
            runtime.metrics.lease_lost.labels("heartbeat").inc()
            raise LeaseLost(job_id, data.lease_epoch, "heartbeat")
        return HeartbeatOut(job_id, data.lease_epoch, bool(outcome.cancel_requested))

    @post(
        "/jobs/{job_id:str}/complete",
        status_code=200,
        dto=StrictJSON[CompleteIn],
        return_dto=None,
        responses=responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
        summary="Report success",
    )
    async def complete(
        self,
        request: Request[Any, Any, Any],
        job_id: JobId,
        data: JSONBody[CompleteIn],
        client: BrokerClient,
    ) -> WriteOut:
        held = Fence(job_id, data.lease_epoch, data.worker_id)
        return await _finish(request, client, lease.completed(held, data.result), "complete")

    @post(
        "/jobs/{job_id:str}/fail",
        status_code=200,
        dto=StrictJSON[FailIn],
        return_dto=None,
        responses=responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
        summary="Report a failed attempt",
        description=(
            "The job is queued again after backoff (or `delay` seconds) while attempts remain "
            "and the error is retryable; otherwise it ends `failed` (or `cancelled` when a "
            "cancel was requested). The answer gives the new state."
        ),
    )
    async def fail(
        self,
        request: Request[Any, Any, Any],
        job_id: JobId,
        data: JSONBody[FailIn],
        client: BrokerClient,
    ) -> WriteOut:
        held = Fence(job_id, data.lease_epoch, data.worker_id)
        failure = Failure(data.error, data.retryable, data.delay)
        return await _finish(request, client, lease.failed(held, failure), "fail")

    @post(
        "/jobs/{job_id:str}/snooze",
        status_code=200,
        dto=StrictJSON[SnoozeIn],
        return_dto=None,
        responses=responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
        summary="Run the job again later without counting the attempt",
        description=(
            "The job is queued again `delay` seconds from now (database time), its attempt "
            "not counted; once it has snoozed `max_snoozes` times (default 100) the snooze "
            "fails it instead, and a requested cancel wins. The answer gives the new state."
        ),
    )
    async def snooze(
        self,
        request: Request[Any, Any, Any],
        job_id: JobId,
        data: JSONBody[SnoozeIn],
        client: BrokerClient,
    ) -> WriteOut:
        held = Fence(job_id, data.lease_epoch, data.worker_id)
        row = lease.snoozed(held, data.delay, data.max_snoozes)
        return await _finish(request, client, row, "snooze")


async def _finish(
    request: Request[Any, Any, Any], client: AsyncBroker, row: lease.Finish, write: str
) -> WriteOut:
    """Apply one finish row (the worker protocol's complete, fail and snooze); a lost lease
    is counted and answered 409. The job's new state is the answer."""
    runtime = runtime_of(request)
    held = row.lease
    [outcome] = await client.finish_many([row])
    if not outcome.applied:
        runtime.metrics.lease_lost.labels(write).inc()
        raise LeaseLost(held.job_id, held.epoch, write)
    assert outcome.state is not None, "an applied write returns its row's new state"
    runtime.metrics.completed.labels(outcome.state).inc()
    return WriteOut(held.job_id, held.epoch, outcome.state)
