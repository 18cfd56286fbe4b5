"""Whether an enqueue must wake this worker: its registration in broker.claim_waiters.

A NOTIFY makes committing transactions take turns (PostgreSQL holds one lock from the
notifying commit's queue write until its WAL flush), so enqueues notify a queue only while
a worker waits on it (decision 028). A worker waits after an empty claim. Before it
sleeps on LISTEN it registers, then proves that no enqueue that missed the registration
is still in flight (`_claim_waiters_settled()`), then claims once more: a job whose
enqueue did not see the registration has committed by then. The registration is left at
the second full claim in a row (the queues hold more than the free slots, so the worker
will claim again without being told; one full claim may be one job for one free slot)
and when the worker stops; a killed worker's rows expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol, TypeVar

from broker.lease import Statement

log = logging.getLogger(__name__)

T = TypeVar("T")

# A registration lives this long in database time unless refreshed; it is refreshed a
# third of the way in (the claim loop wakes for it), so a worker that keeps waiting never
# lapses. A refresh later than LAPSED of it (a database outage) may find the row expired:
# the worker then settles again, as after a first registration.
REGISTRATION_TTL = 60.0
LAPSED = 0.8
# How long a stopping worker tries to leave before it lets its rows expire.
LEAVE_TIMEOUT = 3.0


class _Runs(Protocol):
    async def run(self, stmt: Statement[T]) -> T: ...


def register(worker_id: str, queues: Sequence[str], ttl: float) -> Statement[list[str]]:
    """Wait for jobs of `queues` until now() + `ttl`: enqueues into them notify."""
    return Statement(
        "claim_wait_register",
        {"worker_id": worker_id, "queues": list(queues), "ttl": ttl},
        lambda rows: [r[0] for r in rows],
    )


def settled(queues: Sequence[str]) -> Statement[bool]:
    """Whether no enqueue into `queues` is in flight at this moment."""
    return Statement("claim_wait_settled", {"queues": list(queues)}, lambda rows: bool(rows[0][0]))


def leave(worker_id: str, queues: Sequence[str]) -> Statement[list[str]]:
    """Stop waiting on `queues` (and drop their expired registrations)."""
    return Statement(
        "claim_wait_leave",
        {"worker_id": worker_id, "queues": list(queues)},
        lambda rows: [r[0] for r in rows],
    )


class Wakeups:
    """One worker's registration: written after an empty claim, settled before it sleeps,
    left at a backlog (two full claims in a row) or at stop."""

    def __init__(self, conn: _Runs, queues: Sequence[str], ttl: float = REGISTRATION_TTL) -> None:
        self.conn = conn
        self.queues = list(dict.fromkeys(queues))
        self.ttl = ttl
        self.worker_id = ""
        self.registered = False
        self.settled = False
        self._written_at = 0.0

    async def may_sleep(self) -> bool:
        """After an empty claim: True when the worker may sleep until a notification (or
        the poll); False when it must claim again first (just registered, or an enqueue
        is still in flight)."""
        now = time.monotonic()
        if not self.registered or now - self._written_at >= self.ttl / 3:
            if now - self._written_at >= self.ttl * LAPSED:
                self.settled = False
            await self.conn.run(register(self.worker_id, self.queues, self.ttl))
            self.registered, self._written_at = True, now
        if self.settled:
            return True
        # Whatever the answer, claim once more before sleeping: on True the claim sees
        # every job whose enqueue missed the registration; on False one is in flight.
        self.settled = await self.conn.run(settled(self.queues))
        return False

    def refresh_in(self) -> float:
        """Seconds a waiting worker may sleep before its registration needs refreshing
        (wake then, whatever the poll interval, or enqueues stop notifying it)."""
        if not self.registered:
            return self.ttl / 3
        return max(0.0, self.ttl / 3 - (time.monotonic() - self._written_at))

    async def busy(self) -> None:
        """At a backlog: the worker claims again without being woken."""
        if self.registered:
            await self.conn.run(leave(self.worker_id, self.queues))
            self.registered = self.settled = False

    async def stop(self, timeout: float = LEAVE_TIMEOUT) -> None:
        """At stop: leave, if the database lets us within `timeout` s (else the rows
        expire); never holds up the stop longer."""
        try:
            await asyncio.wait_for(self.busy(), timeout)
        except Exception as exc:  # the worker is stopping either way
            log.warning("could not leave the claim waiters (the rows will expire): %s", exc)
