"""The UI's pages (GET only, nothing changes): overview, jobs, a job, workers, schedules,
groups, the bulk confirmation, and the live log stream. Each reads through the same
broker statements as /v1."""

from __future__ import annotations

import re
from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.exceptions import ValidationException
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import ServerSentEvent, Template

from api.deps import BrokerClient, runtime_of
from api.jobs import MAX_ID, decode_cursor, encode_cursor, log_events
from api.strict import JobId
from api.ui._web import render, viewer
from broker import inspection as views
from broker import schedules as sch
from broker.inspection import MAX_PAGE_SIZE, JobFilter
from broker.lease import MAX_BULK_JOBS
from broker.spec import (
    GROUP_MAX_LENGTH,
    KIND_MAX_LENGTH,
    NAME_PATTERN,
    QUEUE_MAX_LENGTH,
    TAG_MAX_LENGTH,
    TAG_PATTERN,
)
from broker.types import JOB_STATES, TERMINAL_STATES, Job

PAGE_SIZE = 50
# A job page shows at most this many events and log lines (the live log then follows on).
PAGE_LINES = 1000
RECENT_WINDOW_SECONDS = 3600.0
# The states a bulk action can change, as cancel_job and retry_job accept them.
BULK_STATES = {
    "cancel": ("queued", "waiting", "running"),
    "retry": ("failed", "cancelled"),
}
_FILTERS = (
    ("queue", QUEUE_MAX_LENGTH, NAME_PATTERN),
    ("kind", KIND_MAX_LENGTH, NAME_PATTERN),
    ("tag", TAG_MAX_LENGTH, TAG_PATTERN),
    ("group", GROUP_MAX_LENGTH, NAME_PATTERN),
)


def job_filter(params: Any) -> JobFilter:
    """The jobs filter in a query or form (empty fields mean "any"), checked against the
    bounds /v1/jobs applies. Raises ValidationException (400)."""
    given: dict[str, str | None] = {}
    for name, longest, pattern in _FILTERS:
        value = params.get(name) or None
        if value is not None and not (len(value) <= longest and re.fullmatch(pattern, value)):
            raise ValidationException(f"{name} is not a valid {name} name")
        given[name] = value
    state = params.get("state") or None
    if state is not None and state not in JOB_STATES:
        raise ValidationException(f"state must be one of {', '.join(JOB_STATES)}")
    return JobFilter(
        queue=given["queue"], state=state, kind=given["kind"], tag=given["tag"],
        group=given["group"],
    )  # fmt: skip


def filter_params(f: JobFilter) -> dict[str, str]:
    """`f` as query parameters (the filled-in fields only)."""
    fields = {"queue": f.queue, "state": f.state, "kind": f.kind, "tag": f.tag, "group": f.group}
    return {k: v for k, v in fields.items() if v}


