"""`broker groups show GROUP`: how many jobs of a group are in each state."""

from __future__ import annotations

import click

from broker.cli._errors import OneLineCommand, OneLineGroup
from broker.cli._options import echo_json, json_option, open_client


@click.group("groups", cls=OneLineGroup)
def groups() -> None:
    """Sets of jobs enqueued with the same --group."""


@groups.command("show", cls=OneLineCommand)
@click.argument("group")
@json_option
def show(group: str, as_json: bool) -> None:
    """GROUP's jobs per state (every state, zero included), as GET /v1/groups/GROUP."""
    from broker import inspection as inspect
    from broker._output import table

    with open_client() as client:
        found = client.run(inspect.group_counts(group))
    if as_json:
        echo_json({"group": found.group, "counts": found.counts, "total": found.total})
        return
    rows = [[state, str(n)] for state, n in found.counts.items()]
    click.echo(table(["STATE", "JOBS"], [*rows, ["(all)", str(found.total)]], right=["JOBS"]))


COMMANDS = (groups,)
