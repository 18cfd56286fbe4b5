"""The worker's database connections, each reopened on its next use after any failure.

A worker process holds three (decision 0XX): `work`, shared by the claim loop, the outcome
writer, the reaper, the pruner and the scheduler, which run their statements on it one at
a time; `heartbeat`, for the heartbeats and the registry row alone, so that no slow write,
prune batch or lock wait can hold up the beat that keeps every lease alive; and the
LISTEN connection (listener.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Generator
from typing import Any, TypeVar

import psycopg

from broker import _executor as executor
from broker.config import DEFAULT_PREPARE_THRESHOLD
from broker.errors import DatabaseUnavailable, first_line
from broker.lease import Statement

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5
# TCP keepalives let the kernel notice a peer that vanished without closing the socket
# (a dropped network, a frozen host); they do nothing on Unix sockets.
KEEPALIVE_OPTIONS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
}


async def connect(
    url: str,
    application_name: str = "broker",
    prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD,
) -> psycopg.AsyncConnection[Any]:
    """Open an autocommit connection with keepalives and the broker's JSON decoding (one
    value too deep to decode reads as UnreadableJSON instead of failing the result).

    `application_name` shows up in pg_stat_activity, so operators can tell a worker's
    connections (and their roles) apart; PgBouncer passes it on. `prepare_threshold` is
    psycopg's (None: no server-side prepared statements, BROKER_PREPARE_THRESHOLD=none).
    """
    conn = await psycopg.AsyncConnection.connect(
        url,
        autocommit=True,
        prepare_threshold=prepare_threshold,
        connect_timeout=CONNECT_TIMEOUT,
        application_name=application_name[:63],
        **KEEPALIVE_OPTIONS,
    )
    executor.configure(conn)
    return conn


class Backoff:
    """Exponential backoff with full jitter between `base` and `cap` seconds."""

    def __init__(self, base: float = 0.05, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self._attempt = 0

    def reset(self) -> None:
        self._attempt = 0

    def next(self) -> float:
        """The next delay to wait (grows until `cap`)."""
        ceiling = min(self.cap, self.base * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 30)
        return random.uniform(ceiling / 2, ceiling)

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())


# What a connection sets for its session when it opens. The claim statement is prepared
# (psycopg prepares a statement on its fifth run), but under plan_cache_mode=auto
# PostgreSQL still plans it afresh on every call, because its generic plan, costed with
# default guesses for the LIMIT and the queue array, never looks cheaper than a custom
# one; planning was a tenth of a claim of 100. The statement is written so the generic
# plan has the custom plan's shape (index walks per queue, primary-key lookups for the
# update), so the connection the claims run on asks for it (decision 014 has the figures),
# and so does `work`, where generic plans spare the finish its re-planning too (decision
# 025). Everything that runs on either gets generic plans: the heartbeat, the finish, reap
# and expire statements, the jobs trigger and _resolve_dependents(), the scheduler's
# statements and enqueue_many(); tests/integration/test_plans.py checks each keeps its
# access path.
# Those whose plans need their values set plan_cache_mode = auto in their definition:
# _claim_flow() (LIMIT and queue list) and prune_jobs() (its batch LIMIT, migration 0014).
# JIT is off on both: a generic plan is costed with default guesses (a tenth of the rows
# for a LIMIT it cannot see), so with a million jobs queued the claim's estimate passed
# jit_above_cost, and PostgreSQL compiled it again on every run (JIT code is not kept with
# a cached plan): 18 ms of a 20 ms claim, and the drain fell to 0.28 of an empty queue's
# (decision 030).
_STATEMENT_SESSION = ("SET plan_cache_mode = force_generic_plan", "SET jit = off")
SESSION_SETTINGS: dict[str, tuple[str, ...]] = {
    "lease": _STATEMENT_SESSION,
    "work": _STATEMENT_SESSION,
}


class Connection:
    """One lazily opened connection that runs broker Statements, one at a time, for any
    number of services (asyncio tasks) at once.

    A statement holds the connection from the moment it is sent until its rows are read,
    and a transaction (`atomic`) until it commits, so services never interleave their
    statements: they queue for it in arrival order. A service whose statement fails at the
    connection level (or is cancelled mid-flight) discards the connection before the next
    one in the queue gets it, and that one reopens it: no service is ever handed a broken
    or half-closed connection, and one service's failure costs the others nothing but the
    reconnect.

    Raises DatabaseUnavailable when the database cannot be reached or the connection
    breaks (the connection is then discarded and reopened on the next call), the broker's
    own exceptions for errors it raises on purpose, and psycopg errors otherwise.
    """

    def __init__(
        self,
        url: str,
        schema: str,
        name: str,
        prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD,
    ) -> None:
        self.url = url
        self.prepare_threshold = prepare_threshold
        self.name = name
        self.schema = schema
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._turn = asyncio.Lock()
        self.application_name = f"broker {name}"
        # How many times a connection was opened (a test and the footprint bench read it).
        self.opened = 0

    async def _open(self) -> psycopg.AsyncConnection[Any]:
        """The open connection, opened first if needed; call with `_turn` held."""
        if self._conn is None or self._conn.closed:
            try:
                conn = await connect(self.url, self.application_name, self.prepare_threshold)
                # Plan modes matter only to prepared statements; unprepared (behind a
                # transaction pooler) a session SET would also outlive this client's turn.
                try:
                    if self.prepare_threshold is not None:
                        for setting in SESSION_SETTINGS.get(self.name, ()):
                            await conn.execute(setting)
                except BaseException:
                    await _close(conn, self.name)
                    raise
            except psycopg.OperationalError as exc:
                raise DatabaseUnavailable(f"{self.name}: {first_line(exc)}") from exc
            self._conn = conn
            self.opened += 1
        return self._conn

    async def run(self, stmt: Statement[T]) -> T:
        async with self._turn:
            conn = await self._open()
            try:
                return await executor.arun(conn, stmt, self.schema)
            except BaseException as exc:
                await self._failed(conn, exc)
                raise

    async def atomic(self, steps: Generator[Statement[Any], Any, R]) -> R:
        """Drive `steps` (statements yielded by a generator) inside one transaction; no
        other statement runs on the connection until it has committed or rolled back."""
        async with self._turn:
            conn = await self._open()
            try:
                async with conn.transaction():

                    async def do(stmt: Statement[Any]) -> Any:
                        return await executor.arun(conn, stmt, self.schema)

                    return await executor.adrive(steps, do)
            except BaseException as exc:
                await self._failed(conn, exc)
                raise

    async def _failed(self, conn: psycopg.AsyncConnection[Any], exc: BaseException) -> None:
        """Discard `conn` after a failure that leaves it unfit for the next statement, and
        say which connection failed. Called with `_turn` held."""
        if isinstance(exc, asyncio.CancelledError):
            # The statement may still be running on the server: this connection's
            # protocol state is unknown, so it is never reused.
            await self._discard(conn)
        elif isinstance(
            exc, DatabaseUnavailable | psycopg.OperationalError | psycopg.InterfaceError
        ):
            # Translation is the executor's; what is this connection's own is that after a
            # connection-level failure (or a serialization failure, deadlock or timeout,
            # which a service retries the same way) it is never reused.
            await self._discard(conn)
            raise DatabaseUnavailable(f"{self.name}: {first_line(exc)}") from exc

    async def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Detached before the first await: whoever runs next opens a fresh one.
        if self._conn is conn:
            self._conn = None
        await _close(conn, self.name)

    async def discard(self) -> None:
        """Close the connection now; the next statement opens a new one."""
        if self._conn is not None:
            await self._discard(self._conn)

    async def close(self) -> None:
        await self.discard()


async def _close(conn: psycopg.AsyncConnection[Any], name: str) -> None:
    try:
        await asyncio.wait_for(conn.close(), 1.0)
    except Exception:
        log.debug("closing the %s connection failed", name, exc_info=True)
