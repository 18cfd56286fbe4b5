"""Tasks the worker acceptance tests run: each records its runs in the test's database.

Loaded by real worker processes (`--tasks tasks_fixture`, with this directory on
PYTHONPATH). `worker_harness.RUNS_TABLE` is created by the tests; every run inserts a
row (job id, epoch, pid, start) and stamps its end, so tests can see what ran, where,
for how long, and whether a handler was stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from broker import Fail, JobContext, Retry, Snooze, task

# Few connections per worker process: the test server is shared with other test runs, and
# one connection per handler thread (x concurrency x processes) would exhaust it.
RECORD_CONNECTIONS = 3
_pool: ConnectionPool[Any] | None = None
_pool_lock = threading.Lock()


START = (
    "INSERT INTO public.test_runs (job_id, epoch, attempt, pid, worker_id, started)"
    " VALUES (%s, %s, %s, %s, %s, to_timestamp(%s)) RETURNING id"
)
FINISH = "UPDATE public.test_runs SET finished = to_timestamp(%s), outcome = %s WHERE id = %s"


def _connections() -> ConnectionPool[Any]:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ConnectionPool(
                os.environ["BROKER_DATABASE_URL"],
                min_size=1,
                max_size=RECORD_CONNECTIONS,
                kwargs={"autocommit": True},
                open=True,
            )
        return _pool


def _execute(query: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    with _connections().connection() as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description is not None else []


def _start(ctx: JobContext) -> int:
    [(run_id,)] = _execute(
        START, (ctx.id, ctx.epoch, ctx.attempt, os.getpid(), ctx.worker_id, time.time())
    )
    return int(run_id)


def _finish(run_id: int, outcome: str) -> None:
    _execute(FINISH, (time.time(), outcome, run_id))


@task("sleep")
def sleep(ctx: JobContext, seconds: float = 0.0) -> dict[str, Any]:
    """Sleep in a thread, recording start and end; stops early when cancelled."""
    run_id = _start(ctx)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not ctx.is_cancelled:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    _finish(run_id, "stopped" if ctx.is_cancelled else "done")
    return {"slept": seconds, "pid": os.getpid()}


@task("async_sleep")
async def async_sleep(ctx: JobContext, seconds: float = 0.0) -> str:
    """Sleep on the event loop; records `cancelled` when the worker stops it."""
    conn = await psycopg.AsyncConnection.connect(os.environ["BROKER_DATABASE_URL"], autocommit=True)
    try:
        cur = await conn.execute(
            START, (ctx.id, ctx.epoch, ctx.attempt, os.getpid(), ctx.worker_id, time.time())
        )
        row = await cur.fetchone()
        assert row is not None
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            await conn.execute(FINISH, (time.time(), f"cancelled:{ctx.cancel_reason}", row[0]))
            raise
        await conn.execute(FINISH, (time.time(), "done", row[0]))
        return "slept"
    finally:
        await conn.close()


@task("ignore_cancel")
async def ignore_cancel(ctx: JobContext, seconds: float = 120.0) -> str:
    """A handler that swallows every cancellation, for `seconds` (a bound, so a test
    that fails leaves no handler behind for long)."""
    _start(ctx)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.1)
    return "outlived"


@task("blocking_to_thread")
async def blocking_to_thread(ctx: JobContext, seconds: float = 120.0) -> str:
    """Blocks a thread of the loop's default executor (asyncio.to_thread) for `seconds`:
    cancelled, the handler ends, the thread does not."""
    _start(ctx)
    await asyncio.to_thread(time.sleep, seconds)
    return "slept"


@task("record")
def record(ctx: JobContext, work: float = 0.0) -> int:
    """Record one run (job id, epoch) and return the job id."""
    run_id = _start(ctx)
    if work:
        time.sleep(work)
    _finish(run_id, "done")
    return ctx.id


@task("noop")
async def noop() -> None:
    """Does nothing: for throughput benchmarks."""


@task("log_lines")
async def log_lines(ctx: JobContext, n: int = 3) -> int:
    for i in range(n):
        ctx.log(f"line {i}")
    return n


@task("await_cancel")
def await_cancel(ctx: JobContext, marker: str, seconds: float = 60.0) -> str:
    """Run until the worker stops the handler (or `seconds` pass), then write why it
    stopped into the file `marker`: proof that a cancel reached the handler itself."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not ctx.is_cancelled:
        time.sleep(0.02)
    with open(marker, "w") as out:
        out.write(ctx.cancel_reason or "not stopped")
    return "done"


