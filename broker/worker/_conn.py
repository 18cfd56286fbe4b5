"""A dedicated database connection per worker service, reopened after any failure.

Each background service (claims, outcome writes, heartbeats, reaper, LISTEN) owns one,
so a slow statement on one never queues behind another, and a broken connection is
replaced on the next use instead of killing the worker.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, TypeVar

import psycopg

from broker import _executor as executor
from broker.config import DEFAULT_PREPARE_THRESHOLD
from broker.errors import DatabaseUnavailable, first_line
from broker.lease import Statement

T = TypeVar("T")
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


# What a service's connection sets for its session when it opens. The claim statement is
# prepared (psycopg prepares a statement on its fifth run), but under plan_cache_mode=auto
# PostgreSQL still plans it afresh on every call, because its generic plan, costed with
# default guesses for the LIMIT and the queue array, never looks cheaper than a custom
# one; planning was a tenth of a claim of 100. The statement is written so the generic
# plan has the custom plan's shape (index walks per queue, primary-key lookups for the
# update), so the claim connection asks for it (decision 014 has the figures). It runs
# nothing but the claim, whose _claim_flow() sets its own plan_cache_mode.
SESSION_SETTINGS: dict[str, tuple[str, ...]] = {
    "claim": ("SET plan_cache_mode = force_generic_plan",),
}


class Connection:
    """One lazily opened connection that runs broker Statements.

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
        self.application_name = f"broker {name}"

    async def _open(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                conn = await connect(self.url, self.application_name, self.prepare_threshold)
                # Plan modes matter only to prepared statements; unprepared (behind a
                # transaction pooler) a session SET would also outlive this client's turn.
                if self.prepare_threshold is not None:
                    for setting in SESSION_SETTINGS.get(self.name, ()):
                        await conn.execute(setting)
            except psycopg.OperationalError as exc:
                raise DatabaseUnavailable(first_line(exc)) from exc
            self._conn = conn
        return self._conn

    async def run(self, stmt: Statement[T]) -> T:
        conn = await self._open()
        try:
            return await executor.arun(conn, stmt, self.schema)
        except (DatabaseUnavailable, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # Translation is the executor's; what is this connection's own is that after a
            # connection-level failure (or a serialization failure, deadlock or timeout,
            # which a service retries the same way) it is never reused.
            await self.discard()
            raise DatabaseUnavailable(f"{self.name}: {first_line(exc)}") from exc
        except asyncio.CancelledError:
            # The statement may still be running on the server: this connection's
            # protocol state is unknown, so it is never reused.
            await self.discard()
            raise

    async def discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 1.0)
            except Exception:
                log.debug("closing %s connection failed", self.name, exc_info=True)

    async def close(self) -> None:
        await self.discard()
