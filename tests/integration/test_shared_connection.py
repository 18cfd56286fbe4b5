"""The worker's connections against a real PostgreSQL (broker/worker/_conn.py, decision
025): services take turns on the shared connection, one service's failure or cancellation
costs the others only a reconnect, a transaction runs alone on it, and the heartbeat
connection keeps every lease alive while a statement on the shared one waits on a lock."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Generator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from broker import Broker
from broker._queries import queries
from broker.config import Settings
from broker.errors import DatabaseUnavailable
from broker.lease import Statement
from broker.pruner import PrunerConfig
from broker.task import task
from broker.worker import Worker, WorkerConfig
from broker.worker._conn import Connection
from broker.worker.scheduler import SchedulerConfig

SLEEP = "test_shared_sleep"
QUEUE = "shared-connection"
Row = tuple[int, datetime, datetime]

gates: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def sleep_query(monkeypatch: pytest.MonkeyPatch) -> None:
    # A statement of the test's own, run through the connection like any broker statement.
    monkeypatch.setitem(
        queries("broker"),
        SLEEP,
        "SELECT pg_backend_pid(), clock_timestamp(), now(), pg_sleep(%(s)s)",
    )


def sleep(seconds: float) -> Statement[Row]:
    """(backend pid, clock_timestamp() before the sleep, now()) after sleeping `seconds`."""
    return Statement(SLEEP, {"s": seconds}, lambda rows: tuple(rows[0][:3]), prepare=False)  # type: ignore[arg-type,return-value]


def sessions(url: str, application_name: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND datname = current_database()",
            [application_name],
        ).fetchone()
        assert row is not None
        return int(row[0])


def test_services_take_turns_on_one_connection(db_url: str) -> None:
    async def main() -> list[Row]:
        conn = Connection(db_url, "broker", "work")
        try:
            rows = await asyncio.gather(*(conn.run(sleep(0.1)) for _ in range(5)))
            assert await asyncio.to_thread(sessions, db_url, "broker work") == 1
            assert conn.opened == 1
            return rows
        finally:
            await conn.close()

    rows = asyncio.run(main())
    assert len({pid for pid, _, _ in rows}) == 1
    # One at a time, in the order they asked.
    starts = [started for _, started, _ in rows]
    assert starts == sorted(starts)
    assert all((b - a).total_seconds() >= 0.1 for a, b in itertools.pairwise(starts))


def test_a_cancelled_statement_costs_the_others_only_a_reconnect(db_url: str) -> None:
    async def main() -> tuple[int, Row, Row, int]:
        conn = Connection(db_url, "broker", "work")
        try:
            first, _, _ = await conn.run(sleep(0))
            slow = asyncio.create_task(conn.run(sleep(30)))
            queued = asyncio.create_task(conn.run(sleep(0)))
            await asyncio.sleep(0.3)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            after = await asyncio.wait_for(queued, 5)
            again = await conn.run(sleep(0))
            return first, after, again, conn.opened
        finally:
            await conn.close()

    first, after, again, opened = asyncio.run(main())
    # The cancelled statement's connection was never handed on: the next one reopened.
    assert after[0] != first and again[0] == after[0]
    assert opened == 2


def test_a_broken_connection_fails_only_the_statement_on_it(db_url: str) -> None:
    async def main() -> tuple[int, Row, int]:
        conn = Connection(db_url, "broker", "work")
        try:
            first, _, _ = await conn.run(sleep(0))
            slow = asyncio.create_task(conn.run(sleep(30)))
            queued = asyncio.create_task(conn.run(sleep(0)))
            await asyncio.sleep(0.3)
            with psycopg.connect(db_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [first])
            with pytest.raises(DatabaseUnavailable, match=r"^work: "):
                await asyncio.wait_for(slow, 5)
            after = await asyncio.wait_for(queued, 5)
            return first, after, conn.opened
        finally:
            await conn.close()

    first, after, opened = asyncio.run(main())
    assert after[0] != first
    assert opened == 2


def test_a_transaction_runs_alone_on_the_shared_connection(db_url: str) -> None:
    def steps() -> Generator[Statement[Row], Row, tuple[Row, Row]]:
        one = yield sleep(0.3)
        two = yield sleep(0)
        return one, two

    async def main() -> tuple[tuple[Row, Row], Row]:
        conn = Connection(db_url, "broker", "work")
        try:
            atomic = asyncio.create_task(conn.atomic(steps()))
            await asyncio.sleep(0.1)
            other = await conn.run(sleep(0))
            return await atomic, other
        finally:
            await conn.close()

    (one, two), other = asyncio.run(main())
    assert one[2] == two[2], "both steps ran in one transaction (one now())"
    # The statement asked for during the transaction ran after its last step.
    assert other[1] > two[1]


def test_a_transaction_cancelled_mid_statement_is_not_handed_on(db_url: str) -> None:
    # The scheduler's pass cancelled at shutdown while its statement runs: the
    # cancellation reaches the caller (not swallowed as a failed rollback), and the next
    # statement runs on a fresh connection, never inside the abandoned transaction.
    def steps() -> Generator[Statement[Row], Row, Row]:
        return (yield sleep(30))

    async def main() -> tuple[int, Row, int]:
        conn = Connection(db_url, "broker", "work")
        try:
            first, _, _ = await conn.run(sleep(0))
            atomic = asyncio.create_task(conn.atomic(steps()))
            queued = asyncio.create_task(conn.run(sleep(0)))
            await asyncio.sleep(0.3)
            atomic.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(atomic, 5)
            after = await asyncio.wait_for(queued, 5)
            return first, after, conn.opened
        finally:
            await conn.close()

    first, after, opened = asyncio.run(main())
    assert after[0] != first
    assert opened == 2


# --- the lease connection (claims, heartbeats) is never held up by the work one --------


@task("shared_connection.slow")
async def slow() -> str:
    await gates["slow"].wait()
    return "slow"


@task("shared_connection.quick")
async def quick() -> str:
    await gates["quick"].wait()
    return "quick"


async def _until(condition: Any, timeout: float = 30.0) -> Any:
    for _ in range(int(timeout / 0.05)):
        found = await asyncio.to_thread(condition)
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_heartbeats_keep_leases_while_the_shared_connection_waits_on_a_lock(
    db_url: str, broker: Broker, tmp_path: Path
) -> None:
    ttl = 1.5
    slow_id = broker.enqueue("shared_connection.slow", queue=QUEUE).id
    quick_id = broker.enqueue("shared_connection.quick", queue=QUEUE).id
    config = WorkerConfig(
        database_url=db_url,
        queues=(QUEUE,),
        concurrency=2,
        settings=Settings(database_url=db_url, home=tmp_path, lease_ttl=ttl),
        poll_interval=0.2,
        pruner=PrunerConfig(interval=0),
        scheduler=SchedulerConfig(enabled=False),
    )
    worker = Worker(config)

    def running() -> bool:
        with psycopg.connect(db_url, autocommit=True) as c:
            row = c.execute(
                "SELECT count(*) FROM broker.jobs WHERE state = 'running' AND id = ANY(%s)",
                [[slow_id, quick_id]],
            ).fetchone()
            return row is not None and row[0] == 2

    def writer_waits_on_the_lock() -> bool:
        with psycopg.connect(db_url, autocommit=True) as c:
            row = c.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE application_name = %s",
                [f"broker work {worker.worker_id}"],
            ).fetchone()
            return row is not None and row[0] == "Lock"

    async def main() -> list[tuple[float, float]]:
        gates["slow"], gates["quick"] = asyncio.Event(), asyncio.Event()
        handle = asyncio.create_task(worker.run())
        leases: list[tuple[float, float]] = []
        try:
            await _until(running)
            async with await psycopg.AsyncConnection.connect(db_url) as locker:
                # The quick job's row, locked by another session: its completion (on the
                # shared connection) waits for the lock, holding the connection meanwhile.
                await locker.execute(
                    "SELECT 1 FROM broker.jobs WHERE id = %s FOR UPDATE", [quick_id]
                )
                gates["quick"].set()
                await _until(writer_waits_on_the_lock)
                async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as watch:
                    for _ in range(int(2.5 * ttl / 0.1)):
                        cur = await watch.execute(
                            "SELECT extract(epoch FROM lease_expires_at - now()),"
                            " extract(epoch FROM lease_expires_at)"
                            " FROM broker.jobs WHERE id = %s",
                            [slow_id],
                        )
                        row = await cur.fetchone()
                        assert row is not None and row[0] is not None
                        leases.append((float(row[0]), float(row[1])))
                        await asyncio.sleep(0.1)
                assert await asyncio.to_thread(writer_waits_on_the_lock), "the lock was not held"
                await locker.rollback()
            gates["slow"].set()
            await _until(
                lambda: all(broker.get_job(i).state == "succeeded" for i in (slow_id, quick_id))
            )
            return leases
        finally:
            worker.stop()
            gates["slow"].set()
            gates["quick"].set()
            await asyncio.wait_for(handle, 30)

    leases = asyncio.run(main())
    # The slow job's lease never ran out, and was extended again and again meanwhile.
    assert min(left for left, _ in leases) > 0, leases
    assert len({expires for _, expires in leases}) >= 3, leases
    job = broker.get_job(slow_id)
    assert (job.attempts, job.lease_epoch) == (1, 1)
    events = [e.event for e in broker.events(slow_id)]
    assert "lease_expired" not in events and "stale_write_rejected" not in events