async def matching_ids(client: BrokerClient, action: str, f: JobFilter) -> list[int]:
    """Ids of the newest jobs (at most MAX_BULK_JOBS) that match `f` and that `action` can
    change: the listing statement of /v1/jobs, once per state the action accepts."""
    states = [s for s in BULK_STATES[action] if f.state in (None, s)]
    ids: list[int] = []
    for state in states:
        page = JobFilter(f.queue, state, f.kind, f.tag, group=f.group)
        before: int | None = None
        for _ in range(-(-MAX_BULK_JOBS // MAX_PAGE_SIZE)):
            found = await client.run(views.list_jobs(page, MAX_PAGE_SIZE, before))
            ids += [j.id for j in found]
            if len(found) < MAX_PAGE_SIZE:
                break
            before = found[-1].id
    return sorted(ids, reverse=True)[:MAX_BULK_JOBS]


class PagesController(Controller):
    path = "/"
    include_in_schema = False

    @get("/")
    async def overview(self, request: Request[Any, Any, Any], client: BrokerClient) -> Template:
        queues = await client.run(views.queues())
        recent = {r.queue: r for r in await client.run(views.recent_outcomes())}
        totals = await client.run(views.overview())
        workers = [w for w in await client.run(views.workers()) if w.status == "alive"]
        return render(
            request,
            "overview.html",
            {
                "queues": queues,
                "recent": recent,
                "totals": totals,
                "workers": workers,
                "window_minutes": int(RECENT_WINDOW_SECONDS // 60),
            },
        )

    @get("/jobs")
    async def jobs(self, request: Request[Any, Any, Any], client: BrokerClient) -> Template:
        params = request.query_params
        f = job_filter(params)
        cursor = params.get("cursor") or None
        before = decode_cursor(cursor) if cursor else None
        raw_limit = params.get("limit") or str(PAGE_SIZE)
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE_SIZE:
            raise ValidationException(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        limit = int(raw_limit)
        found = await client.run(views.list_jobs(f, limit, before))
        next_cursor = encode_cursor(found[-1].id) if len(found) == limit else None
        return render(
            request,
            "jobs.html",
            {
                "jobs": found,
                "filters": filter_params(f),
                "states": JOB_STATES,
                "next_cursor": next_cursor,
                "first_page": cursor is None,
                "limit": limit,
            },
        )

    @get("/jobs/bulk")
    async def bulk_confirm(self, request: Request[Any, Any, Any], client: BrokerClient) -> Template:
        action = request.query_params.get("action")
        if action not in BULK_STATES:
            raise ValidationException("action must be cancel or retry")
        viewer(request).require("admin")
        f = job_filter(request.query_params)
        ids = await matching_ids(client, action, f)
        return render(
            request,
            "bulk.html",
            {
                "action": action,
                "filters": filter_params(f),
                "ids": ids,
                "cap": MAX_BULK_JOBS,
                "states": [s for s in BULK_STATES[action] if f.state in (None, s)],
            },
        )

    @get("/jobs/{job_id:str}")
    async def job(
        self, request: Request[Any, Any, Any], job_id: JobId, client: BrokerClient
    ) -> Template:
        job: Job = await client.get_job(job_id)
        events = await client.events(job_id, 0, PAGE_LINES)
        lines = await client.logs(job_id, 0, PAGE_LINES)
        return render(
            request,
            "job.html",
            {
                "job": job,
                "events": events,
                "lines": lines,
                "last_line": lines[-1].id if lines else 0,
                "more_lines": len(lines) == PAGE_LINES,
                "terminal": job.state in TERMINAL_STATES,
                "can_cancel": job.state in BULK_STATES["cancel"],
                "can_retry": job.state in BULK_STATES["retry"],
            },
        )

    @get("/jobs/{job_id:str}/log")
    async def log_stream(
        self,
        job_id: JobId,
        client: BrokerClient,
        after: Annotated[int, QueryParameter(ge=0, le=MAX_ID)] = 0,
        last_event_id: Annotated[
            str | None,
            HeaderParameter(name="Last-Event-ID", pattern=r"^[0-9]{1,16}$", required=False),
        ] = None,
    ) -> ServerSentEvent:
        """The job's log lines as server-sent events (`log`, then `end`), as
        /v1/jobs/{id}/logs?follow=true sends them; a reconnecting EventSource resumes
        after the last line it got (Last-Event-ID)."""
        await client.get_job(job_id)
        resume = max(after, int(last_event_id)) if last_event_id else after
        return ServerSentEvent(log_events(client, job_id, resume))

    @get("/workers")
    async def workers(self, request: Request[Any, Any, Any], client: BrokerClient) -> Template:
        tolerance = runtime_of(request).settings.clock_skew_tolerance
        found = await client.run(views.workers())
        return render(request, "workers.html", {"workers": found, "tolerance": tolerance})

    @get("/schedules")
    async def schedules(self, request: Request[Any, Any, Any], client: BrokerClient) -> Template:
        found = await client.run(sch.listing())
        return render(request, "schedules.html", {"schedules": found})

    @get("/groups")
    async def groups(self, request: Request[Any, Any, Any], client: BrokerClient) -> Template:
        after = request.query_params.get("after") or None
        name = request.query_params.get("group") or None
        for label, value in (("after", after), ("group", name)):
            if value is not None and not (
                len(value) <= GROUP_MAX_LENGTH and re.fullmatch(NAME_PATTERN, value)
            ):
                raise ValidationException(f"{label} is not a valid group name")
        one: views.GroupCounts | None = None
        if name is not None:
            one = await client.run(views.group_counts(name))
        listed = await client.run(views.groups(after, 100))
        return render(
            request,
            "groups.html",
            {
                "groups": listed,
                "one": one,
                "states": JOB_STATES,
                "next_after": listed[-1].group if len(listed) == 100 else None,
            },
        )
