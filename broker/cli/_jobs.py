"""`broker jobs ls | show | logs | cancel | retry`: reading jobs (following a log as it is
written) and the two operator transitions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from broker.cli._errors import OneLineGroup
from broker.cli._options import echo_json, json_option, open_client
from broker.types import JOB_STATES

if TYPE_CHECKING:
    from collections.abc import Callable

    from broker.types import Job, LogLine

# broker.types is a leaf module (standard library only), so the states' one home costs
# the command nothing to import.
STATES = JOB_STATES


def _error(stored: str | None) -> str | None:
    """A stored error as its exception line (`ValueError: boom`): a table has room for the
    line that names the failure, not the traceback's first line (--json keeps it whole)."""
    from broker.errors import error_line

    return None if stored is None else error_line(stored)


def _detail(detail: dict[str, Any]) -> dict[str, Any]:
    """An event's detail with its `error` (a failed attempt's traceback) as its line."""
    error = detail.get("error")
    return {**detail, "error": _error(error)} if isinstance(error, str) else detail


@click.group(cls=OneLineGroup)
def jobs() -> None:
    """List, show, cancel and retry jobs."""


@jobs.command("ls")
@click.option("--queue", help="Only this queue.")
@click.option("--state", type=click.Choice(STATES), help="Only this state.")
@click.option("--kind", help="Only this kind.")
@click.option("--tag", help="Only jobs with this tag.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--before", type=click.IntRange(min=1), metavar="ID", help="Only ids below ID.")
@json_option
def jobs_ls(
    queue: str | None,
    state: str | None,
    kind: str | None,
    tag: str | None,
    limit: int,
    before: int | None,
    as_json: bool,
) -> None:
    """Jobs newest first. When more match, the next page is `--before` the last id shown."""
    from broker import inspection as inspect
    from broker._output import clip, job_json, table, when

    filters = inspect.JobFilter(queue=queue, state=state, kind=kind, tag=tag)
    found: list[Job] = []
    cursor = before
    with open_client() as client:
        # One row past the limit tells whether there is a next page.
        while len(found) <= limit:
            page_size = min(inspect.MAX_PAGE_SIZE, limit + 1 - len(found))
            page = client.run(inspect.list_jobs(filters, page_size, cursor))
            found.extend(page)
            if len(page) < page_size:
                break
            cursor = page[-1].id
    shown = found[:limit]
    next_before = shown[-1].id if len(found) > limit else None
    if as_json:
        echo_json({"jobs": [job_json(j) for j in shown], "next_before": next_before})
        return
    if not shown:
        click.echo("no jobs")
        return
    rows = [
        [
            str(j.id),
            j.queue,
            j.kind,
            j.state,
            f"{j.attempts}/{j.max_attempts}",
            str(j.priority),
            when(j.created_at),
            when(j.run_at),
            clip(_error(j.last_error), 40),
        ]
        for j in shown
    ]
    headers = ["ID", "QUEUE", "KIND", "STATE", "ATTEMPTS", "PRIORITY", "CREATED", "RUN AT"]
    click.echo(table([*headers, "LAST ERROR"], rows, right=["ID", "ATTEMPTS", "PRIORITY"]))
    if next_before is not None:
        click.echo(f"more: broker jobs ls --before {next_before}", err=True)


