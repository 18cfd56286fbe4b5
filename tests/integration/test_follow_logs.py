"""Following a job's log (broker.follow): every line once, in commit order, woken by
NOTIFY, and NOTIFY only while somebody follows (issue 14, item 8)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest

from broker import AsyncBroker, Broker, JobNotFound, JobSpec, lease
from broker._queries import queries
from broker.follow import follow_logs
from broker.types import Lease

Conn = psycopg.Connection[Any]


def running(broker: Broker, n: int = 1) -> list[Lease]:
    broker.enqueue_many([JobSpec("k", queue="follow") for _ in range(n)])
    leases = broker.claim(["follow"], n, "w:1")
    assert len(leases) == n
    return leases


def lock_waiters(conn: Conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row[0])


def wait_until(check: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_one_jobs_appends_commit_in_id_order(broker: Broker, db_url: str, conn: Conn) -> None:
    [held] = running(broker)
    rendered = queries("broker")
    stmt_a = lease.append_logs([(held, "first")])
    with psycopg.connect(db_url) as tx_a:  # a transaction left open
        [(first_id,)] = tx_a.execute(rendered["log_append_many"], stmt_a.params).fetchall()
        second: list[int] = []
        appender = threading.Thread(
            target=lambda: second.append(broker.append_logs([(held, "second")]))
        )
        appender.start()
        # The second append waits for the first to commit before its line takes an id.
        wait_until(lambda: lock_waiters(conn) == 1)
        assert not second
        tx_a.commit()
    appender.join(10)
    assert second == [1]
    lines = broker.logs(held.job_id)
    assert [(line.line, line.id > first_id) for line in lines] == [
        ("first", False),
        ("second", True),
    ]


def test_a_line_committed_after_a_higher_id_is_delivered_once(db_url: str, broker: Broker) -> None:
    x, y = running(broker, 2)
    rendered = queries("broker")

    async def go() -> tuple[list[str], list[str]]:
        async with await AsyncBroker.connect(db_url, max_size=2) as client:
            seen_x: list[str] = []
            seen_y: list[str] = []

            async def collect(job_id: int, into: list[str]) -> None:
                async for line in follow_logs(client, job_id, poll=0.2):
                    into.append(f"{line.id}:{line.line}")

            followers = [
                asyncio.create_task(collect(x.job_id, seen_x)),
                asyncio.create_task(collect(y.job_id, seen_y)),
            ]
            with psycopg.connect(db_url) as tx_x:
                # x's line takes the lower id but commits after y's, which a follower
                # of y reads first.
                tx_x.execute(rendered["log_append_many"], lease.append_logs([(x, "late")]).params)
                await client.append_logs([(y, "early")])
                await asyncio.sleep(0.5)
                tx_x.commit()
            await asyncio.sleep(0.5)
            await client.complete_many([(x, None), (y, None)])
            await asyncio.wait_for(asyncio.gather(*followers), 10)
            return seen_x, seen_y

    seen_x, seen_y = asyncio.run(go())
    assert [s.split(":")[1] for s in seen_x] == ["late"]
    assert [s.split(":")[1] for s in seen_y] == ["early"]
    assert int(seen_x[0].split(":")[0]) < int(seen_y[0].split(":")[0])


def test_a_follower_is_woken_by_notify_not_by_its_poll(db_url: str, broker: Broker) -> None:
    [held] = running(broker)

    async def go() -> list[str]:
        async with await AsyncBroker.connect(db_url, max_size=2) as client:
            got: list[str] = []
            arrived = asyncio.Event()

            async def collect() -> None:
                # A fallback poll far longer than the test may take.
                async for line in follow_logs(client, held.job_id, poll=600):
                    got.append(line.line)
                    arrived.set()

            follower = asyncio.create_task(collect())
            while not client.log_watch().following:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # the follower has read nothing and waits
            await client.append_logs([(held, "prompt")])
            await asyncio.wait_for(arrived.wait(), 10)
            await client.complete_many([(held, None)])
            # The job's end wakes it too: it drains and returns.
            await asyncio.wait_for(follower, 10)
            return got

    assert asyncio.run(go()) == ["prompt"]
    assert broker.get_job(held.job_id).state == "succeeded"
    # The follower's registration is gone with it.
    with psycopg.connect(db_url) as check:
        assert check.execute("SELECT count(*) FROM broker.job_waiters").fetchone() == (0,)


def notified(listener: Conn, seconds: float = 0.5) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=seconds) if n.channel == "broker_logs"]


def test_appends_notify_only_while_somebody_follows(broker: Broker, db_url: str) -> None:
    [held] = running(broker)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(queries("broker")["logs_listen"])
        broker.append_logs([(held, "unwatched")])
        assert notified(listener) == []
        registered = broker.run(lease.wait_register([held.job_id], 60))
        broker.append_logs([(held, "watched"), (held, "twice")])
        assert notified(listener) == [str(held.job_id)]
        broker.run(lease.wait_unregister(registered))
        broker.append_logs([(held, "unwatched again")])
        assert notified(listener) == []


def test_resuming_after_an_id_gives_only_later_lines(db_url: str, broker: Broker) -> None:
    [held] = running(broker)
    broker.append_logs([(held, f"l{i}") for i in range(5)])
    broker.complete(held)
    lines = broker.logs(held.job_id)

    async def go(after: int) -> list[str]:
        async with await AsyncBroker.connect(db_url, max_size=1) as client:
            return [line.line async for line in follow_logs(client, held.job_id, after)]

    assert asyncio.run(go(0)) == ["l0", "l1", "l2", "l3", "l4"]
    assert asyncio.run(go(lines[2].id)) == ["l3", "l4"]


def test_following_a_missing_job_raises(db_url: str) -> None:
    async def go() -> None:
        async with await AsyncBroker.connect(db_url, max_size=1) as client:
            async for _ in follow_logs(client, 10**12):
                pass

    with pytest.raises(JobNotFound):
        asyncio.run(go())
