"""The enqueue paths (COPY for plain batches, job_enqueue_one for one plain job, the
enqueue_many() SQL function for the rest) keep the caller's transaction semantics and
the same rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from broker import Broker, InvalidJobError, JobSpec, lease
from broker._copy import COPY_MIN_BATCH
from tests.waiters import wait_on

Conn = psycopg.Connection[tuple[Any, ...]]
COPY_SIZED = COPY_MIN_BATCH
FUNCTION_SIZED = 3


def count_jobs(conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM broker.jobs").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("size", [COPY_SIZED, FUNCTION_SIZED])
def test_batch_joins_callers_implicit_transaction(
    broker: Broker, db_url: str, conn: Conn, size: int
) -> None:
    with psycopg.connect(db_url) as caller:  # not autocommit: an implicit transaction
        broker.enqueue_many([JobSpec("t", {"i": i}) for i in range(size)], conn=caller)
        assert count_jobs(conn) == 0, "visible before the caller committed"
        caller.rollback()
    assert count_jobs(conn) == 0
    assert broker.claim(["default"], 10, "w:1") == []

    with psycopg.connect(db_url) as caller:
        broker.enqueue_many([JobSpec("t", {"i": i}) for i in range(size)], conn=caller)
        caller.commit()
    assert count_jobs(conn) == size


@pytest.mark.parametrize("size", [COPY_SIZED, FUNCTION_SIZED])
def test_batch_inside_explicit_transaction_rolls_back(
    broker: Broker, db_url: str, conn: Conn, size: int
) -> None:
    with (
        psycopg.connect(db_url, autocommit=True) as caller,
        pytest.raises(RuntimeError),
        caller.transaction(),
    ):
        broker.enqueue_many([JobSpec("t") for _ in range(size)], conn=caller)
        raise RuntimeError("the caller's work failed")
    assert count_jobs(conn) == 0


@pytest.mark.parametrize("size", [COPY_SIZED, FUNCTION_SIZED])
def test_both_paths_store_the_same_job(broker: Broker, conn: Conn, size: int) -> None:
    spec = JobSpec(
        "same",
        {"n": 1},
        queue="q1",
        priority=7,
        delay=60,
        max_attempts=3,
        timeout=9.5,
        tags=("a", "b"),
    )
    [first, *_] = broker.enqueue_many([spec] * size)
    job = broker.get_job(first.id)
    assert (job.queue, job.kind, job.args, job.priority, job.max_attempts, job.tags) == (
        "q1",
        "same",
        {"n": 1},
        7,
        3,
        ["a", "b"],
    )
    assert job.timeout is not None and job.timeout.total_seconds() == 9.5
    delay = (job.run_at - job.created_at).total_seconds()
    assert delay == pytest.approx(60, abs=0.01), "delay counts from the database's now()"
    events = conn.execute(
        "SELECT event FROM broker.job_events WHERE job_id = %s", (first.id,)
    ).fetchall()
    assert events == [("enqueued",)]


@pytest.mark.parametrize("size", [COPY_SIZED, FUNCTION_SIZED])
def test_invalid_spec_rejects_whole_batch(broker: Broker, conn: Conn, size: int) -> None:
    specs = [JobSpec("ok") for _ in range(size - 1)] + [JobSpec("not ok")]
    with pytest.raises(InvalidJobError, match="kind must be"):
        broker.enqueue_many(specs)
    assert count_jobs(conn) == 0


def test_copy_batch_notifies_once_per_runnable_queue(db_url: str, broker: Broker) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN broker_jobs")
        wait_on(listener, "a", "b", "later")
        specs = [JobSpec("t", queue=("a", "b")[i % 2]) for i in range(COPY_SIZED)]
        specs += [JobSpec("t", queue="later", delay=3600)]
        broker.enqueue_many(specs)
        payloads = sorted(n.payload for n in listener.notifies(timeout=1.0, stop_after=10))
    assert payloads == ["a", "b"]


def test_replayed_spec_never_supersedes(broker: Broker, conn: Conn) -> None:
    original = broker.enqueue("sync", {"v": 1}, subject_key="doc-1", idempotency_key="K")
    results = broker.enqueue_many(
        [
            JobSpec("sync", {"v": 2}, subject_key="doc-1"),
            JobSpec("sync", {"v": 1}, subject_key="doc-1", idempotency_key="K"),
        ]
    )
    assert results[1].id == original.id and not results[1].created
    newest = broker.get_job(results[0].id)
    assert newest.state == "queued", "the replay created nothing, so the new spec is newest"
    superseded = conn.execute(
        "SELECT job_id, detail->>'superseded_by' FROM broker.job_events WHERE event = 'superseded'"
    ).fetchall()
    assert superseded == [(original.id, str(newest.id))]


# --- one plain job: the lean statement (job_enqueue_one) -----------------------------------

EVERY_FIELD: dict[str, Any] = {
    "queue": "q1",
    "priority": 7,
    "delay": 60,
    "max_attempts": 3,
    "timeout": 9.5,
    "tags": ("a", "b"),
    "group": "g1",
    "concurrency_key": "c1",
    "start_within": 30,
    "meta": {"m": "v"},
}
# meta without the trace context Broker.enqueue adds when a tracer provider is set (an
# earlier test may have set one); the function path below has no enqueue span.
STORED = """SELECT queue, kind, args, priority, max_attempts, timeout, tags, "group",
                   concurrency_key, meta - 'traceparent' - 'tracestate', state, attempts,
                   lease_epoch,
                   CASE WHEN %(absolute)s THEN run_at - '2031-01-01' ELSE run_at - created_at END,
                   deadline - created_at, finished_at, last_error
            FROM broker.jobs WHERE id = %(id)s"""


@pytest.mark.parametrize(
    "fields", [{}, EVERY_FIELD, {"run_at": datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)}]
)
def test_one_plain_job_is_stored_as_the_function_stores_it(
    broker: Broker, conn: Conn, fields: dict[str, Any]
) -> None:
    absolute = "run_at" in fields
    lean = broker.enqueue("same", {"n": [1, {"x": None}]}, **fields)
    [function] = broker.run(
        lease.enqueue_many([JobSpec("same", {"n": [1, {"x": None}]}, **fields)])
    )
    assert lean.created and function.created
    assert (
        conn.execute(STORED, {"id": lean.id, "absolute": absolute}).fetchone()
        == conn.execute(STORED, {"id": function.id, "absolute": absolute}).fetchone()
    )
    events = "SELECT event, epoch, worker_id, detail FROM broker.job_events WHERE job_id = %s"
    assert conn.execute(events, (lean.id,)).fetchall() == [("enqueued", None, None, None)]
    assert (
        conn.execute(events, (lean.id,)).fetchall()
        == conn.execute(events, (function.id,)).fetchall()
    )


def test_one_plain_job_joins_the_callers_transaction_and_notifies_at_commit(
    broker: Broker, db_url: str, conn: Conn
) -> None:
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN broker_jobs")
        wait_on(listener, "now")
        with psycopg.connect(db_url) as caller:
            broker.enqueue("t", queue="now", conn=caller)
            broker.enqueue("t", queue="later", delay=3600, conn=caller)
            assert count_jobs(conn) == 0, "visible before the caller committed"
            assert list(listener.notifies(timeout=0.3)) == []
            caller.commit()
        payloads = [n.payload for n in listener.notifies(timeout=1.0, stop_after=1)]
    assert payloads == ["now"], "a job not runnable yet wakes nobody"
    assert count_jobs(conn) == 2


def test_one_job_that_is_not_plain_takes_the_function(broker: Broker, conn: Conn) -> None:
    first = broker.enqueue("t", idempotency_key="k1", queue="q")
    again = broker.enqueue("t", idempotency_key="k1", queue="q")
    assert (again.id, again.created) == (first.id, False)
    child = broker.enqueue("t", depends_on=[first.id], queue="q")
    assert broker.get_job(child.id).state == "waiting"
