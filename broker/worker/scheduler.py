"""The scheduler service: enqueues periodic jobs' ticks, in every worker, with no leader.

At start it declares the schedules of this process's periodic tasks (an upsert that never
resets `paused` or `next_run_at`). Then each pass, one transaction on the worker's shared
connection, locks the due schedules no other pass holds (SKIP LOCKED), enqueues each
tick's job with the key `schedule:<name>:<tick>` and advances next_run_at past the
database's now() (broker.schedules.scheduler_pass). Locks keep two passes off one
schedule and the key would refuse a second job for a tick anyway, so any number of
workers on any hosts enqueue each tick once. Between passes it sleeps until the earliest
next_run_at (database time), at most `max_sleep`, so schedules created at run time are
noticed within that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import psycopg

from broker import schedules
from broker.errors import BrokerError
from broker.lease import Statement
from broker.schedules import PassResult, ScheduleSpec
from broker.worker._conn import Backoff

log = logging.getLogger(__name__)
R = TypeVar("R")

# Due schedules locked and enqueued per transaction.
DEFAULT_BATCH = 500
# Longest sleep between passes: how soon a schedule created or resumed at run time fires.
DEFAULT_MAX_SLEEP = 5.0
# Sleep after a pass that found every due schedule locked by another worker's pass.
DEFAULT_MIN_SLEEP = 0.05
# An orphaned schedule's skipped ticks are logged at most this often (seconds).
ORPHAN_WARNING_INTERVAL = 600.0


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Whether this worker runs the scheduler, schedules per transaction, and the bounds
    of its sleep between passes (seconds)."""

    enabled: bool = True
    batch: int = DEFAULT_BATCH
    max_sleep: float = DEFAULT_MAX_SLEEP
    min_sleep: float = DEFAULT_MIN_SLEEP

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ValueError("scheduler batch must be at least 1")
        if not 0 < self.min_sleep <= self.max_sleep:
            raise ValueError("scheduler sleeps must be positive, min_sleep <= max_sleep")


class Transactions(Protocol):
    """What the scheduler runs its transactions on: the worker's shared connection
    (`_conn.Connection.atomic`), which runs nothing else until one has committed."""

    async def atomic(self, steps: Generator[Statement[Any], Any, R]) -> R: ...


class Scheduler:
    """Declares this process's schedules, then runs passes until cancelled; never raises
    on database errors (it backs off and tries again)."""

    def __init__(
        self,
        conn: Transactions,
        declared: Sequence[ScheduleSpec],
        config: SchedulerConfig | None = None,
    ) -> None:
        self.conn = conn
        self.declared = list(declared)
        self.config = config or SchedulerConfig()
        self.worker_id: str | None = None
        self.enqueued = 0
        self._warned: dict[str, float] = {}  # schedule -> when (monotonic) it was last warned

    async def declare(self) -> None:
        """Upsert the code-declared schedules (first tick from database now())."""
        if self.declared:
            await self.conn.atomic(schedules.put_plan(self.declared, self.worker_id))
            log.info("declared schedule(s) %s", ", ".join(spec.name for spec in self.declared))

    async def run_once(self) -> PassResult:
        """Pass after pass until one's batch is not full; returns the totals."""
        claimed = enqueued = 0
        skipped: list[str] = []
        broken: dict[str, str] = {}
        while True:
            done: PassResult = await self.conn.atomic(schedules.scheduler_pass(self.config.batch))
            claimed += done.claimed
            enqueued += done.enqueued
            skipped += done.skipped
            broken.update(done.broken)
            if not done.full:
                break
        self._report(skipped, broken)
        self.enqueued += enqueued
        return PassResult(claimed, enqueued, skipped, broken, False)

    def _report(self, skipped: list[str], broken: dict[str, str]) -> None:
        now = time.monotonic()
        for name in skipped:
            if now - self._warned.get(name, -ORPHAN_WARNING_INTERVAL) >= ORPHAN_WARNING_INTERVAL:
                log.warning(
                    "schedule %s: no live worker declares its task; its ticks are skipped "
                    "until one does",
                    name,
                )
                self._warned[name] = now
        for name, why in broken.items():
            log.warning("schedule %s cannot run and is marked broken: %s", name, why)

    async def _sleep_time(self) -> float:
        wait: float | None = await self.conn.atomic(_single(schedules.seconds_until_due()))
        if wait is None:
            return self.config.max_sleep
        return min(max(wait, self.config.min_sleep), self.config.max_sleep)

    async def run(self) -> None:
        """Declare (retrying while the database is away), then pass and sleep forever."""
        backoff = Backoff(base=0.2, cap=self.config.max_sleep)
        while True:
            try:
                await self.declare()
                break
            except (BrokerError, psycopg.Error) as exc:
                log.warning("scheduler: cannot declare schedules: %s", exc)
                await asyncio.sleep(backoff.next())
        backoff.reset()
        while True:
            try:
                await self.run_once()
                delay = await self._sleep_time()
                backoff.reset()
            except (BrokerError, psycopg.Error) as exc:
                log.warning("scheduler: %s", exc)
                delay = backoff.next()
            await asyncio.sleep(delay)


def _single(stmt: Statement[R]) -> Any:
    """A one-statement sequence for Transactions.atomic."""
    result = yield stmt
    return result
