"""The heartbeat service: keeps every lease this process holds alive, in one statement.

Each beat extends all held leases to now() + TTL (database time), reports the ones the
database says are lost and the held jobs whose cancel was requested, then refreshes the
worker's last_seen (measuring clock skew again). It also notices an orphaned worker: a
child whose supervisor is gone stops, so no worker outlives its deployment.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from broker import lease
from broker.errors import BrokerError
from broker.types import Lease

if TYPE_CHECKING:
    from broker.pruner import Runner
    from broker.worker.registry import Registration

log = logging.getLogger(__name__)

# Three beats per TTL, so one late beat never loses a lease.
BEATS_PER_TTL = 3
# After a failed beat, try again this soon: the leases keep running out meanwhile.
DEFAULT_RETRY_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    """Seconds between beats (None: the lease TTL / BEATS_PER_TTL), and the shorter wait
    before the next try after a beat failed."""

    interval: float | None = None
    retry_interval: float = DEFAULT_RETRY_INTERVAL

    def __post_init__(self) -> None:
        if self.interval is not None and self.interval <= 0:
            raise ValueError("heartbeat interval must be positive")

    def every(self, lease_ttl: float) -> float:
        """Seconds between beats for leases of `lease_ttl` seconds."""
        return self.interval or lease_ttl / BEATS_PER_TTL


class Heartbeat:
    """Beats every interval on its own connection; never raises on database errors.

    `leases` lists the leases to extend (those whose outcome is not yet on its way), and
    `unwritten` those of handlers that have finished but whose outcome is not written
    yet (extended where their row is not locked at that moment, reporting nothing);
    `on_lost` and `on_cancel` hear about a lost lease and a requested cancel; when
    `supervisor_pid` is no longer this process's parent, `on_orphaned` is called.
    """

    def __init__(
        self,
        runner: Runner,
        registration: Registration,
        lease_ttl: float,
        config: HeartbeatConfig | None = None,
        *,
        leases: Callable[[], Sequence[Lease]],
        unwritten: Callable[[], Sequence[Lease]] = lambda: (),
        on_lost: Callable[[Lease], None],
        on_cancel: Callable[[int], None],
        supervisor_pid: int | None = None,
        on_orphaned: Callable[[], None] | None = None,
    ) -> None:
        self.runner = runner
        self.registration = registration
        self.lease_ttl = lease_ttl
        self.config = config or HeartbeatConfig()
        self._leases = leases
        self._unwritten = unwritten
        self._on_lost = on_lost
        self._on_cancel = on_cancel
        self._supervisor_pid = supervisor_pid
        self._on_orphaned = on_orphaned

    @property
    def interval(self) -> float:
        return self.config.every(self.lease_ttl)

    async def beat_once(self) -> None:
        """One beat: the orphan check, every held lease, then the registry's last_seen."""
        parent = self._supervisor_pid
        if parent is not None and os.getppid() != parent and self._on_orphaned is not None:
            self._on_orphaned()
        held = list(self._leases())
        if held:
            beat = await self.runner.run(lease.heartbeat(held, self.lease_ttl))
            for lost in beat.lost:
                self._on_lost(lost)
            for wanted in beat.cancel_requested:
                self._on_cancel(wanted.job_id)
        # After the running ones, and apart: this one skips rows a write holds locked.
        pending = list(self._unwritten())
        if pending:
            await self.runner.run(lease.heartbeat_unwritten(pending, self.lease_ttl))
        await self.registration.seen()

    async def run(self) -> None:
        """Beat forever (until cancelled)."""
        interval = self.interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.beat_once()
                interval = self.interval
            except (BrokerError, psycopg.Error) as exc:
                log.warning("heartbeat failed: %s", exc)
                interval = min(self.config.retry_interval, self.interval)
