"""The jobs resource: enqueue (single, batch, idempotent), read, list, events, logs, control."""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.params import FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from api.auth import principal, require
from api.batcher import enqueue_many
from api.deps import BrokerClient, runtime_of
from api.problems import responses
from api.schemas import (
    MAX_BIGINT,
    BatchIn,
    BatchOut,
    EnqueuedOut,
    EventList,
    EventOut,
    JobCreatedOut,
    JobIn,
    JobOut,
    JobPage,
    LogLineOut,
    LogPage,
    LogsIn,
    LogsStored,
    StateOut,
)
from api.strict import JobId, StrictJSON, job_id_is_a_number
from broker import JobNotFound, LeaseLost, lease
from broker.follow import follow_logs
from broker.inspection import MAX_PAGE_SIZE, JobFilter, list_jobs
from broker.spec import (
    KEY_MAX_LENGTH,
    KEY_PATTERN,
    KIND_MAX_LENGTH,
    NAME_PATTERN,
    QUEUE_MAX_LENGTH,
    TAG_MAX_LENGTH,
    TAG_PATTERN,
)
from broker.types import Fence, JobState

MAX_ID = MAX_BIGINT
# GET /v1/jobs/{id}?wait= holds a request open at most this long (a proxy's idle timeout
# is often 60 s); Python callers of Broker.wait may wait longer.
MAX_API_WAIT_SECONDS = 60.0
REPLAY_HEADER = "Idempotent-Replayed"


