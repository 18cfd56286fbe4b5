"""Read-only statements only the operator CLI needs (queries in sql/cli.sql); queues and
workers come from broker.inspection, shared with the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from broker.lease import Statement


@dataclass(frozen=True, slots=True)
class Summary:
    """Workers alive now, and the database's time."""

    workers_alive: int
    db_time: datetime


def summary() -> Statement[Summary]:
    """How many workers the worker_status view calls alive, and the database's now()."""
    return Statement("cli_summary", {}, lambda rows: Summary(*rows[0]))
