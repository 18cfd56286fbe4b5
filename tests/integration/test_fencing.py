"""Zombie fencing: a worker whose lease expired can never write to the job again.

Worker A claims, stalls past its lease, the reaper requeues the job, worker B claims it
(epoch 2) and finishes it. Every late write A makes under epoch 1 (heartbeat, complete,
fail, cancel ack, release, log lines) is rejected, recorded as `stale_write_rejected`,
and leaves B's outcome untouched.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from broker import Broker, lease
from broker.errors import LeaseLost
from broker.lease import Lease
from tests.dbtime import advance_db_time

Conn = psycopg.Connection[tuple[Any, ...]]

WORKER_A = "host-a:1"
WORKER_B = "host-b:1"
RESULT = {"answer": 42, "by": "b"}


def _stale_rejections(conn: Conn, job_id: int) -> list[tuple[int, str, str]]:
    rows = conn.execute(
        "SELECT epoch, worker_id, detail->>'write' FROM broker.job_events"
        " WHERE job_id = %s AND event = 'stale_write_rejected' ORDER BY id",
        (job_id,),
    ).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def _zombie_writes(broker: Broker, zombie: Lease) -> list[str]:
    """Every write a worker can make, under `zombie`'s epoch; all must be rejected."""
    outcome = broker.heartbeat([zombie], 30)
    assert (outcome.extended, outcome.lost, outcome.cancel_requested) == ([], [zombie], [])
    with pytest.raises(LeaseLost) as lost:
        broker.complete(zombie, {"answer": "stale"})
    assert (lost.value.job_id, lost.value.epoch, lost.value.write) == (
        zombie.job_id,
        zombie.epoch,
        "complete",
    )
    with pytest.raises(LeaseLost) as lost:
        broker.fail(zombie, "stale failure")
    assert (lost.value.epoch, lost.value.write) == (zombie.epoch, "fail")
    with pytest.raises(LeaseLost):
        broker.fail(zombie, "stale final failure", retryable=False)
    [acked] = broker.cancel_ack_many([(zombie, "stale cancel")])
    assert not acked.applied
    [released] = broker.release_many([zombie])
    assert not released.applied
    assert broker.append_logs([(zombie, "a line from the zombie")]) == 0
    return ["heartbeat", "complete", "fail", "fail", "cancel", "release"]


