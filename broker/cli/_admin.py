"""Commands that run or maintain the broker: migrate, api, worker, dev, reap and prune."""

from __future__ import annotations

import json
import sys

import click

from broker._durations import Duration
from broker.cli._errors import CommandFailed, OneLineCommand
from broker.cli._options import json_option, settings_and_url
from broker.errors import BrokerError


@click.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def migrate(revision: str) -> None:
    """Migrate the database (BROKER_DATABASE_URL, else the embedded one) to REVISION."""
    from broker.migrate import upgrade

    settings, url = settings_and_url()
    upgrade(url, settings.schema, revision)
    click.echo(f"migrated schema {settings.schema} to {revision}")


@click.command()
@click.option("--limit", default=1000, show_default=True, help="At most this many jobs.")
@json_option
def reap(limit: int, as_json: bool) -> None:
    """Return jobs whose lease expired (by the database clock) once, then exit."""
    from broker.client import Broker

    settings, url = settings_and_url()
    with Broker.connect(
        url,
        schema=settings.schema,
        min_size=1,
        max_size=1,
        connect_timeout=5,
        prepare_threshold=settings.prepare_threshold,
    ) as client:
        reaped = client.reap(limit)
    if as_json:
        click.echo(json.dumps([{"id": r.job_id, "state": r.state} for r in reaped]))
    else:
        click.echo(f"reaped {len(reaped)} expired lease(s)")
        for r in reaped:
            click.echo(f"  job {r.job_id} -> {r.state}")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port.")
@click.option("--workers", default=1, show_default=True, type=int, help="Server processes.")
@click.option("--access-log/--no-access-log", default=True, show_default=True)
@click.option("--log-level", default="info", show_default=True)
def api(host: str, port: int, workers: int, access_log: bool, log_level: str) -> None:
    """Serve the REST API with uvicorn (tokens from BROKER_API_TOKENS)."""
    import os

    import uvicorn

    from api.config import ApiSettings

    ApiSettings.from_env()  # refuse to start without tokens before binding the port
    _, url = settings_and_url()
    # Server processes build the app from the environment, so they share the URL resolved
    # here (the embedded server is started once, by this process).
    os.environ["BROKER_DATABASE_URL"] = url
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        log_level=log_level,
        server_header=False,
    )


@click.command(cls=OneLineCommand)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["succeeded", "failed", "cancelled"]),
    help="Only these states (repeatable) [default: all three].",
)
@click.option(
    "--older-than",
    type=Duration(),
    help="Override the retention, e.g. 36h or 7d [default: BROKER_RETENTION_<STATE> or 1d/14d/7d].",
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--yes", "-y", "assume_yes", is_flag=True, help="Do not ask on a terminal.")
@json_option
def prune(
    states: tuple[str, ...],
    older_than: float | None,
    dry_run: bool,
    assume_yes: bool,
    as_json: bool,
) -> None:
    """Delete finished jobs (and their events and logs) past their retention, once.

    On a terminal it first counts them and asks (--yes skips the question); --dry-run
    only counts. A run deletes at most 100 batches of 1,000 jobs per state."""
    from broker.client import Broker
    from broker.pruner import PrunerConfig, prune_once, would_prune

    config = PrunerConfig.from_env()
    retention = dict(config.retention)
    if older_than is not None:
        retention = dict.fromkeys(retention, older_than)
    if states:
        retention = {state: retention[state] for state in states}
    config = PrunerConfig(retention=retention)
    ask = not (dry_run or assume_yes) and sys.stdin.isatty()
    settings, url = settings_and_url()
    with Broker.connect(
        url,
        schema=settings.schema,
        max_size=1,
        connect_timeout=5,
        prepare_threshold=settings.prepare_threshold,
    ) as client:
        if dry_run or ask:
            counted = would_prune(client, config)
            if dry_run:
                _pruned(counted, as_json, "would prune ")
                return
            if sum(counted.values()) and not click.confirm(
                "delete " + _counts(counted) + " (with their events and logs)?", err=True
            ):
                raise CommandFailed("not confirmed; nothing was pruned")
        pruned = prune_once(client, config)
    if pruned is None:
        raise BrokerError("another process is pruning right now; try again later")
    _pruned(pruned, as_json, "pruned ")


def _counts(per_state: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in per_state.items())


def _pruned(per_state: dict[str, int], as_json: bool, verb: str) -> None:
    click.echo(json.dumps(per_state) if as_json else verb + _counts(per_state))


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface for the API.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port for the API.")
@click.option(
    "--tasks", default="broker.examples.tasks", show_default=True, help="Task modules to run."
)
def dev(host: str, port: int, tasks: str) -> None:
    """Run a whole broker here: embedded PostgreSQL (unless BROKER_DATABASE_URL is set),
    migrations, the API and one worker, until Ctrl-C."""
    from broker.dev import DevConfig, run

    sys.exit(run(DevConfig(host=host, port=port, tasks=tasks), click.echo))


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run jobs: a worker process (or --processes N of them); see `broker worker --help`."""
    from broker.worker.command import worker as command

    # Its own click command (shared with `python -m broker.worker`): it reports its errors
    # by the same table and exits with their codes itself.
    command.main(ctx.args, prog_name="broker worker")


COMMANDS = (migrate, reap, api, prune, dev, worker)
