"""The claim of a worker that serves several queues (decision 027).

It takes the next jobs in claim order across all its queues (priority, then run_at, then
id), locks only about as many rows as it claims whatever the number of queues, and never
comes back empty while one of its queues holds a job nobody else has locked.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from broker import Broker, lease
from broker.lease import JobSpec

Conn = psycopg.Connection[tuple[Any, ...]]

WORKER = "w:1"


def _claim_order(conn: Conn, queues: list[str]) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM broker.jobs WHERE state = 'queued' AND queue = ANY(%s)"
        " ORDER BY priority DESC, run_at, id",
        (queues,),
    ).fetchall()
    return [r[0] for r in rows]


@pytest.mark.parametrize("batch", [1, 7, 100])
def test_claims_follow_claim_order_across_queues(broker: Broker, conn: Conn, batch: int) -> None:
    queues = [f"q{i}" for i in range(6)]
    specs = [
        JobSpec("k", {"i": i}, queue=queues[(i * 7) % 6], priority=(i * 5) % 3) for i in range(90)
    ]
    broker.enqueue_many(specs)
    broker.enqueue("elsewhere", queue="not-served", priority=9)
    expected = _claim_order(conn, queues)
    claimed: list[int] = []
    while chunk := broker.claim(queues, batch, WORKER):
        assert len(chunk) == min(batch, len(expected) - len(claimed))
        claimed += [held.job_id for held in chunk]
    assert claimed == expected


def test_a_claim_locks_about_what_it_claims(broker: Broker, db_url: str) -> None:
    # 50 queues of 20 jobs: locking up to the LIMIT in every queue would hold 50 x 10 rows
    # until commit; the claim of 10 must hold 10.
    queues = [f"q{i}" for i in range(50)]
    broker.enqueue_many(JobSpec("k", queue=q) for q in queues for _ in range(20))
    with psycopg.connect(db_url) as holder, psycopg.connect(db_url, autocommit=True) as other:
        held = broker.run(lease.claim(queues, 10, WORKER, 60.0), holder)  # not committed
        assert len(held) == 10
        [(unlocked,)] = other.execute(
            "SELECT count(*) FROM (SELECT id FROM broker.jobs WHERE state = 'queued'"
            " FOR NO KEY UPDATE SKIP LOCKED) s"
        ).fetchall()
        # `other` still sees the claimed rows queued (the claim has not committed) and
        # passes over every row the claim holds, chosen or not.
        assert 1000 - unlocked == 10
        holder.rollback()


def test_a_claim_is_not_empty_while_an_unlocked_queue_has_jobs(broker: Broker, db_url: str) -> None:
    # The next jobs in claim order are all in `urgent`, and another claimer holds them:
    # this claim's share points at `urgent` only, yet `later` has jobs nobody holds.
    urgent = [
        e.id
        for e in broker.enqueue_many(JobSpec("u", queue="urgent", priority=5) for _ in range(3))
    ]
    later = [e.id for e in broker.enqueue_many(JobSpec("l", queue="later") for _ in range(5))]
    with psycopg.connect(db_url) as holder:
        first = broker.run(lease.claim(["urgent"], 3, "w:holder", 60.0), holder)
        assert sorted(h.job_id for h in first) == urgent
        got = broker.claim(["urgent", "later"], 3, WORKER)
        assert [h.job_id for h in got] == later[:3]
        holder.rollback()
    # The holder gave its rows back: they come first again.
    assert [h.job_id for h in broker.claim(["later", "urgent"], 10, WORKER)] == urgent + later[3:]


def test_a_paused_queue_takes_no_share(broker: Broker, conn: Conn) -> None:
    paused = [
        e.id for e in broker.enqueue_many(JobSpec("p", queue="held", priority=9) for _ in range(4))
    ]
    open_ = [e.id for e in broker.enqueue_many(JobSpec("o", queue="open") for _ in range(4))]
    conn.execute("SELECT broker.pause_queue('held')")
    assert [h.job_id for h in broker.claim(["held", "open"], 4, WORKER)] == open_
    conn.execute("SELECT broker.resume_queue('held')")
    assert [h.job_id for h in broker.claim(["open", "held"], 4, WORKER)] == paused


def test_concurrent_claimers_over_many_queues_take_every_job_once(
    broker: Broker, db_url: str, conn: Conn
) -> None:
    queues = [f"q{i}" for i in range(12)]
    ids = {
        e.id for e in broker.enqueue_many(JobSpec("k", queue=q) for q in queues for _ in range(50))
    }
    won: list[list[int]] = [[] for _ in range(8)]
    start = threading.Barrier(len(won), timeout=60)

    def claimer(index: int) -> None:
        with psycopg.connect(db_url, autocommit=True) as c:
            start.wait()
            while batch := broker.run(lease.claim(queues, 9, f"r:{index}", 60.0), c):
                won[index] += [held.job_id for held in batch]

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(len(won))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    every = [job for per in won for job in per]
    assert sorted(every) == sorted(ids)
    assert conn.execute(
        "SELECT count(*) FROM broker.jobs WHERE state <> 'running' OR lease_epoch <> 1"
    ).fetchone() == (0,)
