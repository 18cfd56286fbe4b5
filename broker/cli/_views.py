"""`broker stats` and `broker workers`: what the queues and the worker registry look like."""

from __future__ import annotations

from typing import Any

import click

from broker.cli._errors import OneLineCommand
from broker.cli._options import echo_json, json_option, open_client
from broker.config import Settings


@click.command(cls=OneLineCommand)
@json_option
def stats(as_json: bool) -> None:
    """Jobs per queue and state, how long the oldest runnable job has waited, which queues
    are paused, and how many workers are alive."""
    from broker import _cli_views as views
    from broker import inspection as inspect
    from broker._output import duration, queue_json, table, when

    with open_client() as client:
        queues = client.run(inspect.queues())
        summary = client.run(views.summary())
    counts = [
        "waiting",
        "queued",
        "available",
        "scheduled",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    totals: dict[str, Any] = {name: sum(getattr(q, name) for q in queues) for name in counts}
    waits = [q.oldest_available_age_seconds for q in queues if q.available]
    totals["oldest_available_age_seconds"] = max(waits, default=0.0)
    if as_json:
        echo_json(
            {
                "queues": [queue_json(q) for q in queues],
                "totals": totals,
                "workers_alive": summary.workers_alive,
                "db_time": summary.db_time,
            }
        )
        return
    rows = [
        [
            q.queue,
            *(str(getattr(q, name)) for name in counts),
            duration(q.oldest_available_age_seconds) if q.available else "-",
            "paused" if q.paused else "",
        ]
        for q in queues
    ]
    total_row = [
        "(all)",
        *(str(totals[name]) for name in counts),
        duration(totals["oldest_available_age_seconds"]) if waits else "-",
        "",
    ]
    headers = ["QUEUE", *(name.upper() for name in counts), "OLDEST WAIT", "PAUSED"]
    right = headers[1:-1]
    click.echo(table(headers, [*rows, total_row], right=right))
    for q in queues:
        if q.queued and not q.served:
            click.echo(f"\nqueue '{q.queue}': {q.queued} queued, and no live worker serves it")
    click.echo(f"\nworkers alive: {summary.workers_alive}   database time: {when(summary.db_time)}")


@click.command("workers", cls=OneLineCommand)
@click.option("--alive", "alive_only", is_flag=True, help="Only workers that are alive.")
@json_option
def workers_command(alive_only: bool, as_json: bool) -> None:
    """The worker registry, with each worker's status as the broker.worker_status view
    gives it (alive: a heartbeat within the last 30 s, by the database clock; stopped:
    shut down cleanly; gone: no heartbeat since), when it was last seen, and its clock
    skew against the database (`!` past BROKER_CLOCK_SKEW_TOLERANCE)."""
    from broker import inspection as inspect
    from broker._output import duration, table, worker_json

    tolerance = Settings.from_env().clock_skew_tolerance
    with open_client() as client:
        found = client.run(inspect.workers())
    if alive_only:
        found = [w for w in found if w.status == "alive"]
    if as_json:
        echo_json(
            {
                "workers": [worker_json(w, tolerance) for w in found],
                "clock_skew_tolerance_seconds": tolerance,
            }
        )
        return
    if not found:
        click.echo("no workers")
        return

    def skew(w: inspect.WorkerInfo) -> str:
        if w.clock_skew_seconds is None:
            return "-"
        flag = "!" if abs(w.clock_skew_seconds) > tolerance else ""
        return f"{w.clock_skew_seconds:+.3f}s{flag}"

    rows = [
        [
            w.worker_id,
            w.hostname,
            str(w.pid),
            ",".join(w.queues),
            str(w.concurrency),
            str(w.running_jobs),
            w.status,
            duration(w.last_seen_age_seconds) + " ago",
            skew(w),
        ]
        for w in found
    ]
    headers = ["WORKER", "HOST", "PID", "QUEUES", "CONCURRENCY", "RUNNING", "STATUS"]
    right = ["PID", "CONCURRENCY", "RUNNING", "LAST SEEN", "SKEW"]
    click.echo(table([*headers, "LAST SEEN", "SKEW"], rows, right=right))


COMMANDS = (stats, workers_command)
