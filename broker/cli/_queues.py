"""`broker queues ls | set | pause | resume`: queue limits and pauses (broker.queues)."""

from __future__ import annotations

from typing import Any

import click

from broker.cli._errors import OneLineGroup
from broker.cli._options import echo_json, json_option, open_client

UNLIMITED = ("none", "unlimited")


def _limit(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A whole number, or `none` (unlimited). Its bounds are broker.queues' to check."""
    if value is None or value.lower() in UNLIMITED:
        return None
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a whole number or 'none'") from None


def _period(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A duration (3600, 90s, 5m, 1h, 1d), or `none`."""
    from broker._durations import parse_duration
    from broker.errors import ConfigError

    if value is None or value.lower() in UNLIMITED:
        return None
    try:
        return parse_duration(value, "--rate-period")
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(cls=OneLineGroup)
def queues() -> None:
    """Queue limits (concurrency, rate) and pauses, enforced by every claim."""


@queues.command("ls")
@json_option
def queues_ls(as_json: bool) -> None:
    """Queues with jobs or settings: their jobs waiting and running, their limits (`-`:
    unlimited) and whether they are paused."""
    from broker import inspection as inspect
    from broker._output import duration, queue_json, table

    with open_client() as client:
        found = client.run(inspect.queues())
    if as_json:
        echo_json({"queues": [queue_json(q) for q in found]})
        return
    if not found:
        click.echo("no queues")
        return

    def rate(q: inspect.QueueStats) -> str:
        if q.rate_limit is None or q.rate_period_seconds is None:
            return "-"
        return f"{q.rate_limit}/{duration(q.rate_period_seconds)}"

    rows = [
        [
            q.queue,
            str(q.available),
            str(q.running),
            "-" if q.concurrency_limit is None else str(q.concurrency_limit),
            rate(q),
            "paused" if q.paused else "",
        ]
        for q in found
    ]
    headers = ["QUEUE", "AVAILABLE", "RUNNING", "CONCURRENCY", "RATE", "PAUSED"]
    click.echo(table(headers, rows, right=["AVAILABLE", "RUNNING", "CONCURRENCY", "RATE"]))


@queues.command("set")
@click.argument("queue")
@click.option(
    "--concurrency-limit",
    metavar="N|none",
    callback=_limit,
    help="At most N of the queue's jobs running at once, across all workers; none: unlimited.",
)
@click.option(
    "--rate-limit", metavar="N|none", callback=_limit, help="At most N starts per --rate-period."
)
@click.option(
    "--rate-period", metavar="DURATION", callback=_period, help="The rate window: 1s, 1m, 1h ..."
)
@json_option
def queues_set(
    queue: str,
    concurrency_limit: int | None,
    rate_limit: int | None,
    rate_period: float | None,
    as_json: bool,
) -> None:
    """Set QUEUE's limits; an option left out keeps its value. Takes effect at the next
    claim; running jobs are never stopped."""
    from broker import queues as settings

    ctx = click.get_current_context()
    given: dict[str, Any] = {}
    for option in ("concurrency_limit", "rate_limit", "rate_period"):
        if ctx.get_parameter_source(option) is click.core.ParameterSource.COMMANDLINE:
            given[option] = ctx.params[option]
    with open_client() as client:
        s = client.run(settings.configure(queue, **given))
    if as_json:
        echo_json(
            {
                "queue": s.queue,
                "concurrency_limit": s.concurrency_limit,
                "rate_limit": s.rate_limit,
                "rate_period_seconds": s.rate_period_seconds,
                "paused": s.paused,
            }
        )
        return
    rate = "unlimited"
    if s.rate_limit is not None and s.rate_period_seconds is not None:
        rate = f"{s.rate_limit} per {s.rate_period_seconds:g}s"
    limit = "unlimited" if s.concurrency_limit is None else str(s.concurrency_limit)
    click.echo(f"{s.queue}: concurrency {limit}, rate {rate}")


@queues.command("pause")
@click.argument("queue")
@click.option("--reason", help="Shown by `broker stats --json` and GET /v1/queues.")
def queues_pause(queue: str, reason: str | None) -> None:
    """Stop claims from QUEUE; running jobs finish, enqueues still land."""
    from broker import queues as settings

    with open_client() as client:
        changed = client.run(settings.pause(queue, reason))
    click.echo(f"{queue}: paused" + ("" if changed else " (already)"))


@queues.command("resume")
@click.argument("queue")
def queues_resume(queue: str) -> None:
    """Let workers claim from QUEUE again, and wake them."""
    from broker import queues as settings

    with open_client() as client:
        changed = client.run(settings.resume(queue))
    click.echo(f"{queue}: resumed" if changed else f"{queue}: was not paused")


COMMANDS = (queues,)
