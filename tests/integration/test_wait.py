"""Waiting for a job's outcome: Broker.wait, AsyncBroker.wait and GET /v1/jobs/{id}?wait=,
woken by the `<schema>_done` NOTIFY a terminal transition of a job somebody waits for
sends (migrations 0011, 0012).

The waits here use a sweep far longer than their timeout, so only a notification can
end them early: a wait that returns the finished job proves the NOTIFY woke it."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest

from broker import AsyncBroker, Broker, JobNotFound, JobSpec, lease
from broker.types import Job

Conn = psycopg.Connection[tuple[Any, ...]]
NO_SWEEP = 600.0  # longer than any wait below


def waiting_in_thread(
    broker: Broker, job_id: int, timeout: float
) -> tuple[threading.Thread, list[Job]]:
    got: list[Job] = []
    thread = threading.Thread(target=lambda: got.append(broker.wait(job_id, timeout)))
    thread.start()
    return thread, got


def listening(conn: Conn, count: int = 1) -> None:
    """Until `count` waits have registered (broker.job_waiters), i.e. listen and wait."""
    for _ in range(200):
        row = conn.execute("SELECT count(*) FROM broker.job_waiters").fetchone()
        conn.commit()
        if row and row[0] >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{count} waits never registered")


def test_a_finished_job_is_returned_at_once(broker: Broker) -> None:
    job = broker.enqueue("k")
    [held] = broker.claim(["default"], 1, "w:1")
    broker.complete_many([(held, {"ok": 1})])
    t0 = time.monotonic()
    assert broker.wait(job.id, 30).state == "succeeded"
    assert time.monotonic() - t0 < 5


def test_a_wait_that_ends_returns_the_job_as_it_is(broker: Broker) -> None:
    job = broker.enqueue("k")
    assert broker.wait(job.id, 0.3).state == "queued"
    assert broker.wait(job.id, 0).state == "queued"


def test_completion_wakes_a_sync_wait(broker: Broker, conn: Conn) -> None:
    broker.wait_sweep = NO_SWEEP
    job = broker.enqueue("k")
    thread, got = waiting_in_thread(broker, job.id, 30)
    listening(conn)
    [held] = broker.claim(["default"], 1, "w:1")
    broker.complete_many([(held, "done")])
    thread.join(30)
    assert [(j.state, j.result) for j in got] == [("succeeded", "done")]


@pytest.mark.parametrize("ending", ["reaper", "cancel", "sql"])
def test_every_writer_wakes_a_wait(broker: Broker, conn: Conn, ending: str) -> None:
    broker.wait_sweep = NO_SWEEP
    job = broker.enqueue_many([JobSpec("k", max_attempts=1)])[0]
    thread, got = waiting_in_thread(broker, job.id, 30)
    listening(conn)
    if ending == "reaper":
        broker.claim(["default"], 1, "w:1", lease_ttl=1)
        conn.execute(
            "UPDATE broker.jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
            [job.id],
        )
        conn.commit()
        assert [r.state for r in broker.reap()] == ["failed"]
    elif ending == "cancel":
        assert broker.cancel(job.id) == "cancelled"
    else:  # an operator's own UPDATE
        conn.execute(
            "UPDATE broker.jobs SET state = 'cancelled', finished_at = now() WHERE id = %s",
            [job.id],
        )
        conn.commit()
    thread.join(30)
    assert len(got) == 1 and got[0].state in {"failed", "cancelled"}


def test_a_lost_notification_is_made_good_by_the_sweep(broker: Broker, conn: Conn) -> None:
    broker.wait_sweep = 0.2
    job = broker.enqueue("k")
    thread, got = waiting_in_thread(broker, job.id, 30)
    listening(conn)
    [held] = broker.claim(["default"], 1, "w:1")
    # Triggers off for this session: the job ends without its notification.
    conn.execute("SET session_replication_role = replica")
    conn.execute(
        "UPDATE broker.jobs SET state = 'succeeded', finished_at = now(),"
        " lease_expires_at = NULL WHERE id = %s",
        [held.job_id],
    )
    conn.commit()
    conn.execute("SET session_replication_role = origin")
    conn.commit()
    thread.join(30)
    assert [j.state for j in got] == ["succeeded"]


def test_wait_refuses_a_bad_timeout_and_an_unknown_job(broker: Broker) -> None:
    for bad in (-1, float("nan"), float("inf"), 86_401):
        with pytest.raises(ValueError, match="wait timeout"):
            broker.wait(1, bad)
    with pytest.raises(JobNotFound):
        broker.wait(10**12, 0.1)


def test_async_waits_share_one_connection(db_url: str, conn: Conn) -> None:
    async def go() -> list[str]:
        async with await AsyncBroker.connect(db_url, min_size=1, max_size=2) as client:
            client.wait_sweep = NO_SWEEP
            jobs = await client.enqueue_many([JobSpec("k") for _ in range(50)])
            waits = [asyncio.create_task(client.wait(j.id, 30)) for j in jobs]
            await asyncio.sleep(0.3)
            # This test's database only (other suites may share the server). The LISTEN
            # probe's short second connection (broker._listen_probe) may still be open for
            # a moment; once it is gone, one connection serves all fifty.
            for _ in range(100):
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = 'broker waiters'"
                ).fetchone()
                conn.commit()  # pg_stat_activity is read once per transaction
                if row == (1,):
                    break
                await asyncio.sleep(0.05)
            assert row == (1,), "fifty waits, one LISTEN connection"
            held = await client.claim(["default"], 50, "w:1")
            await client.finish_many([lease.completed(h, h.job_id) for h in held])
            done = await asyncio.wait_for(asyncio.gather(*waits), 30)
            return [j.state for j in done]

    assert asyncio.run(go()) == ["succeeded"] * 50


def notified(listener: Conn, seconds: float = 0.5) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=seconds)]


def test_only_waited_for_jobs_are_notified_and_nothing_while_nobody_waits(
    broker: Broker, conn: Conn, db_url: str
) -> None:
    broker.wait_sweep = NO_SWEEP
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN broker_done")
        quiet, waited = broker.enqueue("k"), broker.enqueue("k")
        for held in broker.claim(["default"], 1, "w:1"):
            broker.complete(held)  # nobody waits: no NOTIFY at all
        assert notified(listener) == []
        other = broker.enqueue("k")
        thread, got = waiting_in_thread(broker, waited.id, 30)
        listening(conn)
        held = {h.job_id: h for h in broker.claim(["default"], 2, "w:1")}
        assert set(held) == {waited.id, other.id}
        broker.complete_many([(h, None) for h in held.values()])
        thread.join(30)
        assert [j.state for j in got] == ["succeeded"]
        assert notified(listener) == [str(waited.id)]  # only the waited-for id
        assert quiet.id not in held
    row = conn.execute("SELECT count(*) FROM broker.job_waiters").fetchone()
    assert row == (0,), "a wait removes its registration"


def test_a_wait_registered_while_its_job_is_being_finished_sees_the_end(
    broker: Broker, conn: Conn, db_url: str
) -> None:
    """The finish's trigger ran before the registration existed, so it sends nothing;
    the wait must find the row locked and read it again after the commit."""
    broker.wait_sweep = NO_SWEEP
    job = broker.enqueue("k")
    [held] = broker.claim(["default"], 1, "w:1")
    with psycopg.connect(db_url) as finisher:
        finisher.execute(
            "UPDATE broker.jobs SET state = 'succeeded', finished_at = now(),"
            " lease_expires_at = NULL WHERE id = %s",
            [held.job_id],
        )  # trigger done, no waiter seen; the row stays locked until the commit
        thread, got = waiting_in_thread(broker, job.id, 30)
        listening(conn)
        time.sleep(0.2)  # the wait has read the row (locked) at least once
        assert got == []
        finisher.commit()
    thread.join(10)
    assert [j.state for j in got] == ["succeeded"]


def test_async_wait_registered_while_its_job_is_being_finished_sees_the_end(
    db_url: str, conn: Conn
) -> None:
    async def go() -> str:
        async with await AsyncBroker.connect(db_url, min_size=1, max_size=2) as client:
            client.wait_sweep = NO_SWEEP
            job = await client.enqueue("k")
            [held] = await client.claim(["default"], 1, "w:1")
            with psycopg.connect(db_url) as finisher:
                finisher.execute(
                    "UPDATE broker.jobs SET state = 'cancelled', finished_at = now(),"
                    " lease_expires_at = NULL WHERE id = %s",
                    [held.job_id],
                )
                wait = asyncio.create_task(client.wait(job.id, 30))
                await asyncio.sleep(0.3)
                assert not wait.done()
                finisher.commit()
            return (await asyncio.wait_for(wait, 10)).state

    assert asyncio.run(go()) == "cancelled"


def test_expired_registrations_are_removed_by_the_next_one(broker: Broker, conn: Conn) -> None:
    conn.execute(
        "INSERT INTO broker.job_waiters (job_id, expires_at) VALUES (1, now() - interval '1 s')"
    )
    conn.commit()
    job = broker.enqueue("k")
    assert broker.wait(job.id, 0.1).state == "queued"
    row = conn.execute("SELECT count(*) FROM broker.job_waiters").fetchone()
    assert row == (0,)
