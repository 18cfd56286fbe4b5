"""The schedules resource: periodic jobs created at run time, listed, paused, resumed,
triggered and removed. Each handler is one call on broker.schedules; no SQL here."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.params import JSONBody, Parameter

from api.auth import require
from api.deps import BrokerClient
from api.problems import responses
from api.strict import StrictJSON
from broker import schedules as sch
from broker._executor import adrive
from broker.errors import ScheduleNotFound

ScheduleName = Annotated[str, Parameter(description="Schedule name.")]


class ScheduleIn(sch.ScheduleSpec, frozen=True):
    """A schedule to create or replace (broker.schedules.ScheduleSpec): exactly one of
    cron (five fields, read in `timezone`, default UTC) or every (seconds, at least 1)."""


class ScheduleOut(msgspec.Struct, kw_only=True):
    """A schedule as the API shows it; times are the database's. `next_run_at` null: the
    next scheduler pass computes it. `declared`: a worker declares it from its code
    (`declared_by`, `declared_at` say which and when). `orphaned`: no live worker runs
    its kind, so its ticks are skipped. `error`: why the scheduler cannot run it."""

    name: str
    kind: str
    args: dict[str, Any]
    queue: str
    priority: int
    cron: str | None
    every: float | None
    timezone: str
    backfill: int
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_tick: datetime | None
    last_job_id: int | None
    error: str | None
    declared: bool
    declared_by: str | None
    declared_at: datetime | None
    orphaned: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, s: sch.Schedule) -> ScheduleOut:
        return cls(
            name=s.name,
            kind=s.kind,
            args=s.args,
            queue=s.queue,
            priority=s.priority,
            cron=s.cron,
            every=s.every,
            timezone=s.timezone,
            backfill=s.backfill,
            paused=s.paused,
            next_run_at=s.next_run_at,
            last_run_at=s.last_run_at,
            last_tick=s.last_tick,
            last_job_id=s.last_job_id,
            error=s.error,
            declared=s.declared_by is not None,
            declared_by=s.declared_by,
            declared_at=s.declared_at,
            orphaned=s.orphaned,
            created_at=s.created_at,
            updated_at=s.updated_at,
        )


class ScheduleList(msgspec.Struct):
    schedules: list[ScheduleOut]


class TriggeredOut(msgspec.Struct):
    """The job a trigger enqueued."""

    name: str
    job_id: int


def schedule_name(name: str) -> str:
    """`name` when a schedule could have it; otherwise no such schedule exists (404)."""
    try:
        return sch.check_name(name)
    except ValueError:
        raise ScheduleNotFound(name) from None


class SchedulesController(Controller):
    path = "/v1/schedules"
    tags = ["schedules"]
    security = [{"bearer": []}]
    guards = [require("admin")]

    @get("/", responses=responses(401, 403, 503), summary="Every schedule, with last and next run")
    async def index(self, client: BrokerClient) -> ScheduleList:
        return ScheduleList([ScheduleOut.of(s) for s in await client.run(sch.listing())])

    @post(
        "/",
        status_code=201,
        dto=StrictJSON[ScheduleIn],
        return_dto=None,
        responses=responses(400, 401, 403, 413, 415, 422, 503),
        summary="Create or replace a schedule",
        description=(
            "Creates the schedule (201) or replaces the one with this name (200). A "
            "replacement keeps `paused` and keeps `next_run_at` unless cron, every or "
            "timezone changed (then the first tick after now). Ticks are enqueued by "
            "the workers' schedulers with the idempotency key `schedule:<name>:<tick>`."
        ),
    )
    async def create(
        self, data: JSONBody[ScheduleIn], client: BrokerClient
    ) -> Response[ScheduleOut]:
        [stored] = await adrive(sch.put_plan([data]), client.run)
        status = 201 if stored.created_at == stored.updated_at else 200
        headers = {"Location": f"/v1/schedules/{stored.name}"}
        return Response(ScheduleOut.of(stored), status_code=status, headers=headers)

    @get("/{name:str}", responses=responses(401, 403, 404, 503), summary="One schedule")
    async def show(self, name: ScheduleName, client: BrokerClient) -> ScheduleOut:
        found = await client.run(sch.get(schedule_name(name)))
        if found is None:
            raise ScheduleNotFound(name)
        return ScheduleOut.of(found)

    @delete(
        "/{name:str}",
        responses=responses(401, 403, 404, 503),
        summary="Remove a schedule (its jobs stay)",
        description="A schedule declared in code comes back when a worker declaring it starts.",
    )
    async def remove(self, name: ScheduleName, client: BrokerClient) -> None:
        await client.run(sch.delete(schedule_name(name)))

    @post(
        "/{name:str}/pause",
        status_code=200,
        responses=responses(401, 403, 404, 503),
        summary="Stop enqueuing the schedule's ticks",
    )
    async def pause(self, name: ScheduleName, client: BrokerClient) -> ScheduleOut:
        return ScheduleOut.of(await client.run(sch.pause(schedule_name(name))))

    @post(
        "/{name:str}/resume",
        status_code=200,
        responses=responses(401, 403, 404, 503),
        summary="Enqueue ticks again, from the next one after now",
    )
    async def resume(self, name: ScheduleName, client: BrokerClient) -> ScheduleOut:
        return ScheduleOut.of(await client.run(sch.resume(schedule_name(name))))

    @post(
        "/{name:str}/trigger",
        status_code=201,
        responses=responses(401, 403, 404, 422, 503),
        summary="Enqueue the schedule's job now",
        description=(
            "Paused or not, with its own idempotency key `schedule:<name>:manual:<uuid>`; "
            "the schedule's timing is unchanged."
        ),
    )
    async def trigger(self, name: ScheduleName, client: BrokerClient) -> Response[TriggeredOut]:
        job_id = await client.run(sch.trigger(schedule_name(name)))
        return Response(
            TriggeredOut(name, job_id), status_code=201, headers={"Location": f"/v1/jobs/{job_id}"}
        )
