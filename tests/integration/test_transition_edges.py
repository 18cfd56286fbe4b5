"""Lease transitions at their edges: odd retry delays in a fail batch, a cancel racing a
retrying fail, a queue named twice in one claim, and prune_jobs without a batch size."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from broker import Broker, JobSpec, lease

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.mark.parametrize("delay", [float("inf"), float("nan"), 1e300, -5.0])
def test_odd_retry_delays_cannot_fail_the_batch(broker: Broker, conn: Conn, delay: float) -> None:
    broker.enqueue_many([JobSpec("k"), JobSpec("k")])
    first, second = broker.claim(["default"], 2, "w:1")
    outcomes = broker.fail_many(
        [(first, lease.Failure("odd", True, delay)), (second, lease.Failure("ok", True, 1.0))]
    )
    assert [o.applied for o in outcomes] == [True, True]
    assert {o.state for o in outcomes} == {"queued"}


def test_cancel_racing_a_retrying_fail_is_not_lost(broker: Broker, db_url: str) -> None:
    job = broker.enqueue("k")
    [held] = broker.claim(["default"], 1, "w:1")
    result: list[object] = []
    with psycopg.connect(db_url) as failing:
        broker.run(
            lease.finish([lease.failed(held, lease.Failure("boom", True, 0.0))], "broker_jobs"),
            conn=failing,
        )
        canceller = threading.Thread(target=lambda: result.append(broker.cancel(job.id)))
        canceller.start()
        canceller.join(0.5)
        assert canceller.is_alive(), "cancel_job waits for the row lock"
        failing.commit()
    canceller.join(10)
    assert result == ["cancelled"]
    assert broker.get_job(job.id).state == "cancelled"


def test_a_queue_named_twice_still_fills_the_claim(broker: Broker) -> None:
    broker.enqueue_many([JobSpec("k", queue="q") for _ in range(4)])
    assert len(broker.claim(["q", "q"], 4, "w:1")) == 4


def test_prune_jobs_requires_a_batch(conn: Conn) -> None:
    with pytest.raises(psycopg.Error, match="batch must be at least 1"):
        conn.execute("SELECT broker.prune_jobs('succeeded', '1 day', NULL)")


def test_one_finish_statement_ends_each_row_its_own_way(broker: Broker, conn: Conn) -> None:
    # Completions interleaved with the other outcomes, and one lease already lost: the
    # statement sends the completions last with no outcome columns of their own
    # (lease.finish), so a row out of place would end another job's way.
    jobs = broker.enqueue_many([JobSpec("k", max_attempts=3) for _ in range(7)])
    held = broker.claim(["default"], 7, "w:1")
    assert [h.job_id for h in held] == [j.id for j in jobs]
    lost = held[6]
    conn.execute(
        "UPDATE broker.jobs SET lease_epoch = lease_epoch + 1 WHERE id = %s", [lost.job_id]
    )
    conn.commit()
    rows: list[lease.Finish] = [
        lease.completed(held[0], {"n": 0}),
        lease.failed(held[1], lease.Failure("retry me", True, 60.0)),
        lease.completed(held[2], None),
        lease.released(held[3]),
        lease.failed(held[4], lease.Failure("final", False, None)),
        lease.completed(held[5], [5]),
        lease.completed(lost, "late"),
    ]
    outcomes = broker.finish_many(rows)
    assert [(o.job_id, o.applied, o.state) for o in outcomes] == [
        (held[0].job_id, True, "succeeded"),
        (held[1].job_id, True, "queued"),
        (held[2].job_id, True, "succeeded"),
        (held[3].job_id, True, "queued"),
        (held[4].job_id, True, "failed"),
        (held[5].job_id, True, "succeeded"),
        (lost.job_id, False, None),
    ]
    got = {j.id: j for j in (broker.get_job(h.job_id) for h in held)}
    assert [got[h.job_id].result for h in held[:6]] == [{"n": 0}, None, None, None, None, [5]]
    assert [got[h.job_id].last_error for h in held[:6]] == [
        None, "retry me", None, None, "final", None,
    ]  # fmt: skip
    assert [got[h.job_id].attempts for h in held[:6]] == [1, 1, 1, 0, 1, 1]
    assert got[lost.job_id].state == "running" and got[lost.job_id].result is None
    events = conn.execute(
        "SELECT job_id, event, detail->>'write' FROM broker.job_events"
        " WHERE event NOT IN ('enqueued', 'claimed') ORDER BY job_id",
    ).fetchall()
    assert events == [
        (held[0].job_id, "succeeded", None),
        (held[1].job_id, "attempt_failed", None),
        (held[2].job_id, "succeeded", None),
        (held[3].job_id, "released", None),
        (held[4].job_id, "failed", None),
        (held[5].job_id, "succeeded", None),
        (lost.job_id, "stale_write_rejected", "complete"),
    ]
