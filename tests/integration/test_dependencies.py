"""Dependencies between jobs: waiting until every dependency has succeeded, cancellation
when one fails or is cancelled (recursively), and every writer of broker.jobs resolving
dependents (the finish statement, the reaper, cancel_job, pruning, an operator's SQL),
including races between an enqueue and a dependency ending on two real connections."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from broker import Broker, InvalidJobError, InvalidTransition, JobSpec, lease
from broker.lease import Failure
from broker.types import Lease
from tests.dbtime import advance_db_time

Conn = psycopg.Connection[tuple[Any, ...]]
WORKER = "deps-test:1"


def state(conn: Conn, job_id: int) -> str:
    row = conn.execute("SELECT state FROM broker.jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row[0])


def states(conn: Conn, *ids: int) -> list[str]:
    return [state(conn, i) for i in ids]


def events(conn: Conn, job_id: int) -> list[str]:
    rows = conn.execute(
        "SELECT event FROM broker.job_events WHERE job_id = %s ORDER BY id", (job_id,)
    ).fetchall()
    return [r[0] for r in rows]


def claim_one(broker: Broker, job_id: int, queue: str = "default") -> Lease:
    """Claim jobs until `job_id` is among them (others are released)."""
    claimed = broker.claim([queue], 100, WORKER)
    [held] = [c for c in claimed if c.job_id == job_id]
    others = [c for c in claimed if c.job_id != job_id]
    if others:
        broker.release_many(others)
    return held


def succeed(broker: Broker, job_id: int, queue: str = "default") -> None:
    broker.complete(claim_one(broker, job_id, queue))


def fail(broker: Broker, job_id: int) -> None:
    broker.fail(claim_one(broker, job_id), "boom", retryable=False)


def assert_counts_exact(conn: Conn) -> None:
    """The job_counts rollup (kept by the same trigger) still equals a recount."""
    rolled = conn.execute(
        "SELECT queue, state, sum(n) FROM broker.job_counts GROUP BY 1, 2 HAVING sum(n) <> 0"
        " ORDER BY 1, 2"
    ).fetchall()
    counted = conn.execute(
        "SELECT queue, state, count(*) FROM broker.jobs"
        " WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    assert rolled == counted


# --- where a job starts ----------------------------------------------------------------


def test_a_job_waits_until_all_its_dependencies_succeed(broker: Broker, conn: Conn) -> None:
    a = broker.enqueue("a").id
    b = broker.enqueue("b").id
    child = broker.enqueue("child", depends_on=[a, b]).id
    assert state(conn, child) == "waiting"
    assert broker.get_job(child).depends_on == [a, b]
    # The claim never takes a waiting job.
    claimed = broker.claim(["default"], 100, WORKER)
    assert {c.job_id for c in claimed} == {a, b}
    broker.complete(next(c for c in claimed if c.job_id == a))
    assert state(conn, child) == "waiting"
    broker.complete(next(c for c in claimed if c.job_id == b))
    assert state(conn, child) == "queued"
    assert [c.job_id for c in broker.claim(["default"], 100, WORKER)] == [child]
    assert_counts_exact(conn)


def test_the_release_notifies_the_queue(broker: Broker, conn: Conn, db_url: str) -> None:
    parent = broker.enqueue("p").id
    child = broker.enqueue("c", queue="later", depends_on=[parent]).id
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN broker_jobs")
        succeed(broker, parent)
        conn.execute("NOTIFY broker_jobs, '__sentinel__'")
        seen = []
        for note in listener.notifies(timeout=15):
            if note.payload == "__sentinel__":
                break
            seen.append(note.payload)
    assert "later" in seen and state(conn, child) == "queued"


def test_a_job_whose_dependencies_all_succeeded_starts_queued(broker: Broker, conn: Conn) -> None:
    a = broker.enqueue("a").id
    succeed(broker, a)
    child = broker.enqueue("child", depends_on=[a]).id
    assert state(conn, child) == "queued"
    assert events(conn, child) == ["enqueued"]


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
def test_a_job_enqueued_after_its_dependency_ended_badly_is_born_cancelled(
    broker: Broker, conn: Conn, ending: str
) -> None:
    parent = broker.enqueue("p").id
    if ending == "failed":
        fail(broker, parent)
    else:
        broker.cancel(parent)
    ok = broker.enqueue("ok").id
    succeed(broker, ok)
    child = broker.enqueue("child", depends_on=[ok, parent]).id
    job = broker.get_job(child)
    assert job.state == "cancelled" and job.finished_at is not None
    words = "failed" if ending == "failed" else "was cancelled"
    assert job.last_error == f"dependency {parent} {words}"
    assert events(conn, child) == ["enqueued", "dependency_failed"]
    assert_counts_exact(conn)


def test_an_unknown_dependency_is_refused_at_every_door_with_one_message(
    broker: Broker, conn: Conn
) -> None:
    with pytest.raises(InvalidJobError, match="depends_on names job 999999, which does not"):
        broker.enqueue("k", depends_on=[999999])
    with pytest.raises(psycopg.Error) as raised:
        conn.execute("SELECT broker.enqueue('k', depends_on => ARRAY[999999]::bigint[])")
    assert raised.value.sqlstate == "PB002"
    assert "job 1: depends_on names job 999999" in str(raised.value)
    assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == (0,)


def test_a_batch_cannot_refer_to_its_own_jobs(broker: Broker, conn: Conn) -> None:
    """Ids are given out inside the enqueue, so the next id is not a job yet: a spec that
    guesses it (the only way to name a job of its own batch) is refused. Hence no cycle:
    every edge points at a job that existed before the job it belongs to."""
    guess = broker.enqueue("seed").id + 1  # the id the batch's first job would get
    with pytest.raises(InvalidJobError, match=f"job 2: depends_on names job {guess}"):
        broker.enqueue_many([JobSpec("a"), JobSpec("b", depends_on=[guess])])
    # In one transaction, an earlier statement's job is a job: that chain is fine.
    with psycopg.connect(conn.info.dsn) as tx:
        a = broker.enqueue("a", conn=tx).id
        b = broker.enqueue("b", depends_on=[a], conn=tx).id
    assert states(conn, a, b) == ["queued", "waiting"]


def test_the_copy_path_carries_the_new_fields_and_leaves_dependencies_to_sql(
    broker: Broker, conn: Conn
) -> None:
    from broker import _copy

    plain = [
        JobSpec("k", group="bulk", concurrency_key="tenant-1", start_within=60)
        for _ in range(_copy.COPY_MIN_BATCH)
    ]
    assert _copy.copy_eligible(plain)
    broker.enqueue_many(plain)
    row = conn.execute(
        "SELECT count(*), min(deadline - created_at), max(deadline - created_at)"
        " FROM broker.jobs WHERE \"group\" = 'bulk' AND concurrency_key = 'tenant-1'"
    ).fetchone()
    assert row is not None and row[0] == _copy.COPY_MIN_BATCH
    assert row[1] == row[2] and row[1].total_seconds() == 60
    parent = broker.enqueue("p", queue="parents").id
    waiting = [JobSpec("k", depends_on=[parent]) for _ in range(_copy.COPY_MIN_BATCH)]
    assert not _copy.copy_eligible(waiting)
    done = broker.enqueue_many(waiting)
    assert conn.execute(
        "SELECT count(*) FROM broker.job_dependencies WHERE depends_on = %s", (parent,)
    ).fetchone() == (len(done),)
    succeed(broker, parent, "parents")
    assert conn.execute("SELECT count(*) FROM broker.jobs WHERE state = 'waiting'").fetchone() == (
        0,
    )


def test_start_within_is_a_deadline_on_the_database_clock(broker: Broker, conn: Conn) -> None:
    advance_db_time(conn, 3600)  # the database is now an hour ahead of this host
    job = broker.get_job(broker.enqueue("k", start_within=30).id)
    assert job.deadline is not None
    assert (job.deadline - job.created_at).total_seconds() == 30


# --- failure propagation ---------------------------------------------------------------


def test_a_failure_cancels_waiting_descendants_recursively(broker: Broker, conn: Conn) -> None:
    root = broker.enqueue("root").id
    other = broker.enqueue("other").id
    left = broker.enqueue("left", depends_on=[root]).id
    right = broker.enqueue("right", depends_on=[root]).id
    join = broker.enqueue("join", depends_on=[left, right, other]).id
    tail = broker.enqueue("tail", depends_on=[join]).id
    unrelated = broker.enqueue("unrelated", depends_on=[other]).id
    fail(broker, root)
    assert states(conn, left, right, join, tail) == ["cancelled"] * 4
    assert broker.get_job(left).last_error == f"dependency {root} failed"
    assert broker.get_job(join).last_error == f"dependency {left} was cancelled"
    assert broker.get_job(tail).last_error == f"dependency {join} was cancelled"
    for job_id in (left, right, join, tail):
        assert events(conn, job_id)[-1] == "dependency_failed"
    # Only waiting dependents: the other branch is untouched.
    assert states(conn, other, unrelated) == ["queued", "waiting"]
    assert_counts_exact(conn)


def test_cancelling_a_waiting_job_or_its_dependency(broker: Broker, conn: Conn) -> None:
    parent = broker.enqueue("p").id
    child = broker.enqueue("c", depends_on=[parent]).id
    grandchild = broker.enqueue("g", depends_on=[child]).id
    assert broker.cancel(child) == "cancelled"
    assert state(conn, grandchild) == "cancelled"
    assert broker.get_job(grandchild).last_error == f"dependency {child} was cancelled"
    assert state(conn, parent) == "queued"
    other = broker.enqueue("o", depends_on=[parent]).id
    broker.cancel(parent)
    assert state(conn, other) == "cancelled"


def test_the_reaper_failing_a_dependency_cancels_its_dependents(broker: Broker, conn: Conn) -> None:
    parent = broker.enqueue("p", max_attempts=1).id
    child = broker.enqueue("c", depends_on=[parent]).id
    claim_one(broker, parent)
    advance_db_time(conn, 60)
    assert [r.state for r in broker.reap()] == ["failed"]
    assert state(conn, child) == "cancelled"


def test_an_operator_update_resolves_dependents_too(broker: Broker, conn: Conn) -> None:
    ok = broker.enqueue("ok").id
    bad = broker.enqueue("bad").id
    released = broker.enqueue("r", depends_on=[ok]).id
    doomed = broker.enqueue("d", depends_on=[bad]).id
    conn.execute(
        "UPDATE broker.jobs SET state = CASE id WHEN %s THEN 'succeeded' ELSE 'failed' END,"
        " finished_at = now() WHERE id IN (%s, %s)",
        (ok, ok, bad),
    )
    assert states(conn, released, doomed) == ["queued", "cancelled"]
    assert_counts_exact(conn)


# --- pruning and deleting --------------------------------------------------------------


def test_pruning_a_succeeded_dependency_strands_nothing(broker: Broker, conn: Conn) -> None:
    early = broker.enqueue("early").id
    late = broker.enqueue("late").id
    child = broker.enqueue("child", depends_on=[early, late]).id
    succeed(broker, early)
    advance_db_time(conn, 3600)
    pruned = conn.execute("SELECT broker.prune_jobs('succeeded', interval '1 minute')").fetchone()
    assert pruned == (1,)
    assert state(conn, child) == "waiting"
    # The edge to the pruned job stays (the job still shows what it waited for); a
    # dependency that no longer exists was pruned after succeeding, so it counts as met.
    assert broker.get_job(child).depends_on == [early, late]
    succeed(broker, late)
    assert state(conn, child) == "queued"


def test_pruning_a_job_takes_its_own_edges(broker: Broker, conn: Conn) -> None:
    parent = broker.enqueue("p").id
    child = broker.enqueue("c", depends_on=[parent]).id
    fail(broker, parent)
    assert state(conn, child) == "cancelled"
    advance_db_time(conn, 3600)
    conn.execute("SELECT broker.prune_jobs('cancelled', interval '1 minute')")
    assert conn.execute("SELECT count(*) FROM broker.job_dependencies").fetchone() == (0,)


def test_deleting_an_unfinished_dependency_cancels_its_waiting_dependents(
    broker: Broker, conn: Conn
) -> None:
    parent = broker.enqueue("p").id
    child = broker.enqueue("c", depends_on=[parent]).id
    conn.execute("DELETE FROM broker.jobs WHERE id = %s", (parent,))
    job = broker.get_job(child)
    assert job.state == "cancelled" and job.last_error == f"dependency {parent} was deleted"
    assert_counts_exact(conn)


# --- retry -----------------------------------------------------------------------------


def test_retrying_a_job_cancelled_for_its_dependency(broker: Broker, conn: Conn) -> None:
    parent = broker.enqueue("p").id
    child = broker.enqueue("c", depends_on=[parent]).id
    fail(broker, parent)
    with pytest.raises(InvalidTransition, match=f"its dependency {parent} is failed"):
        broker.retry(child)
    assert broker.retry(parent) == "queued"
    assert broker.retry(child) == "waiting"
    succeed(broker, parent)
    assert state(conn, child) == "queued"
    succeed(broker, child)
    # A job whose dependencies all succeeded retries straight to queued.
    fail_child = broker.enqueue("f", depends_on=[parent]).id
    fail(broker, fail_child)
    assert broker.retry(fail_child) == "queued"


# --- races between an enqueue and a dependency ending (two real connections) -----------


def _in_thread(work: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _blocked(conn: Conn, pid: int) -> bool:
    row = conn.execute(
        "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    return bool(row and row[0])


def _wait_blocked(conn: Conn, pid: int) -> None:
    deadline = time.monotonic() + 15
    while not _blocked(conn, pid):
        assert time.monotonic() < deadline, "the other transaction never waited on a lock"
        time.sleep(0.02)


def test_a_dependency_completing_while_the_enqueue_is_open(
    broker: Broker, conn: Conn, db_url: str
) -> None:
    """The enqueue's transaction stays open while the dependency completes: the
    completion cannot see the new job (uncommitted), and is not held up by it (the
    dependency is only FOR KEY SHARE locked, so its heartbeat and finish go through); the
    deferred trigger on job_dependencies releases the job at the enqueue's commit."""
    parent = broker.enqueue("p").id
    held = claim_one(broker, parent)
    with psycopg.connect(db_url) as enqueuer:
        child = broker.enqueue("c", depends_on=[parent], conn=enqueuer).id  # still open
        assert broker.heartbeat([held]).extended == [held]
        broker.complete(held)
        assert state(conn, parent) == "succeeded"
        enqueuer.commit()
    assert state(conn, child) == "queued"


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
def test_a_dependency_ending_badly_while_the_enqueue_is_open(
    broker: Broker, conn: Conn, db_url: str, ending: str
) -> None:
    parent = broker.enqueue("p").id
    held = claim_one(broker, parent)
    with psycopg.connect(db_url) as enqueuer:
        child = broker.enqueue("c", depends_on=[parent], conn=enqueuer).id
        grandchild = broker.enqueue("g", depends_on=[child], conn=enqueuer).id
        if ending == "failed":
            broker.fail(held, "boom", retryable=False)
        else:
            broker.cancel(parent)
            broker.run(lease.finish([lease.cancel_acked(held, "stop")], "broker_jobs"))
        enqueuer.commit()
    assert states(conn, child, grandchild) == ["cancelled", "cancelled"]
    assert events(conn, child)[-1] == "dependency_failed"