@task("fail_final")
def fail_final() -> None:
    raise Fail("not retryable")


@task("retry_soon")
def retry_soon(ctx: JobContext) -> str:
    if ctx.attempt < 2:
        raise Retry(delay=0.1, reason="try again")
    return f"ok on attempt {ctx.attempt}"


@task("boom", retry=False)
def boom() -> None:
    raise RuntimeError("boom")


@task("value_error", retry=lambda attempt: 0.05)
def value_error() -> None:
    """Always fails the same way, retried quickly until the job's max_attempts."""
    raise ValueError("boom")


@task("capped", max_attempts=2, retry=lambda attempt: 0.1 * attempt)
def capped() -> None:
    """Always fails: the task's own max_attempts (2) ends it before the job's (20)."""
    raise RuntimeError("still broken")


@task("boom_capped", max_attempts=4, retry=lambda attempt: 0.05)
def boom_capped(ctx: JobContext) -> None:
    """Always fails, naming its attempt; the task's own max_attempts (4) ends it."""
    raise ValueError(f"boom on attempt {ctx.attempt}")


@task("retry_capped", max_attempts=2)
def retry_capped() -> None:
    """Always asks for a retry: the task's own max_attempts (2) still ends it."""
    raise Retry(delay=0.1, reason="asked to retry")


@task("unstorable_result")
def unstorable_result() -> dict[str, str]:
    """Returns text PostgreSQL cannot store (NUL)."""
    return {"text": "a\x00b"}


@task("unstorable_error", retry=False)
def unstorable_error(ctx: JobContext) -> None:
    """Logs and fails with text PostgreSQL cannot store (NUL, a lone surrogate)."""
    ctx.log("log \x00 line \udc80")
    raise RuntimeError("bad \x00 text \ud800")


DB_START = (
    "INSERT INTO public.test_runs (job_id, epoch, attempt, pid, worker_id, started)"
    " VALUES (%s, %s, %s, %s, %s, clock_timestamp()) RETURNING id"
)
DB_FINISH = "UPDATE public.test_runs SET finished = clock_timestamp(), outcome = %s WHERE id = %s"


@task("db_timed")
def db_timed(ctx: JobContext, seconds: float = 0.0) -> None:
    """Record start and end in database time (clock_timestamp()), for overlap checks that
    no host clock can skew."""
    [(run_id,)] = _execute(DB_START, (ctx.id, ctx.epoch, ctx.attempt, os.getpid(), ctx.worker_id))
    time.sleep(seconds)
    _execute(DB_FINISH, ("done", run_id))


@task("snooze_twice", max_snoozes=5)
def snooze_twice(ctx: JobContext) -> int:
    """Snoozes 0.3 s on its first two runs, then succeeds with the number of runs."""
    [(run_id,)] = _execute(DB_START, (ctx.id, ctx.epoch, ctx.attempt, os.getpid(), ctx.worker_id))
    [(runs,)] = _execute("SELECT count(*) FROM public.test_runs WHERE job_id = %s", (ctx.id,))
    _execute(DB_FINISH, ("snoozed" if runs < 3 else "done", run_id))
    if runs < 3:
        raise Snooze(0.3)
    return int(runs)


@task("snooze_forever", max_snoozes=2)
def snooze_forever() -> None:
    """Always snoozes: its third snooze fails it."""
    raise Snooze(0)
