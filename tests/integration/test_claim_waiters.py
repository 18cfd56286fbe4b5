"""Enqueues notify a queue only while a worker waits on it (decision 028), and no
wake-up is lost for it: the registration in claim_waiters, the enqueue's shared lock,
the worker's settled check, and a real worker woken with its poll an hour away."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from broker import AsyncBroker, Broker, JobSpec, lease
from broker.config import Settings
from broker.pruner import PrunerConfig
from broker.task import task
from broker.worker import Worker, WorkerConfig
from broker.worker.scheduler import SchedulerConfig
from tests.waiters import wait_on

Conn = psycopg.Connection[tuple[Any, ...]]
QUEUE = "waited"
NOOP = "test_claim_waiters.noop"
NOTIFY_WAIT = 15.0  # only reached on failure


def heard(listener: Conn, conn: Conn) -> list[str]:
    """The queues notified so far: a sentinel NOTIFY committed last arrives last."""
    conn.execute("NOTIFY broker_jobs, '__sentinel__'")
    seen = []
    for note in listener.notifies(timeout=NOTIFY_WAIT):
        if note.payload == "__sentinel__":
            return seen
        seen.append(note.payload)
    raise AssertionError("the sentinel notification never came")


@pytest.fixture
def listener(db_url: str) -> Any:
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("LISTEN broker_jobs")
        yield c


def settled(conn: Conn, *queues: str) -> bool:
    row = conn.execute("SELECT broker._claim_waiters_settled(%s)", [list(queues)]).fetchone()
    assert row is not None
    return bool(row[0])


def test_no_worker_waits_no_notify(broker: Broker, listener: Conn, conn: Conn) -> None:
    broker.enqueue("t", queue=QUEUE)  # one plain job: job_enqueue_one
    broker.enqueue("t", queue=QUEUE, idempotency_key="k")  # enqueue_many()
    broker.enqueue_many([JobSpec("t", queue=QUEUE) for _ in range(50)])  # COPY
    conn.execute("SELECT broker.enqueue('t', queue => %s)", [QUEUE])  # SQL
    assert heard(listener, conn) == []
    # A registration that expired (its worker was killed) wakes nobody either.
    conn.execute(
        "INSERT INTO broker.claim_waiters VALUES (%s, 'dead:1', now() - interval '1 s')", [QUEUE]
    )
    broker.enqueue("t", queue=QUEUE)
    assert heard(listener, conn) == []
    assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == (54,)


def test_a_waiting_worker_is_notified_by_every_door(
    broker: Broker, listener: Conn, conn: Conn
) -> None:
    wait_on(conn, QUEUE)
    broker.enqueue("t", queue=QUEUE)
    broker.enqueue("t", queue=QUEUE, idempotency_key="k")
    broker.enqueue_many([JobSpec("t", queue=QUEUE) for _ in range(50)])
    conn.execute("SELECT broker.enqueue('t', queue => %s)", [QUEUE])
    broker.enqueue("t", queue="other")  # nobody waits on this one
    broker.enqueue("t", queue=QUEUE, delay=3600)  # not runnable now
    assert heard(listener, conn) == [QUEUE] * 4
    # The finish statement: a released job is runnable at once.
    [held] = broker.claim([QUEUE], 1, "w:1")
    broker.run(lease.finish([lease.released(held)], "broker_jobs"))
    assert heard(listener, conn) == [QUEUE]


def test_leaving_stops_the_notifications(broker: Broker, listener: Conn, conn: Conn) -> None:
    from broker.worker import wakeups

    wait_on(conn, QUEUE, worker_id="w:1")
    wait_on(conn, QUEUE, worker_id="w:2")
    assert broker.run(wakeups.leave("w:1", [QUEUE])) == [QUEUE]
    broker.enqueue("t", queue=QUEUE)
    assert heard(listener, conn) == [QUEUE]  # w:2 still waits
    broker.run(wakeups.leave("w:2", [QUEUE]))
    broker.enqueue("t", queue=QUEUE)
    assert heard(listener, conn) == []


def test_an_enqueue_in_flight_keeps_the_worker_from_sleeping(
    broker: Broker, db_url: str, listener: Conn, conn: Conn
) -> None:
    # The race the settled check closes: an enqueue reads the registrations before the
    # worker's is committed, so it will not notify, and commits after the worker's claim.
    with psycopg.connect(db_url) as caller:
        job = broker.enqueue("t", queue=QUEUE, conn=caller)  # holds the queue's lock shared
        wait_on(conn, QUEUE, worker_id="w:1")  # the worker registers...
        assert not settled(conn, QUEUE)  # ...and may not sleep yet
        assert settled(conn, "another queue")  # other queues are not held up
        assert broker.claim([QUEUE], 10, "w:1") == []  # not committed yet
        caller.commit()
    assert heard(listener, conn) == []  # the enqueue saw nobody waiting
    assert settled(conn, QUEUE)
    [held] = broker.claim([QUEUE], 10, "w:1")  # the claim after the check finds the job
    assert held.job_id == job.id


def test_an_enqueue_after_the_registration_notifies(
    broker: Broker, db_url: str, listener: Conn, conn: Conn
) -> None:
    wait_on(conn, QUEUE, worker_id="w:1")
    assert settled(conn, QUEUE)
    with psycopg.connect(db_url) as caller:
        broker.enqueue("t", queue=QUEUE, conn=caller)
        assert heard(listener, conn) == []  # at commit, not before
        caller.commit()
    assert heard(listener, conn) == [QUEUE]


def test_a_repeatable_read_enqueue_always_notifies(
    broker: Broker, db_url: str, listener: Conn, conn: Conn
) -> None:
    # Its snapshot may predate a registration, so it cannot trust the absence of one.
    with psycopg.connect(db_url) as caller:
        caller.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        broker.enqueue("t", queue=QUEUE, conn=caller)
        caller.commit()
    assert heard(listener, conn) == [QUEUE]


@task(NOOP)
async def noop(n: int) -> int:
    return n


def test_a_real_worker_is_woken_with_its_poll_an_hour_away(
    db_url: str, tmp_path: Path, conn: Conn
) -> None:
    # Only notifications can start these jobs in time. Singles (the worker waits between
    # them), bursts that fill its slots (it leaves the waiters at a full claim and must
    # register again), and enqueues racing its idle moments from several clients.
    config = WorkerConfig(
        database_url=db_url,
        queues=(QUEUE,),
        concurrency=4,
        settings=Settings(database_url=db_url, home=tmp_path),
        poll_interval=3600.0,
        pruner=PrunerConfig(interval=0),
        scheduler=SchedulerConfig(enabled=False),
    )
    worker = Worker(config)

    async def finished(client: AsyncBroker, ids: list[int], within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while True:
            states = {(await client.get_job(i)).state for i in ids}
            if states == {"succeeded"}:
                return
            assert time.monotonic() < deadline, f"not woken: states {states}"
            await asyncio.sleep(0.01)

    async def main() -> int:
        handle = asyncio.create_task(worker.run())
        try:
            async with await AsyncBroker.connect(db_url, max_size=6) as client:
                ids = []
                for i in range(20):
                    ids.append((await client.enqueue(NOOP, {"n": i}, queue=QUEUE)).id)
                    await finished(client, ids[-1:])
                for _ in range(5):
                    burst = await client.enqueue_many(
                        [JobSpec(NOOP, {"n": i}, queue=QUEUE) for i in range(12)]
                    )
                    await finished(client, [j.id for j in burst])
                    one = await client.enqueue(NOOP, {"n": 0}, queue=QUEUE)
                    await finished(client, [one.id])

                async def client_loop(seed: int) -> list[int]:
                    mine = []
                    for i in range(40):
                        mine.append((await client.enqueue(NOOP, {"n": i}, queue=QUEUE)).id)
                        await asyncio.sleep(((seed * 7 + i * 3) % 5) / 1000)
                    return mine

                racing = await asyncio.gather(*(client_loop(s) for s in range(4)))
                await finished(client, [i for ids in racing for i in ids])
            row = conn.execute(
                "SELECT count(*) FROM broker.claim_waiters WHERE worker_id = %s",
                [worker.worker_id],
            ).fetchone()
            return int(row[0]) if row else -1
        finally:
            worker.stop()
            await asyncio.wait_for(handle, 30)

    assert asyncio.run(main()) == 1  # idle at the end: it waits on its queue
    # A stopped worker leaves: nobody is notified for it any more.
    assert conn.execute("SELECT count(*) FROM broker.claim_waiters").fetchone() == (0,)
