"""The reaper service: returns expired leases to the queue and expires jobs past their
deadline, on an interval, in every worker.

Expiry is judged by the database clock alone and the reap statement skips rows another
reaper holds (SKIP LOCKED), so any number of processes may run it at once; running it
everywhere means no single process has to stay up for crashed workers' jobs to return.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from broker import lease
from broker.errors import BrokerError
from broker.worker._conn import Backoff

if TYPE_CHECKING:
    from broker.pruner import Runner

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 2.0
DEFAULT_LIMIT = lease.DEFAULT_REAP_LIMIT
# Spread reapers of processes started together so they do not all fire at once.
DEFAULT_JITTER = 0.2


@dataclass(frozen=True, slots=True)
class ReaperConfig:
    """Seconds between runs, jobs per statement, and the +/- fraction of jitter."""

    interval: float = DEFAULT_INTERVAL
    limit: int = DEFAULT_LIMIT
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("reaper interval must be positive")


class Reaper:
    """Runs `lease.reap` every interval on its own connection; never raises on DB errors."""

    def __init__(self, conn: Runner, config: ReaperConfig | None = None) -> None:
        self.conn = conn
        self.config = config or ReaperConfig()
        self.reaped = 0

    async def run_once(self) -> int:
        """Reap until no expired lease is left, then expire jobs past their deadline until
        none is left; returns how many jobs were moved."""
        total = 0
        for build, why in ((lease.reap, "lease expired"), (lease.expire, "deadline passed")):
            while True:
                moved = await self.conn.run(build(self.config.limit))
                for r in moved:
                    log.info("reaped job %s (%s) -> %s", r.job_id, why, r.state)
                total += len(moved)
                if len(moved) < self.config.limit:
                    break
        self.reaped += total
        return total

    async def run(self) -> None:
        """Reap forever (until cancelled), backing off while the database is unavailable."""
        backoff = Backoff(base=0.1, cap=self.config.interval * 2)
        while True:
            try:
                await self.run_once()
                backoff.reset()
                delay = self.config.interval * (
                    1 + random.uniform(-self.config.jitter, self.config.jitter)
                )
            except (BrokerError, psycopg.Error) as exc:
                log.warning("reaper: %s", exc)
                delay = backoff.next()
            await asyncio.sleep(delay)
