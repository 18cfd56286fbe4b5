"""`broker schedules ls | add | rm | pause | resume | trigger`: periodic jobs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from broker._durations import Duration
from broker.cli._errors import InputError, OneLineGroup
from broker.cli._options import echo_json, json_option, open_client
from broker.spec import DEFAULT_QUEUE

if TYPE_CHECKING:
    from broker.schedules import Schedule


@click.group(cls=OneLineGroup)
def schedules() -> None:
    """List, add, remove, pause, resume and trigger periodic jobs."""


def schedule_json(s: Schedule) -> dict[str, Any]:
    """A schedule with the REST API's keys."""
    return {
        "name": s.name,
        "kind": s.kind,
        "args": s.args,
        "queue": s.queue,
        "priority": s.priority,
        "cron": s.cron,
        "every": s.every,
        "timezone": s.timezone,
        "backfill": s.backfill,
        "paused": s.paused,
        "next_run_at": s.next_run_at,
        "last_run_at": s.last_run_at,
        "last_tick": s.last_tick,
        "last_job_id": s.last_job_id,
        "error": s.error,
        "declared": s.declared_by is not None,
        "declared_by": s.declared_by,
        "declared_at": s.declared_at,
        "orphaned": s.orphaned,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    }


def _timing(s: Schedule) -> str:
    if s.every is not None:
        return f"every {s.every:g}s"
    return f"cron {s.cron} {s.timezone}"


def _state(s: Schedule) -> str:
    return "broken" if s.error else "paused" if s.paused else "active"


@schedules.command("ls")
@json_option
def schedules_ls(as_json: bool) -> None:
    """Every schedule: its timing, next and last run (database time), whether it is active,
    paused or broken (`error` in --json), and `orphaned` when no live worker runs its
    kind (its ticks are skipped until one does). NEXT RUN `-`: the next scheduler pass
    computes it."""
    from broker import schedules as sch
    from broker._output import table, when

    with open_client() as client:
        found = client.run(sch.listing())
    if as_json:
        echo_json({"schedules": [schedule_json(s) for s in found]})
        return
    if not found:
        click.echo("no schedules")
        return
    rows = [
        [
            s.name,
            s.kind,
            _timing(s),
            when(s.next_run_at),
            when(s.last_run_at),
            _state(s),
            "orphaned" if s.orphaned else "-",
        ]
        for s in found
    ]
    headers = ["NAME", "KIND", "WHEN", "NEXT RUN", "LAST RUN", "STATE", "WORKERS"]
    click.echo(table(headers, rows))
    for s in found:
        if s.error:
            click.echo(f"{s.name}: {s.error}", err=True)


@schedules.command("add")
@click.argument("name")
@click.option("--kind", required=True, help="The task to enqueue.")
@click.option("--cron", help='Five cron fields, e.g. "*/5 * * * *".')
@click.option("--every", type=Duration(), help="Time between ticks (at least 1s; e.g. 90s, 5m).")
@click.option("--tz", "timezone", help="Time zone the cron fields are read in [default: UTC].")
@click.option("--args", "args_json", metavar="JSON", help="Arguments: a JSON object.")
@click.option("--queue", default=DEFAULT_QUEUE, show_default=True)
@click.option("--priority", type=int, default=0, show_default=True)
@click.option("--backfill", type=int, default=1, show_default=True, help="Missed ticks to run.")
@click.option("--paused", is_flag=True, help="Create it paused.")
@json_option
def schedules_add(
    name: str,
    kind: str,
    cron: str | None,
    every: float | None,
    timezone: str | None,
    args_json: str | None,
    queue: str,
    priority: int,
    backfill: int,
    paused: bool,
    as_json: bool,
) -> None:
    """Create or replace the schedule NAME (a replacement keeps paused, and its next run
    unless the timing changed)."""
    from broker import schedules as sch
    from broker._executor import drive
    from broker.cli._enqueue import _parse_args_json as parse_args_json

    spec = sch.ScheduleSpec(
        name=name,
        kind=kind,
        cron=cron,
        every=every,
        timezone=timezone,
        args=parse_args_json(args_json),
        queue=queue,
        priority=priority,
        backfill=backfill,
        paused=paused,
    )
    sch.check(spec)  # bad input fails before connecting
    with open_client() as client:
        [stored] = drive(sch.put_plan([spec]), client.run)
    if as_json:
        echo_json(schedule_json(stored))
    else:
        click.echo(f"schedule {stored.name} saved: {_timing(stored)}")


def _name(name: str) -> str:
    from broker import schedules as sch

    try:
        return sch.check_name(name)
    except ValueError as exc:
        raise InputError(str(exc)) from None


@schedules.command("rm")
@click.argument("name")
def schedules_rm(name: str) -> None:
    """Remove the schedule NAME (its jobs stay; one declared in code comes back when a
    worker declaring it starts)."""
    from broker import schedules as sch

    with open_client() as client:
        client.run(sch.delete(_name(name)))
    click.echo(f"schedule {name} removed")


@schedules.command("pause")
@click.argument("name")
def schedules_pause(name: str) -> None:
    """Stop enqueuing NAME's ticks."""
    from broker import schedules as sch

    with open_client() as client:
        client.run(sch.pause(_name(name)))
    click.echo(f"schedule {name} paused")


@schedules.command("resume")
@click.argument("name")
def schedules_resume(name: str) -> None:
    """Enqueue NAME's ticks again, from the next one after now."""
    from broker import schedules as sch

    with open_client() as client:
        client.run(sch.resume(_name(name)))
    click.echo(f"schedule {name} resumed")


@schedules.command("trigger")
@click.argument("name")
@json_option
def schedules_trigger(name: str, as_json: bool) -> None:
    """Enqueue NAME's job now (paused or not; its timing is unchanged)."""
    from broker import schedules as sch

    with open_client() as client:
        job_id = client.run(sch.trigger(_name(name)))
    if as_json:
        echo_json({"name": name, "job_id": job_id})
    else:
        click.echo(f"enqueued job {job_id}")


COMMANDS = (schedules,)
