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
from broker import follow, lease, routing, tracing, waiting
from broker import spec as contract
from broker.config import (
    DEFAULT_LEASE_TTL,
    DEFAULT_PREPARE_THRESHOLD,
    DEFAULT_SCHEMA,
    Settings,
    validate_schema,
)
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


def _target(url: str) -> str | None:
    """host:port/dbname of `url`, without the password; None for a malformed URL."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return None
    where = info.get("host") or "local socket"
    port = info.get("port")
    target = f"{where}:{port}" if port else str(where)
    return f"{target}/{info.get('dbname', '')}"


def _unreachable(url: str, timeout: float) -> str:
    """Where we tried to connect, without the password."""
    target = _target(url)
    if target is None:
        return f"cannot connect to PostgreSQL within {timeout:g} s (malformed database URL)"
    return f"cannot connect to PostgreSQL at {target} within {timeout:g} s"


# A refusal the server states (no such database, role or password) does not pass by
# waiting: once the pool has had this long without a connection, one direct attempt tells
# it from a server that is not up yet, so the caller hears the reason at once.
REFUSAL_CHECK_AFTER = 0.5
_FATAL = "FATAL:"
# FATAL answers that do pass: the server is starting, stopping or full.
_TRANSIENT = ("starting up", "shutting down", "recovery mode", "too many", "not yet accepting")


def _refusal(error: psycopg.OperationalError, url: str) -> DatabaseUnavailable | None:
    """`error` (from connecting to `url`) as the lasting refusal it states, else None."""
    text = " ".join(str(error).split())
    _, fatal, reason = text.partition(_FATAL)
    if not fatal or any(phrase in reason for phrase in _TRANSIENT):
        return None
    return DatabaseUnavailable(f"cannot connect to PostgreSQL at {_target(url)}: {reason.strip()}")


def _probe(url: str, timeout: float) -> DatabaseUnavailable | None:
    try:
        psycopg.connect(url, connect_timeout=max(1, int(timeout))).close()
    except psycopg.OperationalError as exc:
        return _refusal(exc, url)
    return None


async def _aprobe(url: str, timeout: float) -> DatabaseUnavailable | None:
    try:
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=max(1, int(timeout)))
    except psycopg.OperationalError as exc:
        return _refusal(exc, url)
    await conn.close()
    return None


def _wait_for(pool: ConnectionPool[Any], url: str, timeout: float) -> None:
    """Wait for `pool`'s first connection; else close it and raise DatabaseUnavailable,
    at once for a refusal the server states. (The first wait takes a connection and gives
    it back: pool.wait() closes the pool when it times out.)"""
    try:
        pool.putconn(pool.getconn(timeout=min(REFUSAL_CHECK_AFTER, timeout)))
    except PoolTimeout:
        refused = _probe(url, timeout)
        if refused is not None:
            pool.close()
            raise refused from None
    try:
        pool.wait(timeout=timeout)
    except PoolTimeout:
        raise DatabaseUnavailable(_unreachable(url, timeout)) from None


async def _await_for(pool: AsyncConnectionPool[Any], url: str, timeout: float) -> None:
    """_wait_for for the async pool."""
    try:
        await pool.putconn(await pool.getconn(timeout=min(REFUSAL_CHECK_AFTER, timeout)))
    except PoolTimeout:
        refused = await _aprobe(url, timeout)
        if refused is not None:
            await pool.close()
            raise refused from None
    try:
        await pool.wait(timeout=timeout)
    except PoolTimeout:
        raise DatabaseUnavailable(_unreachable(url, timeout)) from None


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


def _listen_target(
    pool: ConnectionPool[Any] | AsyncConnectionPool[Any], listen_url: str | None
) -> tuple[str, dict[str, Any]]:
    """Where a wait's LISTEN connection goes (`listen_url`, else the pool's connection
    string) and how it is opened (autocommit, the pool's prepare_threshold)."""
    conninfo = listen_url or pool.conninfo
    if not isinstance(conninfo, str):
        raise ConfigError("wait() needs a pool opened with a connection string")
    kwargs = pool.kwargs if isinstance(pool.kwargs, dict) else {}
    threshold = kwargs.get("prepare_threshold", DEFAULT_PREPARE_THRESHOLD)
    return conninfo, {"autocommit": True, "prepare_threshold": threshold}


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

    def __init__(self, schema: str, lease_ttl: float, listen_url: str | None) -> None:
        self.schema = validate_schema(schema)
        self.settings = Settings(schema=schema, lease_ttl=lease_ttl)
        self.lease_ttl = lease_ttl
        # Waits LISTEN here instead of on the pool's URL (a transaction pooler's).
        self.listen_url = listen_url


class Broker(_Base):
    """Synchronous client. Every method is one statement in its own transaction, except
    enqueue with `conn=`, which runs inside the caller's transaction."""

    def __init__(
        self,
        pool: ConnectionPool[Any],
        *,
        schema: str = DEFAULT_SCHEMA,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        listen_url: str | None = None,
    ) -> None:
        super().__init__(schema, lease_ttl, listen_url)
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
        listen_url: str | None = None,
        prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD,
    ) -> Self:
        """Open a pool of autocommit connections to `url`. Behind a transaction pooler,
        pass `listen_url` (a direct URL for waits' LISTEN) and `prepare_threshold=None`
        unless the pooler supports prepared statements (docs/scaling.md).
        Raises DatabaseUnavailable if no connection succeeds within `connect_timeout` s, and
        at once when the server refuses for good (no such database, role or password)."""
        pool = executor.open_pool(
            url, min_size=min_size, max_size=max_size, prepare_threshold=prepare_threshold
        )
        _wait_for(pool, url, connect_timeout)
        return cls(pool, schema=schema, lease_ttl=lease_ttl, listen_url=listen_url)

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
        meta: dict[str, Any] | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> Enqueued:
        """Enqueue one job. With `depends_on` (ids of existing jobs) it waits until they all
        succeed. With no `queue`, the job goes to its task's declared queue if this process
        registered the task (`declared_queue`), else to the queue live workers declare for
        the kind, else to `default` (broker.routing; the registry is read in the same
        statement, and its warnings are logged and returned in `Enqueued.warnings`).
        `meta` is carrier data for the run (string values or objects; broker.tracing adds
        the trace context).
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
            meta=meta if meta is not None else {},
        )
        with tracing.enqueue_span([spec]) as traced:
            stmt = routing.enqueue_one(traced[0], chosen is None, self.settings.jobs_channel)
            done = self.run(stmt, conn)
        routing.report([done])
        return done

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
        with tracing.enqueue_span(list(specs)) as batch:
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
        job = self.get_job(job_id)
        if job.state in TERMINAL_STATES:
            return job
        conninfo, options = _listen_target(self.pool, self.listen_url)
        with psycopg.connect(conninfo, **options) as conn:
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
        listen_url: str | None = None,
    ) -> None:
        super().__init__(schema, lease_ttl, listen_url)
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
        listen_url: str | None = None,
        prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD,
    ) -> Self:
        """Open a pool of autocommit connections to `url`. Behind a transaction pooler,
        pass `listen_url` (a direct URL for waits' LISTEN) and `prepare_threshold=None`
        unless the pooler supports prepared statements (docs/scaling.md).
        Raises DatabaseUnavailable if no connection succeeds within `connect_timeout` s, and
        at once when the server refuses for good (no such database, role or password)."""
        pool = executor.open_async_pool(
            url, min_size=min_size, max_size=max_size, prepare_threshold=prepare_threshold
        )
        await pool.open()
        await _await_for(pool, url, connect_timeout)
        return cls(pool, schema=schema, lease_ttl=lease_ttl, listen_url=listen_url)

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
        meta: dict[str, Any] | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> Enqueued:
        """Enqueue one job. With `depends_on` (ids of existing jobs) it waits until they all
        succeed. The queue is chosen as by `Broker.enqueue`. `meta` is carrier data for
        the run (see Broker.enqueue). Raises InvalidJobError (also
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
            meta=meta if meta is not None else {},
        )
        with tracing.enqueue_span([spec]) as traced:
            stmt = routing.enqueue_one(traced[0], chosen is None, self.settings.jobs_channel)
            done = await self.run(stmt, conn)
        routing.report([done])
        return done

    async def enqueue_many(
        self,
        specs: Iterable[JobSpec],
        conn: psycopg.AsyncConnection[Any] | None = None,
        *,
        idempotency_scope: str | None = None,
    ) -> list[Enqueued]:
        """Enqueue many jobs atomically (all or none); results in input order."""
        with tracing.enqueue_span(list(specs)) as batch:
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
        conninfo, options = _listen_target(self.pool, self.listen_url)
        conn = await psycopg.AsyncConnection.connect(
            conninfo, application_name="broker waiters", **options
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
