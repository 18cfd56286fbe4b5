"""Clients that execute the lease state machine's statements: `Broker` (sync) and
`AsyncBroker` (asyncio). Both are thin: broker.lease builds every statement."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any, Self, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from broker import _copy as copy
from broker import _executor as executor
from broker import follow, lease, routing, waiting
from broker import spec as contract
from broker.config import DEFAULT_LEASE_TTL, DEFAULT_SCHEMA, Settings, validate_schema
from broker.errors import ConfigError, DatabaseUnavailable, JobNotFound
from broker.lease import Failure, Statement
from broker.spec import DEFAULT_QUEUE, JobSpec
from broker.types import (
    TERMINAL_STATES,
    Enqueued,
    H,
    HeartbeatOutcome,
    Held,
    Job,
    JobEvent,
    Lease,
    LogLine,
    Reaped,
    WriteOutcome,
)
from broker.waiting import MAX_WAIT_SECONDS

T = TypeVar("T")

DEFAULT_CONNECT_TIMEOUT = 10.0


def _unreachable(url: str, timeout: float) -> str:
    """Where we tried to connect, without the password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return f"cannot connect to PostgreSQL within {timeout:g} s (malformed database URL)"
    where = info.get("host") or "local socket"
    port = info.get("port")
    target = f"{where}:{port}" if port else str(where)
    return f"cannot connect to PostgreSQL at {target}/{info.get('dbname', '')} within {timeout:g} s"


def _spec(
    kind: str,
    args: dict[str, Any] | None,
    queue: str | None,
    delay: float | timedelta | None,
    timeout: float | timedelta | None,
    **options: Any,
) -> JobSpec:
    return JobSpec(
        kind,
        args if args is not None else {},
        queue=routing.fallback(queue),
        delay=contract.seconds(delay, "delay"),
        timeout=contract.seconds(timeout, "timeout"),
        **options,
    )


def _url_of(pool: ConnectionPool[Any] | AsyncConnectionPool[Any]) -> str:
    """The pool's connection string, for a connection of its own (a wait's LISTEN)."""
    conninfo = pool.conninfo
    if not isinstance(conninfo, str):
        raise ConfigError("wait() needs a pool opened with a connection string")
    return conninfo


def _check_wait(timeout: float) -> None:
    if not (isinstance(timeout, int | float) and 0 <= timeout <= MAX_WAIT_SECONDS):
        raise ValueError(f"wait timeout must be 0-{MAX_WAIT_SECONDS:g} seconds, got {timeout!r}")


def declared_queue(kind: str) -> str:
    """The queue the task of `kind` declares (`@task(queue=...)`) if this process
    registered the task, else `default`. An enqueue that names no queue uses it when it
    says a task's queue; otherwise live workers' declarations decide (broker.routing)."""
    return routing.declared_queue(kind) or DEFAULT_QUEUE


class _Base:
    # How often a wait re-reads its job in case a notification was lost (broker.waiting).
    wait_sweep: float = waiting.DEFAULT_SWEEP_SECONDS

    def __init__(self, schema: str, lease_ttl: float) -> None:
        self.schema = validate_schema(schema)
        self.settings = Settings(schema=schema, lease_ttl=lease_ttl)
        self.lease_ttl = lease_ttl