def test_an_enqueue_while_the_dependency_completion_is_open(
    broker: Broker, conn: Conn, db_url: str
) -> None:
    """The reverse order: the completion has updated the row but not committed. The
    enqueue sees the dependency running and makes the job wait; at its commit the deferred
    trigger's FOR SHARE waits for the completion to commit, then sees it succeeded."""
    parent = broker.enqueue("p").id
    held = claim_one(broker, parent)
    with psycopg.connect(db_url) as done, psycopg.connect(db_url, autocommit=True) as enqueuer:
        broker.run(lease.finish([lease.completed(held)], "broker_jobs"), done)  # still open
        ids: list[int] = []
        thread, errors = _in_thread(
            lambda: ids.append(broker.enqueue("c", depends_on=[parent], conn=enqueuer).id)
        )
        _wait_blocked(conn, enqueuer.info.backend_pid)
        done.commit()
        thread.join(15)
        assert not errors
    assert states(conn, parent, ids[0]) == ["succeeded", "queued"]


def test_two_dependencies_completing_in_concurrent_transactions(
    broker: Broker, conn: Conn, db_url: str
) -> None:
    """Each completion sees the other dependency still running in its snapshot; the
    second locks the waiting job behind the first and decides after it commits."""
    a = broker.enqueue("a").id
    b = broker.enqueue("b").id
    child = broker.enqueue("c", depends_on=[a, b]).id
    claimed = {c.job_id: c for c in broker.claim(["default"], 10, WORKER)}
    with psycopg.connect(db_url) as first, psycopg.connect(db_url, autocommit=True) as second:
        broker.run(lease.finish([lease.completed(claimed[a])], "broker_jobs"), first)
        thread, errors = _in_thread(
            lambda: broker.run(lease.finish([lease.completed(claimed[b])], "broker_jobs"), second)
        )
        _wait_blocked(conn, second.info.backend_pid)
        first.commit()
        thread.join(15)
        assert not errors
    assert state(conn, child) == "queued"


def test_a_failure_and_a_success_racing_still_cancel(
    broker: Broker, conn: Conn, db_url: str
) -> None:
    a = broker.enqueue("a").id
    b = broker.enqueue("b").id
    child = broker.enqueue("c", depends_on=[a, b]).id
    claimed = {c.job_id: c for c in broker.claim(["default"], 10, WORKER)}
    with psycopg.connect(db_url) as first, psycopg.connect(db_url, autocommit=True) as second:
        broker.run(lease.finish([lease.completed(claimed[a])], "broker_jobs"), first)
        failure = lease.failed(claimed[b], Failure("boom", retryable=False))
        thread, errors = _in_thread(lambda: broker.run(lease.finish([failure], "x"), second))
        _wait_blocked(conn, second.info.backend_pid)
        first.commit()
        thread.join(15)
        assert not errors
    assert state(conn, child) == "cancelled"