@jobs.command("show")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--logs", "with_logs", is_flag=True, help="Also the lines its handler logged.")
@json_option
def jobs_show(job_id: int, with_logs: bool, as_json: bool) -> None:
    """One job, its events and (with --logs) its log lines."""
    from broker._output import (
        clip,
        duration,
        event_json,
        fields,
        job_json,
        log_json,
        table,
        to_json,
        when,
    )
    from broker.types import JobEvent

    with open_client() as client:
        job = client.get_job(job_id)
        events: list[JobEvent] = []
        while page := client.events(job_id, events[-1].id if events else 0):
            events.extend(page)
        lines: list[LogLine] = []
        while with_logs and (more := client.logs(job_id, lines[-1].id if lines else 0)):
            lines.extend(more)
    if as_json:
        echo_json(
            {
                "job": job_json(job),
                "events": [event_json(e) for e in events],
                "logs": [log_json(line) for line in lines] if with_logs else None,
            }
        )
        return
    timeout = job.timeout.total_seconds() if job.timeout is not None else None
    click.echo(
        fields(
            [
                ("id", str(job.id)),
                ("kind", job.kind),
                ("queue", job.queue),
                ("state", job.state),
                ("args", to_json(job.args)),
                ("priority", str(job.priority)),
                ("attempts", f"{job.attempts} of {job.max_attempts}"),
                ("run at", when(job.run_at)),
                ("created", when(job.created_at)),
                ("started", when(job.started_at)),
                ("finished", when(job.finished_at)),
                ("timeout", duration(timeout)),
                ("lease epoch", str(job.lease_epoch)),
                ("lease expires", when(job.lease_expires_at)),
                ("worker", job.worker_id or "-"),
                ("cancel requested", when(job.cancel_requested_at)),
                ("idempotency key", job.idempotency_key or "-"),
                ("subject key", job.subject_key or "-"),
                ("tags", ", ".join(job.tags) or "-"),
                ("group", job.group or "-"),
                ("concurrency key", job.concurrency_key or "-"),
                ("deadline", when(job.deadline)),
                ("depends on", ", ".join(map(str, job.depends_on)) or "-"),
                ("result", "-" if job.result is None else clip(to_json(job.result), 200)),
                ("last error", clip(_error(job.last_error), 200)),
            ]
        )
    )
    click.echo("\nevents:")
    rows = [
        [
            when(e.at),
            e.event,
            "-" if e.epoch is None else str(e.epoch),
            e.worker_id or "-",
            "-" if e.detail is None else clip(to_json(_detail(e.detail)), 60),
        ]
        for e in events
    ]
    click.echo(table(["AT", "EVENT", "EPOCH", "WORKER", "DETAIL"], rows, right=["EPOCH"]))
    if with_logs:
        click.echo("\nlogs:")
        for line in lines:
            click.echo(f"{when(line.at)} [{line.epoch}] {line.line}")
        if not lines:
            click.echo("(none)")


@jobs.command("logs")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Print lines as they are written; exit once the job has finished and every line is shown.",
)
@click.option(
    "--after",
    type=click.IntRange(min=0),
    default=0,
    metavar="LINE_ID",
    help="Only lines after this line id (to resume).",
)
@json_option
def jobs_logs(job_id: int, follow: bool, after: int, as_json: bool) -> None:
    """The lines a job's handler logged, in the order they were written: time, [epoch],
    line. With --json, one JSON object per line (JSON Lines)."""
    from broker._output import log_json, to_json, when

    def show(line: LogLine) -> None:
        if as_json:
            click.echo(to_json(log_json(line)))
        else:
            click.echo(f"{when(line.at)} [{line.epoch}] {line.line}")

    if not follow:
        with open_client() as client:
            client.get_job(job_id)
            while page := client.logs(job_id, after):
                for line in page:
                    show(line)
                after = page[-1].id
        return
    import asyncio

    from broker.cli._errors import Interrupted

    try:
        asyncio.run(_follow_logs(job_id, after, show))
    except KeyboardInterrupt:
        raise Interrupted("interrupted") from None


async def _follow_logs(job_id: int, after: int, show: Callable[[LogLine], None]) -> None:
    from broker.cli._options import settings_and_url
    from broker.client import AsyncBroker
    from broker.follow import follow_logs

    settings, url = settings_and_url()
    async with await AsyncBroker.connect(
        url, schema=settings.schema, max_size=1, connect_timeout=5
    ) as client:
        async for line in follow_logs(client, job_id, after):
            show(line)


def _state_change(job_id: int, state: str, as_json: bool) -> None:
    if as_json:
        echo_json({"id": job_id, "state": state})
    elif state == "running":
        click.echo(f"job {job_id}: cancel requested; its worker stops it and marks it cancelled")
    else:
        click.echo(f"job {job_id}: {state}")


@jobs.command("cancel")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@json_option
def jobs_cancel(job_id: int, as_json: bool) -> None:
    """Cancel a queued job now, or ask the worker running it to stop (state stays running
    until the worker acknowledges). A finished job cannot be cancelled (exit code 1)."""
    with open_client() as client:
        state = client.cancel(job_id)
    _state_change(job_id, state, as_json)


@jobs.command("retry")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@json_option
def jobs_retry(job_id: int, as_json: bool) -> None:
    """Queue a failed or cancelled job again, runnable now (exit code 1 in other states)."""
    with open_client() as client:
        state = client.retry(job_id)
    _state_change(job_id, state, as_json)


COMMANDS = (jobs,)
