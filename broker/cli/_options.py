"""What the `broker` commands share besides their errors: the database they talk to, and
`--json` output."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from broker.config import Settings

if TYPE_CHECKING:
    from broker.client import Broker

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def echo_json(value: Any) -> None:
    """`value` as one line of JSON on stdout, with the REST API's keys and formats."""
    from broker._output import to_json

    click.echo(to_json(value))


def settings_and_url() -> tuple[Settings, str]:
    """Settings from the environment and the database URL (embedded server if unset)."""
    from broker.db import database_url

    settings = Settings.from_env()
    if not settings.database_url:
        # Said, so that a mistyped or forgotten variable is not a silent new database.
        where = (settings.home / "pgdata").resolve()
        click.echo(
            f"note: BROKER_DATABASE_URL is not set: using the embedded PostgreSQL in {where}",
            err=True,
        )
    return settings, database_url(settings)


@contextmanager
def open_client() -> Iterator[Broker]:
    """A one-connection client on BROKER_DATABASE_URL (else the embedded server)."""
    from broker.client import Broker

    settings, url = settings_and_url()
    with Broker.connect(
        url,
        schema=settings.schema,
        lease_ttl=settings.lease_ttl,
        max_size=1,
        connect_timeout=5,
        listen_url=settings.listen_url,
        prepare_threshold=settings.prepare_threshold,
    ) as client:
        yield client
