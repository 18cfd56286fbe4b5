"""The `broker` command line: one-line errors on stderr and non-zero exit codes.

Commands live by area (_admin, _enqueue, _groups, _jobs, _queues, _schedules, _views); how
every one of them fails is decided once, in _errors (with the codes of broker._exits)."""

from __future__ import annotations

import logging

import click

from broker import _env
from broker.cli import _admin, _enqueue, _groups, _jobs, _queues, _schedules, _views
from broker.cli._errors import EXIT_CODES_HELP, BrokerGroup


@click.group(cls=BrokerGroup, epilog=EXIT_CODES_HELP)
@click.version_option(package_name="pg-broker")
@click.pass_context
def main(ctx: click.Context) -> None:
    """pg-broker: a job broker that lives entirely in PostgreSQL."""
    # The pool logs every failed connection attempt; the CLI reports one line instead.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    if ctx.invoked_subcommand != "worker":  # the worker command says it itself
        for line in _env.warnings():
            click.echo(line, err=True)


for command in (
    *_admin.COMMANDS,
    *_enqueue.COMMANDS,
    *_jobs.COMMANDS,
    *_queues.COMMANDS,
    *_views.COMMANDS,
    *_schedules.COMMANDS,
):
    main.add_command(command)
for command in _groups.COMMANDS:
    main.add_command(command)
