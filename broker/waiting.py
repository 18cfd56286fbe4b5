"""Waiting for a job's outcome, woken by NOTIFY.

A wait registers the job it waits for in broker.job_waiters (committed) before it reads
the job; every transition of a registered job into a terminal state then notifies the
channel `<schema>_done` with the job ids, comma-separated (a statement trigger on
broker.jobs, so every writer does: the finish statement, the reaper, cancel_job(), a
dependency cascade, an operator's SQL). While nobody waits, nothing is notified: a
NOTIFY serializes committing transactions, and most finishes have no waiter (decision
015). The read after the registration (lease.wait_settled) counts a job whose row is
locked for an update as unsettled and reads it again shortly, since that update may end
the job without having seen the registration; so a wait never misses its job's end.

`Waiters` serves any number of waits in one async process (the API, an AsyncBroker) from
one LISTEN connection, registering and reading through the caller's pool; the
connection's notifications wake the waits of their ids. When nobody waits the connection
idles (a ping per `sweep` seconds); while somebody waits, each `sweep` seconds one query
checks every waited id, which bounds the delay a lost notification (the LISTEN
connection dropped and reconnected) can cause. `wait_for_job` is the same for one
synchronous caller, on a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from broker import _executor as executor
from broker import lease
from broker._listen_probe import ListenProbe
from broker._queries import queries
from broker.config import Settings

log = logging.getLogger("broker.waiting")

# The longest one Broker.wait / AsyncBroker.wait call may wait (the API allows less).
MAX_WAIT_SECONDS = 86_400.0
# A waited-for job's end is noticed within this long even if its notification was lost.
DEFAULT_SWEEP_SECONDS = 2.0
# How long the LISTEN connection may take to open or answer before it is replaced.
CONNECT_TIMEOUT = 5.0
# How soon a wait reads its job again when the row was locked for an update.
LOCKED_RECHECK_SECONDS = 0.02
# A registration outlives its wait by this much before anyone may delete it as expired.
REGISTRATION_MARGIN_SECONDS = 60.0

Run = Callable[[lease.Statement[Any]], Awaitable[Any]]


def parse_ids(payload: str) -> list[int]:
    """The job ids of one `<schema>_done` notification (anything else is skipped)."""
    ids: list[int] = []
    for part in payload.split(","):
        with contextlib.suppress(ValueError):
            ids.append(int(part))
    return ids


class ListenLoop:
    """One LISTEN connection for one async process: opened by the first `_started()` (which
    waits, at most CONNECT_TIMEOUT, until it listens), replaced after any failure (backoff
    from 0.05 s doubling to 2 s), stopped by `_stop()`. A subclass's `_listen(conn, ready)`
    LISTENs, sets `ready` and serves notifications until the connection fails; while it is
    replaced `ready` stays set, and what the subclass serves falls back to polling."""

    # The task's name and the warning's words when the connection fails.
    task_name = "broker listen"
    lost = "listen connection lost"

    def __init__(self, connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]) -> None:
        self._connect = connect
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def _listen(self, conn: psycopg.AsyncConnection[Any], ready: asyncio.Event) -> None:
        raise NotImplementedError

    async def _started(self) -> None:
        if self._task is None or self._task.done():
            self._ready = asyncio.Event()
            self._task = asyncio.create_task(self._run(self._ready), name=self.task_name)
        assert self._ready is not None
        # Until the first LISTEN holds, callers rely on their fallback; do not start blind.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), CONNECT_TIMEOUT)

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, ready: asyncio.Event) -> None:
        delay = 0.05
        while True:
            conn: psycopg.AsyncConnection[Any] | None = None
            try:
                conn = await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT)
                await self._listen(conn, ready)
                delay = 0.05
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("%s: %s", self.lost, str(exc).strip() or type(exc))
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 1.0)
            ready.set()  # the fallback serves while the connection is replaced
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class Waiters(ListenLoop):
    """Waits for jobs to end, for one async process, on one LISTEN connection.

    `connect` opens an autocommit connection (the caller's pool settings, keepalives);
    the connection is opened on the first wait and reopened after a failure. `run` runs
    a statement on the caller's pool (registrations and reads)."""

    task_name = "broker waiters"
    lost = "waiters' connection lost"

    def __init__(
        self,
        connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
        run: Run,
        settings: Settings,
        sweep: float = DEFAULT_SWEEP_SECONDS,
    ) -> None:
        super().__init__(connect)
        self._runner = run
        self._settings = settings
        self._sweep = sweep
        self._queries = queries(settings.schema)
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}

    async def wait(self, job_id: int, timeout: float) -> None:
        """Return once `job_id` is terminal or gone, or after `timeout` seconds."""
        await self._started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.setdefault(job_id, []).append(done)
        registrations: list[int] = []
        try:
            registrations = await self._runner(
                lease.wait_register([job_id], timeout + REGISTRATION_MARGIN_SECONDS)
            )
            while not done.done():
                settled: lease.Settled = await self._runner(lease.wait_settled([job_id]))
                if job_id in settled.ended or job_id in settled.missing:
                    return
                left = deadline - loop.time()
                if left <= 0:
                    return
                if job_id in settled.locked:
                    left = min(left, LOCKED_RECHECK_SECONDS)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(done), left)
        finally:
            futures = self._waiting.get(job_id, [])
            if done in futures:
                futures.remove(done)
            if not futures:
                self._waiting.pop(job_id, None)
            if registrations:
                # Left behind (the database is down), it expires on its own.
                with contextlib.suppress(Exception):
                    await self._runner(lease.wait_unregister(registrations))

    @property
    def waiting(self) -> int:
        """How many waits are registered (for tests and metrics)."""
        return sum(len(f) for f in self._waiting.values())

    async def close(self) -> None:
        await self._stop()
        for futures in self._waiting.values():
            for done in futures:
                if not done.done():
                    done.cancel()
        self._waiting.clear()

    async def _listen(self, conn: psycopg.AsyncConnection[Any], ready: asyncio.Event) -> None:
        await conn.execute(self._queries["job_wait_listen"])
        ready.set()
        probe = ListenProbe(
            self._connect,
            self._settings,
            f"waits see a job end by checking every {self._sweep:g} s",
        )
        await probe.send()
        # Anything that ended while the connection was down is found now.
        await self._check(conn)
        while True:
            async for notify in conn.notifies(timeout=self._sweep):
                if probe.heard(notify):
                    continue
                if notify.channel == self._settings.done_channel:
                    self._wake(parse_ids(notify.payload))
            probe.check()
            await asyncio.wait_for(self._check(conn), CONNECT_TIMEOUT)

    async def _check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """The sweep: one query for every waited id (a ping when nobody waits)."""
        if not self._waiting:
            await conn.execute("SELECT 1")
            return
        ended = await executor.arun(
            conn, lease.finished_among(list(self._waiting)), self._settings.schema
        )
        self._wake(ended)

    def _wake(self, ids: Any) -> None:
        for job_id in ids:
            for done in self._waiting.get(job_id, ()):
                if not done.done():
                    done.set_result(None)


