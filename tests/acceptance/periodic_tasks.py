"""Periodic tasks the scheduler acceptance tests run (`--tasks periodic_tasks`); kept out
of tasks_fixture so other worker tests see no periodic jobs."""

from __future__ import annotations

from broker import task


# backfill 5: a pass that runs late on a busy machine still enqueues every tick it missed,
# so the test can demand that no tick is lost as well as none doubled.
@task("every_second", every=1, backfill=5)
def every_second() -> None:
    """Nothing to do: the test counts the jobs."""


@task("hourly", every=3600)
def hourly() -> None:
    """For the downtime test: only the latest missed tick after downtime."""


@task("hourly_backfill", every=3600, backfill=3)
def hourly_backfill() -> None:
    """For the downtime test: up to three missed ticks."""
