"""The one way a Statement reaches the database, sync or async.

`configure(conn)` prepares a connection (the broker's JSON decoding), `run(conn, stmt)` /
`arun(conn, stmt)` execute one statement and decode its rows, and `drive` / `adrive` run
a multi-step sequence written once as a generator (the COPY enqueue, the pruner's
batches). Every database error is translated here, by broker.errors.translate, and every
statement is reported to the observers by its name (metrics and tracing hook in with
`observe`; callers never count anything themselves).

The pools the clients and the API open are built here too, so a connection is configured
the same way wherever it comes from.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from broker import spec as contract
from broker._queries import queries
from broker.config import DEFAULT_PREPARE_THRESHOLD, DEFAULT_SCHEMA
from broker.errors import translate
from broker.lease import Statement

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")

# (statement name, seconds it took, the exception it raised or None)
Observer = Callable[[str, float, BaseException | None], None]
_observers: list[Observer] = []


def observe(observer: Observer) -> Callable[[], None]:
    """Call `observer` after every statement any client or worker runs; returns a function
    that removes it again. Observers must be quick and must not raise."""
    _observers.append(observer)
    return lambda: _observers.remove(observer)


def configure(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Set up a connection the broker reads rows from: JSON decoded by the job contract's
    loader (a value nested too deep for Python reads as UnreadableJSON instead of failing
    the whole result)."""
    set_json_loads(contract.load_json, conn)


async def aconfigure(conn: psycopg.AsyncConnection[Any]) -> None:
    """`configure` in the shape an async pool's `configure=` callback takes."""
    configure(conn)


def open_pool(
    url: str,
    *,
    min_size: int,
    max_size: int,
    prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD,
) -> ConnectionPool[Any]:
    """An opened pool of configured autocommit connections (the sync client's).
    `prepare_threshold` is psycopg's (None: no server-side prepared statements, as a
    transaction pooler without their support needs)."""
    return ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, "prepare_threshold": prepare_threshold},
        configure=configure,
        open=True,
    )


def open_async_pool(
    url: str,
    *,
    min_size: int,
    max_size: int,
    timeout: float = 30.0,
    prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD,
) -> AsyncConnectionPool[Any]:
    """An unopened pool of configured autocommit connections (the async client's and the
    API's; open it with `await pool.open()` or `async with`). `timeout` bounds how long a
    caller waits for a connection; `prepare_threshold` as for `open_pool`."""
    return AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, "prepare_threshold": prepare_threshold},
        configure=aconfigure,
        open=False,
        timeout=timeout,
    )


@contextmanager
def _observed(name: str) -> Iterator[None]:
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        yield
    except (psycopg.Error, UnicodeEncodeError) as exc:
        translated = translate(exc)
        error = translated or exc
        if translated is not None:
            raise translated from exc
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        if _observers:
            elapsed = time.perf_counter() - started
            for observer in list(_observers):
                observer(name, elapsed, error)


def run(conn: psycopg.Connection[Any], stmt: Statement[T], schema: str = DEFAULT_SCHEMA) -> T:
    """Execute `stmt` on `conn` and decode its rows. Raises the broker's exceptions for
    errors it raises on purpose and for bad data (broker.errors.translate), psycopg's
    errors otherwise."""
    with _observed(stmt.query):
        rows = conn.execute(queries(schema)[stmt.query], stmt.params, prepare=stmt.prepare)
        return stmt.decode(rows.fetchall())


async def arun(
    conn: psycopg.AsyncConnection[Any], stmt: Statement[T], schema: str = DEFAULT_SCHEMA
) -> T:
    """`run` on an async connection."""
    with _observed(stmt.query):
        cur = await conn.execute(queries(schema)[stmt.query], stmt.params, prepare=stmt.prepare)
        return stmt.decode(await cur.fetchall())


@dataclass(frozen=True, slots=True)
class Copy:
    """One `COPY ... FROM STDIN (FORMAT BINARY)` step of a sequence: the named query, the
    column types and the rows."""

    query: str
    types: list[str]
    rows: list[tuple[Any, ...]]


Step = Statement[Any] | Copy
Steps = Generator[Step, Any, R]


def _copy(conn: psycopg.Connection[Any], step: Copy, schema: str) -> None:
    with _observed(step.query), conn.cursor() as cur, cur.copy(queries(schema)[step.query]) as cp:
        cp.set_types(step.types)
        for row in step.rows:
            cp.write_row(row)


async def _acopy(conn: psycopg.AsyncConnection[Any], step: Copy, schema: str) -> None:
    with _observed(step.query):
        async with conn.cursor() as cur, cur.copy(queries(schema)[step.query]) as cp:
            cp.set_types(step.types)
            for row in step.rows:
                await cp.write_row(row)


def drive(steps: Generator[S, Any, R], do: Callable[[S], Any]) -> R:
    """Run a sequence written as a generator: each yielded step goes to `do`, whose result
    is sent back; returns the generator's return value."""
    try:
        step = next(steps)
        while True:
            step = steps.send(do(step))
    except StopIteration as done:
        result: R = done.value
        return result


async def adrive(steps: Generator[S, Any, R], do: Callable[[S], Awaitable[Any]]) -> R:
    """`drive` with an async `do`."""
    try:
        step = next(steps)
        while True:
            step = steps.send(await do(step))
    except StopIteration as done:
        result: R = done.value
        return result


def run_steps(conn: psycopg.Connection[Any], steps: Steps[R], schema: str = DEFAULT_SCHEMA) -> R:
    """`drive` a sequence of statements and COPY steps on one connection."""

    def do(step: Step) -> Any:
        return _copy(conn, step, schema) if isinstance(step, Copy) else run(conn, step, schema)

    return drive(steps, do)


async def arun_steps(
    conn: psycopg.AsyncConnection[Any], steps: Steps[R], schema: str = DEFAULT_SCHEMA
) -> R:
    """`run_steps` on an async connection."""

    async def do(step: Step) -> Any:
        if isinstance(step, Copy):
            return await _acopy(conn, step, schema)
        return await arun(conn, step, schema)

    return await adrive(steps, do)