def wait_for_job(
    conn: psycopg.Connection[Any],
    settings: Settings,
    job_id: int,
    timeout: float,
    sweep: float = DEFAULT_SWEEP_SECONDS,
) -> None:
    """Return once `job_id` is terminal or gone, or after `timeout` seconds, on `conn`
    (autocommit, the caller's own): LISTEN, register, then read the job and wait for a
    notification of it, reading again every `sweep` seconds. Leaves `conn` listening to
    nothing and the registration removed."""
    rendered = queries(settings.schema)
    schema = settings.schema
    conn.execute(rendered["job_wait_listen"])
    registrations: list[int] = []
    try:
        registrations = executor.run(
            conn, lease.wait_register([job_id], timeout + REGISTRATION_MARGIN_SECONDS), schema
        )
        deadline = time.monotonic() + timeout
        while True:
            settled = executor.run(conn, lease.wait_settled([job_id]), schema)
            if job_id in settled.ended or job_id in settled.missing:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            pause = LOCKED_RECHECK_SECONDS if job_id in settled.locked else sweep
            for notify in conn.notifies(timeout=min(left, pause)):
                if notify.channel == settings.done_channel and job_id in parse_ids(notify.payload):
                    break
    finally:
        if registrations and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                executor.run(conn, lease.wait_unregister(registrations), schema)
        conn.execute(rendered["job_wait_unlisten"])