class Broker(_Base):
    """Synchronous client. Every method is one statement in its own transaction, except
    enqueue with `conn=`, which runs inside the caller's transaction."""

    def __init__(
        self,
        pool: ConnectionPool[Any],
        *,
        schema: str = DEFAULT_SCHEMA,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        super().__init__(schema, lease_ttl)
        self.pool = pool

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> Self:
        """Open a pool of autocommit connections to `url`.
        Raises DatabaseUnavailable if no connection succeeds within `connect_timeout` s."""
        pool = executor.open_pool(url, min_size=min_size, max_size=max_size)
        try:
            pool.wait(timeout=connect_timeout)
        except PoolTimeout:
            pool.close()
            raise DatabaseUnavailable(_unreachable(url, connect_timeout)) from None
        return cls(pool, schema=schema, lease_ttl=lease_ttl)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, stmt: Statement[T], conn: psycopg.Connection[Any] | None = None) -> T:
        """Execute one statement on `conn` (caller's transaction) or a pooled connection."""
        if conn is not None:
            return executor.run(conn, stmt, self.schema)
        with self.pool.connection() as pooled:
            return executor.run(pooled, stmt, self.schema)

    # enqueue

    def enqueue(
        self,
        kind: str,
        args: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int = 0,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        idempotency_key: str | None = None,
        subject_key: str | None = None,
        tags: Sequence[str] = (),
        depends_on: Sequence[int] = (),
        group: str | None = None,
        concurrency_key: str | None = None,
        deadline: datetime | None = None,
        start_within: float | timedelta | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> Enqueued:
        """Enqueue one job. With `depends_on` (ids of existing jobs) it waits until they all
        succeed. With no `queue`, the job goes to its task's declared queue if this process
        registered the task (`declared_queue`), else to the queue live workers declare for
        the kind, else to `default` (broker.routing; the registry is read in the same
        statement, and its warnings are logged and returned in `Enqueued.warnings`).
        Raises InvalidJobError (also for a depends_on id no job has) or
        IdempotencyConflict."""
        chosen = routing.resolve(kind, queue)
        spec = _spec(
            kind,
            args,
            queue=chosen,
            priority=priority,
            run_at=run_at,
            delay=delay,
            max_attempts=max_attempts,
            timeout=timeout,
            idempotency_key=idempotency_key,
            subject_key=subject_key,
            tags=tags,
            depends_on=depends_on,
            group=group,
            concurrency_key=concurrency_key,
            deadline=deadline,
            start_within=contract.seconds(start_within, "start_within"),
        )
        if chosen is None:
            routed = self.run(routing.enqueue_routed([spec], [True]), conn)
            routing.report(routed)
            return routed[0]
        return self.run(lease.enqueue_many([spec]), conn)[0]

    def enqueue_many(
        self,
        specs: Iterable[JobSpec],
        conn: psycopg.Connection[Any] | None = None,
        *,
        idempotency_scope: str | None = None,
    ) -> list[Enqueued]:
        """Enqueue many jobs atomically (all or none); results in input order.
        `idempotency_scope` namespaces the specs' idempotency keys (letters, digits, _ . -).
        Raises InvalidJobError or IdempotencyConflict."""
        batch = list(specs)
        if not copy.copy_eligible(batch):
            return self.run(lease.enqueue_many(batch, idempotency_scope), conn)
        if conn is not None:
            return self._copy_enqueue(batch, conn)
        with self.pool.connection() as pooled:
            return self._copy_enqueue(batch, pooled)

    def _copy_enqueue(self, batch: list[JobSpec], conn: psycopg.Connection[Any]) -> list[Enqueued]:
        # On the caller's non-autocommit connection the COPY joins their transaction
        # (conn.transaction() there would commit it); otherwise it gets its own.
        steps = copy.copy_enqueue(batch, self.settings.jobs_channel)
        with conn.transaction() if conn.autocommit else nullcontext():
            return executor.run_steps(conn, steps, self.schema)

    # worker side

    def claim(
        self, queues: Sequence[str], limit: int, worker_id: str, lease_ttl: float | None = None
    ) -> list[Lease]:
        """Lease up to `limit` runnable jobs from `queues` (SKIP LOCKED). A claimed job whose
        args cannot be decoded here is failed (final, saying why) instead of returned."""
        claimed = self.run(lease.claim(queues, limit, worker_id, lease_ttl or self.lease_ttl))
        runnable, unreadable = lease.split_unreadable(claimed)
        if unreadable:
            self.fail_many(unreadable)
        return runnable

    def heartbeat(self, leases: Sequence[H], lease_ttl: float | None = None) -> HeartbeatOutcome[H]:
        """Extend all `leases` in one statement; lost ones are reported, not raised."""
        if not leases:
            return HeartbeatOutcome([], [], [])
        return self.run(lease.heartbeat(leases, lease_ttl or self.lease_ttl))

    def complete(self, held: Held, result: Any = None) -> None:
        """Mark the job succeeded. Raises LeaseLost if `held` is no longer the live lease."""
        lease.raise_if_lost(self.complete_many([(held, result)]), "complete")

    def finish_many(self, rows: Sequence[lease.Finish]) -> list[WriteOutcome]:
        """End attempts (lease.completed / failed / cancel_acked / released) in one fenced
        statement; an outcome with applied=False means that lease was lost."""
        return self.run(lease.finish(rows, self.settings.jobs_channel)) if rows else []

    def complete_many(self, done: Sequence[tuple[Held, Any]]) -> list[WriteOutcome]:
        return self.finish_many([lease.completed(h, r) for h, r in done])

    def fail(
        self,
        held: Held,
        error: str,
        *,
        retryable: bool = True,
        delay: float | None = None,
    ) -> str:
        """Record a failed attempt; returns the new state (queued/failed/cancelled).
        Raises LeaseLost if `held` is no longer the live lease."""
        outcomes = self.fail_many([(held, Failure(error, retryable, delay))])
        lease.raise_if_lost(outcomes, "fail")
        return outcomes[0].state or ""

    def fail_many(self, failed: Sequence[tuple[Held, Failure]]) -> list[WriteOutcome]:
        return self.finish_many([lease.failed(h, f) for h, f in failed])

    def cancel_ack_many(self, cancelled: Sequence[tuple[Held, str]]) -> list[WriteOutcome]:
        return self.finish_many([lease.cancel_acked(h, r) for h, r in cancelled])

    def release_many(self, leases: Sequence[Held]) -> list[WriteOutcome]:
        return self.finish_many([lease.released(h) for h in leases])

    def append_logs(self, lines: Sequence[tuple[Held, str]]) -> int:
        return self.run(lease.append_logs(lines)) if lines else 0

    # operators and submitters

    def reap(self, limit: int = lease.DEFAULT_REAP_LIMIT) -> list[Reaped]:
        """Return expired leases to the queue (or end them); safe to run anywhere, any time."""
        return self.run(lease.reap(limit))

    def cancel(self, job_id: int) -> str:
        """Cancel a job; returns its new state. Raises JobNotFound or InvalidTransition."""
        return self.run(lease.cancel(job_id))

    def retry(self, job_id: int) -> str:
        """Requeue a failed/cancelled job. Raises JobNotFound or InvalidTransition."""
        return self.run(lease.retry(job_id))

    def wait(self, job_id: int, timeout: float) -> Job:
        """The job once it is terminal (succeeded, failed, cancelled), or as it is after
        `timeout` seconds. Woken by NOTIFY on a connection of its own (broker.waiting),
        so the pool is not held while waiting. Raises JobNotFound."""
        _check_wait(timeout)
        if self.get_job(job_id).state in TERMINAL_STATES:
            return self.get_job(job_id)
        with psycopg.connect(_url_of(self.pool), autocommit=True) as conn:
            executor.configure(conn)
            waiting.wait_for_job(conn, self.settings, job_id, timeout, sweep=self.wait_sweep)
        return self.get_job(job_id)

    def get_job(self, job_id: int) -> Job:
        """The job with this id. Raises JobNotFound."""
        found = self.run(lease.get_jobs([job_id]))
        if not found:
            raise JobNotFound(job_id)
        return found[0]

    def events(self, job_id: int, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        return self.run(lease.events(job_id, after, limit))

    def logs(self, job_id: int, after: int = 0, limit: int = 1000) -> list[LogLine]:
        return self.run(lease.logs(job_id, after, limit))

    def db_clock(self) -> datetime:
        return self.run(lease.db_clock())


class AsyncBroker(_Base):
    """The asyncio twin of `Broker`: same statements, awaited."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        schema: str = DEFAULT_SCHEMA,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        super().__init__(schema, lease_ttl)
        self.pool = pool
        self._waiters: waiting.Waiters | None = None
        self._log_watch: follow.LogWatch | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> Self:
        """Open a pool of autocommit connections to `url`.
        Raises DatabaseUnavailable if no connection succeeds within `connect_timeout` s."""
        pool = executor.open_async_pool(url, min_size=min_size, max_size=max_size)
        await pool.open()
        try:
            await pool.wait(timeout=connect_timeout)
        except PoolTimeout:
            await pool.close()
            raise DatabaseUnavailable(_unreachable(url, connect_timeout)) from None
        return cls(pool, schema=schema, lease_ttl=lease_ttl)

    async def close(self) -> None:
        if self._waiters is not None:
            await self._waiters.close()
        if self._log_watch is not None:
            await self._log_watch.close()
        await self.pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(self, stmt: Statement[T], conn: psycopg.AsyncConnection[Any] | None = None) -> T:
        """Execute one statement on `conn` (caller's transaction) or a pooled connection."""
        if conn is not None:
            return await executor.arun(conn, stmt, self.schema)
        async with self.pool.connection() as pooled:
            return await executor.arun(pooled, stmt, self.schema)

    async def enqueue(
        self,
        kind: str,
        args: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int = 0,
        run_at: datetime | None = None,
        delay: float | timedelta | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        idempotency_key: str | None = None,
        subject_key: str | None = None,
        tags: Sequence[str] = (),
        depends_on: Sequence[int] = (),
        group: str | None = None,
        concurrency_key: str | None = None,
        deadline: datetime | None = None,
        start_within: float | timedelta | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> Enqueued:
        """Enqueue one job. With `depends_on` (ids of existing jobs) it waits until they all
        succeed. The queue is chosen as by `Broker.enqueue`. Raises InvalidJobError (also
        for a depends_on id no job has) or IdempotencyConflict."""
        chosen = routing.resolve(kind, queue)
        spec = _spec(
            kind,
            args,
            queue=chosen,
            priority=priority,
            run_at=run_at,
            delay=delay,
            max_attempts=max_attempts,
            timeout=timeout,
            idempotency_key=idempotency_key,
            subject_key=subject_key,
            tags=tags,
            depends_on=depends_on,
            group=group,
            concurrency_key=concurrency_key,
            deadline=deadline,
            start_within=contract.seconds(start_within, "start_within"),
        )
        if chosen is None:
            routed = await self.run(routing.enqueue_routed([spec], [True]), conn)
            routing.report(routed)
            return routed[0]
        return (await self.run(lease.enqueue_many([spec]), conn))[0]

    async def enqueue_many(
        self,
        specs: Iterable[JobSpec],
        conn: psycopg.AsyncConnection[Any] | None = None,
        *,
        idempotency_scope: str | None = None,
    ) -> list[Enqueued]:
        """Enqueue many jobs atomically (all or none); results in input order."""
        batch = list(specs)
        if not copy.copy_eligible(batch):
            return await self.run(lease.enqueue_many(batch, idempotency_scope), conn)
        if conn is not None:
            return await self._copy_enqueue(batch, conn)
        async with self.pool.connection() as pooled:
            return await self._copy_enqueue(batch, pooled)

    async def _copy_enqueue(
        self, batch: list[JobSpec], conn: psycopg.AsyncConnection[Any]
    ) -> list[Enqueued]:
        steps = copy.copy_enqueue(batch, self.settings.jobs_channel)
        if conn.autocommit:
            async with conn.transaction():
                return await executor.arun_steps(conn, steps, self.schema)
        return await executor.arun_steps(conn, steps, self.schema)

    async def claim(
        self, queues: Sequence[str], limit: int, worker_id: str, lease_ttl: float | None = None
    ) -> list[Lease]:
        claimed = await self.run(lease.claim(queues, limit, worker_id, lease_ttl or self.lease_ttl))
        runnable, unreadable = lease.split_unreadable(claimed)
        if unreadable:
            await self.fail_many(unreadable)
        return runnable

    async def heartbeat(
        self, leases: Sequence[H], lease_ttl: float | None = None
    ) -> HeartbeatOutcome[H]:
        if not leases:
            return HeartbeatOutcome([], [], [])
        return await self.run(lease.heartbeat(leases, lease_ttl or self.lease_ttl))

    async def complete(self, held: Held, result: Any = None) -> None:
        lease.raise_if_lost(await self.complete_many([(held, result)]), "complete")

    async def finish_many(self, rows: Sequence[lease.Finish]) -> list[WriteOutcome]:
        return await self.run(lease.finish(rows, self.settings.jobs_channel)) if rows else []

    async def complete_many(self, done: Sequence[tuple[Held, Any]]) -> list[WriteOutcome]:
        return await self.finish_many([lease.completed(h, r) for h, r in done])

    async def fail(
        self,
        held: Held,
        error: str,
        *,
        retryable: bool = True,
        delay: float | None = None,
    ) -> str:
        outcomes = await self.fail_many([(held, Failure(error, retryable, delay))])
        lease.raise_if_lost(outcomes, "fail")
        return outcomes[0].state or ""

    async def fail_many(self, failed: Sequence[tuple[Held, Failure]]) -> list[WriteOutcome]:
        return await self.finish_many([lease.failed(h, f) for h, f in failed])

    async def cancel_ack_many(self, cancelled: Sequence[tuple[Held, str]]) -> list[WriteOutcome]:
        return await self.finish_many([lease.cancel_acked(h, r) for h, r in cancelled])

    async def release_many(self, leases: Sequence[Held]) -> list[WriteOutcome]:
        return await self.finish_many([lease.released(h) for h in leases])

    async def append_logs(self, lines: Sequence[tuple[Held, str]]) -> int:
        return await self.run(lease.append_logs(lines)) if lines else 0

    async def reap(self, limit: int = lease.DEFAULT_REAP_LIMIT) -> list[Reaped]:
        return await self.run(lease.reap(limit))

    async def cancel(self, job_id: int) -> str:
        return await self.run(lease.cancel(job_id))

    async def retry(self, job_id: int) -> str:
        return await self.run(lease.retry(job_id))

    async def wait(self, job_id: int, timeout: float) -> Job:
        """The job once it is terminal, or as it is after `timeout` seconds. Every wait of
        this client shares one LISTEN connection (broker.waiting.Waiters). Raises
        JobNotFound."""
        _check_wait(timeout)
        job = await self.get_job(job_id)
        if job.state in TERMINAL_STATES:
            return job
        if self._waiters is None:
            self._waiters = waiting.Waiters(
                self._listen_connection, self.run, self.settings, sweep=self.wait_sweep
            )
        await self._waiters.wait(job_id, timeout)
        return await self.get_job(job_id)

    def log_watch(self) -> follow.LogWatch:
        """The LISTEN connection that wakes this client's log followers
        (broker.follow.follow_logs), opened on first use and closed with the client."""
        if self._log_watch is None:
            self._log_watch = follow.LogWatch(self._listen_connection, self.settings)
        return self._log_watch

    async def _listen_connection(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(
            _url_of(self.pool), autocommit=True, application_name="broker waiters"
        )
        executor.configure(conn)
        return conn

    async def get_job(self, job_id: int) -> Job:
        found = await self.run(lease.get_jobs([job_id]))
        if not found:
            raise JobNotFound(job_id)
        return found[0]

    async def events(self, job_id: int, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        return await self.run(lease.events(job_id, after, limit))

    async def logs(self, job_id: int, after: int = 0, limit: int = 1000) -> list[LogLine]:
        return await self.run(lease.logs(job_id, after, limit))

    async def db_clock(self) -> datetime:
        return await self.run(lease.db_clock())