def test_zombie_worker_is_fenced_off(broker: Broker, conn: Conn) -> None:
    job_id = broker.enqueue("slow", {"n": 1}).id
    [a] = broker.claim(["default"], 1, WORKER_A, lease_ttl=5)
    assert (a.job_id, a.epoch, a.attempt) == (job_id, 1, 1)

    # A stalls; the database clock passes its lease expiry and the reaper takes it back.
    assert broker.reap() == []
    advance_db_time(conn, 6)
    [reaped] = broker.reap()
    assert (reaped.job_id, reaped.state) == (job_id, "queued")
    requeued = broker.get_job(job_id)
    assert (requeued.state, requeued.attempts, requeued.lease_epoch) == ("queued", 1, 1)
    assert requeued.last_error == "lease expired"
    assert requeued.lease_expires_at is None
    [expired] = [e for e in broker.events(job_id) if e.event == "lease_expired"]
    assert (expired.epoch, expired.worker_id) == (1, WORKER_A)
    assert expired.detail == {"next_state": "queued"}

    # The job still carries epoch 1, but it is no longer running: A's writes are rejected.
    expected = [(1, WORKER_A, w) for w in _zombie_writes(broker, a)]
    assert _stale_rejections(conn, job_id) == expected
    after_rejections = broker.get_job(job_id)
    assert (after_rejections.state, after_rejections.attempts) == ("queued", 1)
    assert after_rejections.last_error == "lease expired"
    assert after_rejections.run_at == requeued.run_at

    # Backoff after attempt 1 is at most 1.25 s.
    assert broker.claim(["default"], 1, WORKER_B, lease_ttl=30) == []
    advance_db_time(conn, 2)
    [b] = broker.claim(["default"], 1, WORKER_B, lease_ttl=30)
    assert (b.job_id, b.epoch, b.attempt) == (job_id, 2, 2)

    # While B holds the lease, A's writes are rejected and B's lease is unharmed.
    expected += [(1, WORKER_A, w) for w in _zombie_writes(broker, a)]
    assert broker.heartbeat([b], 30).extended == [b]
    running = broker.get_job(job_id)
    assert (running.state, running.lease_epoch, running.worker_id) == ("running", 2, WORKER_B)

    broker.complete(b, RESULT)

    # After B finished, A's late writes still change nothing.
    expected += [(1, WORKER_A, w) for w in _zombie_writes(broker, a)]
    done = broker.get_job(job_id)
    assert (done.state, done.result, done.lease_epoch, done.attempts) == (
        "succeeded",
        RESULT,
        2,
        2,
    )
    assert done.worker_id == WORKER_B
    assert _stale_rejections(conn, job_id) == expected
    # B's late duplicate of its own completion is stale too: the lease ended with it.
    with pytest.raises(LeaseLost):
        broker.complete(b, {"answer": "again"})
    assert broker.get_job(job_id).result == RESULT

    lifecycle = [
        (e.event, e.epoch) for e in broker.events(job_id) if e.event != "stale_write_rejected"
    ]
    assert lifecycle == [
        ("enqueued", None),
        ("claimed", 1),
        ("lease_expired", 1),
        ("claimed", 2),
        ("succeeded", 2),
    ]
    assert conn.execute(
        "SELECT count(*) FROM broker.job_logs WHERE job_id = %s", (job_id,)
    ).fetchone() == (0,)


def test_heartbeat_keeps_a_lease_alive_past_its_first_expiry(broker: Broker, conn: Conn) -> None:
    job_id = broker.enqueue("long").id
    [held] = broker.claim(["default"], 1, WORKER_A, lease_ttl=30)
    for _ in range(3):
        advance_db_time(conn, 20)
        assert broker.heartbeat([held], 30).extended == [held]
        assert broker.reap() == []
    # 60 s after the claim, well past the first 30 s lease, the holder can still finish.
    broker.complete(held, "ok")
    assert broker.get_job(job_id).state == "succeeded"
    assert _stale_rejections(conn, job_id) == []


def test_unwritten_beat_extends_held_leases_and_passes_over_locked_rows(
    broker: Broker, db_url: str, conn: Conn
) -> None:
    # The beat of finished handlers whose outcome waits to be written (broker.worker.
    # heartbeat): it extends what is still held, and never waits for a row lock, so a
    # write held up on one cannot hold up the beat of the process's other leases.
    for _ in range(3):
        broker.enqueue("long")
    a, b, c = broker.claim(["default"], 3, WORKER_A, lease_ttl=30)
    stale = replace(c, epoch=c.epoch - 1)

    def expiry() -> dict[int, object]:
        rows = conn.execute("SELECT id, lease_expires_at FROM broker.jobs").fetchall()
        return {int(r[0]): r[1] for r in rows}

    before = expiry()
    with ThreadPoolExecutor(1) as pool, psycopg.connect(db_url) as locker:
        locker.execute("SELECT 1 FROM broker.jobs WHERE id = %s FOR UPDATE", [b.job_id])
        beat = pool.submit(broker.run, lease.heartbeat_unwritten([a, b, stale], 300))
        assert beat.result(timeout=10) is None  # did not wait for the lock
        locker.rollback()
    after = expiry()
    assert after[a.job_id] > before[a.job_id]  # extended
    assert after[b.job_id] == before[b.job_id]  # locked: passed over this beat
    assert after[c.job_id] == before[c.job_id]  # an old epoch extends nothing
    assert _stale_rejections(conn, c.job_id) == []  # and records nothing
