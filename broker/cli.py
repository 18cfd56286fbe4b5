"""The `broker` command line: one-line errors on stderr and non-zero exit codes."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from broker.config import Settings
from broker.errors import BrokerError

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Turn BrokerError (and database errors) into `error: ...` on stderr and exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import psycopg

        try:
            return fn(*args, **kwargs)
        except (BrokerError, psycopg.Error) as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            click.echo(f"error: {message}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def settings_and_url() -> tuple[Settings, str]:
    """Settings from the environment and the database URL (embedded server if unset)."""
    from broker.db import database_url

    settings = Settings.from_env()
    return settings, database_url(settings)


@click.group()
@click.version_option(package_name="pg-broker")
def main() -> None:
    """pg-broker: a job broker that lives entirely in PostgreSQL."""
    # The pool logs every failed connection attempt; the CLI reports one line instead.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)


@main.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@one_line_errors
def migrate(revision: str) -> None:
    """Migrate the database (BROKER_DATABASE_URL, else the embedded one) to REVISION."""
    from broker.migrate import upgrade

    settings, url = settings_and_url()
    upgrade(url, settings.schema, revision)
    click.echo(f"migrated schema {settings.schema} to {revision}")


@main.command()
@click.option("--limit", default=1000, show_default=True, help="At most this many jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@one_line_errors
def reap(limit: int, as_json: bool) -> None:
    """Return jobs whose lease expired (by the database clock) once, then exit."""
    from broker.client import Broker

    settings, url = settings_and_url()
    with Broker.connect(
        url, schema=settings.schema, min_size=1, max_size=1, connect_timeout=5
    ) as client:
        reaped = client.reap(limit)
    if as_json:
        click.echo(json.dumps([{"id": r.job_id, "state": r.state} for r in reaped]))
    else:
        click.echo(f"reaped {len(reaped)} expired lease(s)")
        for r in reaped:
            click.echo(f"  job {r.job_id} -> {r.state}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port.")
@click.option("--workers", default=1, show_default=True, type=int, help="Server processes.")
@click.option("--access-log/--no-access-log", default=True, show_default=True)
@click.option("--log-level", default="info", show_default=True)
@one_line_errors
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


@main.command()
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["succeeded", "failed", "cancelled"]),
    help="Only these states (repeatable) [default: all three].",
)
@click.option(
    "--older-than",
    help="Override the retention, e.g. 36h or 7d [default: BROKER_RETENTION_<STATE> or 1d/14d/7d].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@one_line_errors
def prune(states: tuple[str, ...], older_than: str | None, as_json: bool) -> None:
    """Delete finished jobs (and their events and logs) past their retention, once."""
    from broker.client import Broker
    from broker.pruner import PrunerConfig, parse_duration, prune_once

    config = PrunerConfig.from_env()
    retention = dict(config.retention)
    if older_than is not None:
        try:
            seconds = parse_duration(older_than, "--older-than")
        except BrokerError as exc:
            raise click.BadParameter(str(exc)) from None
        retention = dict.fromkeys(retention, seconds)
    if states:
        retention = {state: retention[state] for state in states}
    settings, url = settings_and_url()
    with Broker.connect(url, schema=settings.schema, max_size=1, connect_timeout=5) as client:
        pruned = prune_once(client, PrunerConfig(retention=retention))
    if pruned is None:
        raise BrokerError("another process is pruning right now; try again later")
    if as_json:
        click.echo(json.dumps(pruned))
    else:
        click.echo("pruned " + ", ".join(f"{n} {state}" for state, n in pruned.items()))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface for the API.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port for the API.")
@click.option(
    "--tasks", default="broker.examples.tasks", show_default=True, help="Task modules to run."
)
@one_line_errors
def dev(host: str, port: int, tasks: str) -> None:
    """Run a whole broker here: embedded PostgreSQL (unless BROKER_DATABASE_URL is set),
    migrations, the API and one worker, until Ctrl-C."""
    from broker.dev import DevConfig, run

    sys.exit(run(DevConfig(host=host, port=port, tasks=tasks), click.echo))


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run jobs: a worker process (or --processes N of them); see `broker worker --help`."""
    from broker.worker.command import worker as command

    command.main(ctx.args, prog_name="broker worker")


if __name__ == "__main__":
    main()