def encode_cursor(last_id: int) -> str:
    """An opaque page cursor for ids below `last_id`."""
    return base64.urlsafe_b64encode(f"j1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id a cursor points below. Raises ValidationException (400) for a bad cursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, _, value = raw.partition(":")
        last_id = int(value)
        if tag != "j1" or not 1 <= last_id <= MAX_ID:
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationException("cursor is not one this API returned") from None
    return last_id


@dataclass
class _StreamingOperation(Operation):
    """Documents that a 200 may also be a text/event-stream (`follow=true`)."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse) and ok.content is not None:
            ok.content["text/event-stream"] = OpenAPIMediaType(
                schema=Schema(type=OpenAPIType.STRING)
            )


class JobsController(Controller):
    """Jobs: the `submit` scope, except appending logs, which is a worker's write (`work`).
    The admin scope may do everything."""

    path = "/v1/jobs"
    tags = ["jobs"]
    security = [{"bearer": []}]
    before_request = staticmethod(job_id_is_a_number)

    @post(
        "/",
        guards=[require("submit")],
        status_code=201,
        dto=StrictJSON[JobIn],
        return_dto=None,
        responses=responses(400, 401, 403, 413, 415, 422, 503),
        summary="Enqueue a job",
        description=(
            "Creates a job. With an idempotency key (Idempotency-Key header or body field), "
            "repeating the same request returns the original job with status 201 and "
            f"`{REPLAY_HEADER}: true`; the same key with a different request gets 422. "
            "Keys are scoped to the API token. With `depends_on` the job is `waiting` until "
            "those jobs have all succeeded (cancelled if one fails or is cancelled); an id "
            "that names no job gets 422."
        ),
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[JobIn],
        client: BrokerClient,
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                name="Idempotency-Key",
                min_length=1,
                max_length=KEY_MAX_LENGTH,
                pattern=KEY_PATTERN,
                required=False,
            ),
        ] = None,
    ) -> Response[JobCreatedOut]:
        if idempotency_key and data.idempotency_key and idempotency_key != data.idempotency_key:
            raise HTTPException(
                status_code=422,
                detail="the Idempotency-Key header and the body's idempotency_key differ",
            )
        if idempotency_key and not data.idempotency_key:
            data = msgspec.structs.replace(data, idempotency_key=idempotency_key)
        spec = data.spec()
        # Refused here, a request the contract rejects never joins a group commit.
        spec.validate()
        caller = principal(request)
        prefix = caller.key_prefix
        runtime = runtime_of(request)
        stored = await runtime.batcher.enqueue(
            client, spec, caller.token_id, unnamed=data.queue is None
        )
        job = stored.job
        headers = {"Location": f"/v1/jobs/{job.id}"}
        if stored.created:
            runtime.metrics.enqueued.labels(job.queue).inc()
        else:
            headers[REPLAY_HEADER] = "true"
        created = msgspec.structs.replace(
            JobCreatedOut.of(job, prefix), warnings=list(stored.warnings)
        )
        return Response(created, status_code=201, headers=headers)

    @post(
        "/batch",
        guards=[require("submit")],
        status_code=201,
        dto=StrictJSON[BatchIn],
        return_dto=None,
        responses=responses(400, 401, 403, 413, 415, 422, 503),
        summary="Enqueue many jobs at once",
        description=(
            "One transaction: all jobs are created or none is. Results keep input order. "
            "`depends_on` names jobs that exist already: a job of the same batch has no id yet."
        ),
    )
    async def create_batch(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[BatchIn],
        client: BrokerClient,
    ) -> BatchOut:
        if request.headers.get("idempotency-key"):
            raise HTTPException(
                status_code=422,
                detail="a batch takes an idempotency_key per job, not an Idempotency-Key header",
            )
        specs = [job.spec() for job in data.jobs]
        unnamed = [job.queue is None for job in data.jobs]
        enqueued = await enqueue_many(client, specs, unnamed, principal(request).token_id)
        runtime = runtime_of(request)
        routed = [e.id for e, u in zip(enqueued, unnamed, strict=True) if u and e.created]
        # Only a routed job's queue is unknown here: read those back for the metric.
        queues = {j.id: j.queue for j in await client.run(lease.get_jobs(routed))} if routed else {}
        for spec, result in zip(specs, enqueued, strict=True):
            if result.created:
                runtime.metrics.enqueued.labels(queues.get(result.id, spec.queue)).inc()
        return BatchOut([EnqueuedOut(e.id, e.created, list(e.warnings)) for e in enqueued])

    @get(
        "/{job_id:str}",
        guards=[require("submit")],
        responses=responses(400, 401, 403, 404, 503),
        summary="Get a job",
        description="With `wait=SECONDS` (at most "
        f"{MAX_API_WAIT_SECONDS:g}) the answer comes when the job is terminal (succeeded, "
        "failed, cancelled) or when the wait ends, whichever is first; the job is returned "
        "as it is then. Woken by the database's NOTIFY, not by polling.",
    )
    async def read(
        self,
        request: Request[Any, Any, Any],
        job_id: JobId,
        client: BrokerClient,
        wait: Annotated[float | None, QueryParameter(ge=0, le=MAX_API_WAIT_SECONDS)] = None,
    ) -> JobOut:
        job = await (client.wait(job_id, wait) if wait else client.get_job(job_id))
        return JobOut.of(job, principal(request).key_prefix)

    @get(
        "/",
        guards=[require("submit")],
        responses=responses(400, 401, 403, 503),
        summary="List jobs, newest first",
        description=f"Keyset pagination: pass `next_cursor` back as `cursor`. At most "
        f"{MAX_PAGE_SIZE} jobs per page.",
    )
    async def index(
        self,
        request: Request[Any, Any, Any],
        client: BrokerClient,
        queue: Annotated[
            str | None,
            QueryParameter(min_length=1, max_length=QUEUE_MAX_LENGTH, pattern=NAME_PATTERN),
        ] = None,
        job_state: Annotated[JobState | None, QueryParameter(name="state")] = None,
        kind: Annotated[
            str | None,
            QueryParameter(min_length=1, max_length=KIND_MAX_LENGTH, pattern=NAME_PATTERN),
        ] = None,
        tag: Annotated[
            str | None,
            QueryParameter(min_length=1, max_length=TAG_MAX_LENGTH, pattern=TAG_PATTERN),
        ] = None,
        created_after: FromQuery[datetime | None] = None,
        created_before: FromQuery[datetime | None] = None,
        cursor: Annotated[str | None, QueryParameter(min_length=1, max_length=100)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 100,
    ) -> JobPage:
        for name, value in (("created_after", created_after), ("created_before", created_before)):
            if value is not None and value.tzinfo is None:
                raise ValidationException(f"{name} must include a timezone offset")
        filters = JobFilter(queue, job_state, kind, tag, created_after, created_before)
        before = decode_cursor(cursor) if cursor else None
        jobs = await client.run(list_jobs(filters, limit, before))
        prefix = principal(request).key_prefix
        next_cursor = encode_cursor(jobs[-1].id) if len(jobs) == limit else None
        return JobPage([JobOut.of(j, prefix) for j in jobs], next_cursor)

    @get(
        "/{job_id:str}/events",
        guards=[require("submit")],
        responses=responses(400, 401, 403, 404, 503),
        summary="A job's history",
    )
    async def events(
        self,
        job_id: JobId,
        client: BrokerClient,
        after: Annotated[int, QueryParameter(ge=0, le=MAX_ID)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 1000,
    ) -> EventList:
        await client.get_job(job_id)
        found = await client.events(job_id, after, limit)
        return EventList([EventOut.of(e) for e in found])

    @get(
        "/{job_id:str}/logs",
        guards=[require("submit")],
        responses=responses(400, 401, 403, 404, 503),
        operation_class=_StreamingOperation,
        operation_id="readJobLogs",
        summary="A job's log lines",
        description=(
            "With `follow=true` the answer is a text/event-stream: one `log` event per line "
            "(data: the line as JSON, id: the line's id), in commit order, as lines are "
            "written (woken by the database's NOTIFY), then one `end` event when the job "
            "has finished and every line was sent. A client that reconnects with "
            "`Last-Event-ID` (or `after`) gets only the lines after that id."
        ),
    )
    async def logs(
        self,
        request: Request[Any, Any, Any],
        job_id: JobId,
        client: BrokerClient,
        after: Annotated[int, QueryParameter(ge=0, le=MAX_ID)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 1000,
        follow: FromQuery[bool] = False,
        last_event_id: Annotated[
            str | None,
            HeaderParameter(
                name="Last-Event-ID",
                pattern=r"^[0-9]{1,16}$",
                required=False,
                description="Resume a follow after this line id (sent by EventSource).",
            ),
        ] = None,
    ) -> Response[LogPage]:
        await client.get_job(job_id)
        if follow:
            resume = max(after, int(last_event_id)) if last_event_id else after
            # Typed as the JSON page for the schema; the stream is described above.
            return ServerSentEvent(log_events(client, job_id, resume))  # type: ignore[return-value]
        lines = await client.logs(job_id, after, limit)
        return Response(
            LogPage([LogLineOut.of(line) for line in lines], lines[-1].id if lines else after)
        )

    @post(
        "/{job_id:str}/cancel",
        guards=[require("submit")],
        status_code=200,
        responses=responses(400, 401, 403, 404, 409, 503),
        summary="Cancel a job",
        description=(
            "A queued job is cancelled at once (200). For a running job cancellation is "
            "requested and its worker told (202); it ends `cancelled` when the worker stops "
            "it or its lease expires. A finished job answers 409."
        ),
    )
    async def cancel(self, job_id: JobId, client: BrokerClient) -> Response[StateOut]:
        state = await client.cancel(job_id)
        status = 202 if state == "running" else 200
        return Response(StateOut(job_id, state), status_code=status)  # type: ignore[arg-type]

    @post(
        "/{job_id:str}/retry",
        guards=[require("submit")],
        status_code=200,
        responses=responses(400, 401, 403, 404, 409, 503),
        summary="Run a failed or cancelled job again",
    )
    async def retry(self, job_id: JobId, client: BrokerClient) -> StateOut:
        return StateOut(job_id, await client.retry(job_id))  # type: ignore[arg-type]

    @post(
        "/{job_id:str}/logs",
        status_code=200,
        guards=[require("work")],
        tags=["worker protocol"],
        dto=StrictJSON[LogsIn],
        return_dto=None,
        responses=responses(400, 401, 403, 404, 409, 413, 415, 422, 503),
        summary="Append log lines for a running job",
        description="Readers see them at GET /v1/jobs/{job_id}/logs (and its follow stream).",
    )
    async def append_logs(
        self,
        request: Request[Any, Any, Any],
        job_id: JobId,
        data: JSONBody[LogsIn],
        client: BrokerClient,
    ) -> LogsStored:
        held = Fence(job_id, data.lease_epoch, data.worker_id)
        stored = await client.append_logs([(held, line) for line in data.lines])
        if stored < len(data.lines):
            # Lines are kept only under the live lease; none were stored for a lost one.
            runtime_of(request).metrics.lease_lost.labels("logs").inc()
            raise LeaseLost(job_id, data.lease_epoch, "logs")
        return LogsStored(job_id, stored)


async def log_events(
    client: BrokerClient, job_id: int, after: int
) -> AsyncIterator[ServerSentEventMessage]:
    """A job's log lines after `after` as server-sent events (broker.follow.follow_logs: a
    `log` event per line, each once, in commit order, then `end` once the job is finished
    and its log drained); /v1 logs?follow=true and the UI's live log both send it."""
    async for line in follow_logs(client, job_id, after):
        yield ServerSentEventMessage(
            data=msgspec.json.encode(LogLineOut.of(line)).decode(),
            event="log",
            id=str(line.id),
        )
    with contextlib.suppress(JobNotFound):
        job = await client.get_job(job_id)
        yield ServerSentEventMessage(
            data=msgspec.json.encode({"id": job.id, "state": job.state}).decode(),
            event="end",
        )
