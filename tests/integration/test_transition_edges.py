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
