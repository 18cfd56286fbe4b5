"""What gets claimed when, and what a failure does next.

Transactional enqueue (a rolled-back job never exists), claim order (priority, then
run_at, then id), scheduled jobs, exponential backoff, max_attempts, non-retryable
failures, explicit retry delays, and cancellation of a running job.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

from broker import Broker
from broker._copy import COPY_MIN_BATCH
from broker.errors import JobNotFound
from broker.lease import Failure, JobSpec, Lease
from tests.dbtime import advance_db_time
from tests.waiters import wait_on

Conn = psycopg.Connection[tuple[Any, ...]]

WORKER = "w:1"
# Seconds of wall time a step may take on a loaded 2-core machine; every "not yet due"
# check leaves at least this much room before the due time.
SLACK = 20.0


class Rollback(Exception):
    """Raised inside the caller's transaction to roll it back."""


def _claim_one(broker: Broker, queue: str = "default", ttl: float = 60) -> Lease:
    [held] = broker.claim([queue], 1, WORKER, lease_ttl=ttl)
    return held


def _retry_delay(conn: Conn, job_id: int) -> float:
    """Seconds from the latest failure to its scheduled retry, both in the fail's own now()."""
    row = conn.execute(
        "SELECT extract(epoch FROM (detail->>'retry_at')::timestamptz - at)::float8"
        " FROM broker.job_events WHERE job_id = %s AND event = 'attempt_failed'"
        " ORDER BY id DESC LIMIT 1",
        (job_id,),
    ).fetchone()
    assert row is not None
    return float(row[0])


def _due_in(conn: Conn, job_id: int) -> float:
    row = conn.execute(
        "SELECT extract(epoch FROM run_at - now())::float8 FROM broker.jobs WHERE id = %s",
        (job_id,),
    ).fetchone()
    assert row is not None
    return float(row[0])


def _events(broker: Broker, job_id: int) -> list[str]:
    return [e.event for e in broker.events(job_id)]


# --- transactional enqueue ----------------------------------------------------------------


def test_rolled_back_enqueue_is_never_seen(broker: Broker, db_url: str, conn: Conn) -> None:
    conn.execute("LISTEN broker_jobs")
    wait_on(conn, "default")
    rolled_back: list[int] = []
    with psycopg.connect(db_url, autocommit=True) as caller:
        with pytest.raises(Rollback), caller.transaction():
            caller.execute("CREATE TABLE app_orders (id int)")
            rolled_back.append(broker.enqueue("ship", {"order": 1}, conn=caller).id)
            assert broker.claim(["default"], 10, WORKER) == []
            raise Rollback
        [job_id] = rolled_back
        assert broker.claim(["default"], 10, WORKER) == []
        with pytest.raises(JobNotFound):
            broker.get_job(job_id)
        assert broker.events(job_id) == []
        assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('app_orders')").fetchone() == (None,)
        assert list(conn.notifies(timeout=0.5, stop_after=1)) == []

        with caller.transaction():
            committed = broker.enqueue("ship", {"order": 2}, conn=caller).id
            # Uncommitted: not claimable, no wake-up yet.
            assert broker.claim(["default"], 10, WORKER) == []
            assert list(conn.notifies(timeout=0.2, stop_after=1)) == []
    [wake] = list(conn.notifies(timeout=10, stop_after=1))
    assert (wake.channel, wake.payload) == ("broker_jobs", "default")
    held = _claim_one(broker)
    assert (held.job_id, held.args) == (committed, {"order": 2})
    assert committed != job_id


def test_rolled_back_batch_enqueue_on_the_copy_path(
    broker: Broker, db_url: str, conn: Conn
) -> None:
    specs = [JobSpec("bulk", {"i": i}) for i in range(COPY_MIN_BATCH)]
    with (
        psycopg.connect(db_url, autocommit=True) as caller,
        pytest.raises(Rollback),
        caller.transaction(),
    ):
        assert len(broker.enqueue_many(specs, conn=caller)) == COPY_MIN_BATCH
        raise Rollback
    assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM broker.job_events").fetchone() == (0,)
    assert broker.claim(["default"], 10, WORKER) == []


# --- claim order --------------------------------------------------------------------------


def test_priority_first_then_fifo_within_a_batch(broker: Broker) -> None:
    priorities = [0, 5, 0, 10, 5, 0, -1, 10]
    ids = [
        e.id
        for e in broker.enqueue_many(
            JobSpec("p", {"i": i}, priority=p) for i, p in enumerate(priorities)
        )
    ]
    expected = [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-priorities[i], i))]
    claimed = [_claim_one(broker).job_id for _ in ids]
    assert claimed == expected
    assert broker.claim(["default"], 10, WORKER) == []


def test_priority_and_fifo_on_the_copy_path(broker: Broker) -> None:
    n = COPY_MIN_BATCH
    ids = [e.id for e in broker.enqueue_many(JobSpec("p", priority=i % 5) for i in range(n))]
    expected = [ids[i] for i in sorted(range(n), key=lambda i: (-(i % 5), i))]
    claimed: list[int] = []
    for _ in range(n // 100):
        chunk = broker.claim(["default"], 100, WORKER)
        # One claim takes the best 100 runnable jobs and returns them in claim order.
        assert [c.job_id for c in chunk] == expected[len(claimed) : len(claimed) + 100]
        claimed += [c.job_id for c in chunk]
    assert claimed == expected


def test_earlier_run_at_first_within_a_priority(broker: Broker) -> None:
    late = broker.enqueue("late").id
    early = broker.enqueue("early", run_at=broker.db_clock() - timedelta(hours=1)).id
    urgent = broker.enqueue("urgent", priority=1, run_at=broker.db_clock()).id
    assert [_claim_one(broker).job_id for _ in range(3)] == [urgent, early, late]


def test_future_run_at_is_not_claimed_early(broker: Broker, conn: Conn) -> None:
    by_delay = broker.enqueue("later", delay=60).id
    by_time = broker.enqueue("later", run_at=broker.db_clock() + timedelta(seconds=60)).id
    now_job = broker.enqueue("now").id
    assert 60 - SLACK < _due_in(conn, by_delay) <= 60
    assert 60 - SLACK < _due_in(conn, by_time) <= 60
    assert [c.job_id for c in broker.claim(["default"], 10, WORKER)] == [now_job]
    advance_db_time(conn, 60 - SLACK - 1)
    assert broker.claim(["default"], 10, WORKER) == []
    advance_db_time(conn, SLACK + 2)
    assert sorted(c.job_id for c in broker.claim(["default"], 10, WORKER)) == [by_delay, by_time]


# --- retries ------------------------------------------------------------------------------


def test_backoff_grows_with_each_attempt(broker: Broker, conn: Conn) -> None:
    job_id = broker.enqueue("flaky", max_attempts=10).id
    # retry_backoff: 2^(attempt-1) s plus 0-25% jitter.
    bounds = {1: (1.0, 1.25), 2: (2.0, 2.5), 3: (4.0, 5.0), 4: (8.0, 10.0)}
    delays: list[float] = []
    for attempt, (low, high) in bounds.items():
        held = _claim_one(broker)
        assert (held.job_id, held.attempt) == (job_id, attempt)
        assert broker.fail(held, f"boom {attempt}") == "queued"
        delay = _retry_delay(conn, job_id)
        assert low <= delay <= high, (attempt, delay)
        # The stored run_at agrees (less the wall time since the fail).
        assert delay - SLACK < _due_in(conn, job_id) <= delay
        delays.append(delay)
        advance_db_time(conn, high + 0.1)
    assert delays == sorted(delays)
    job = broker.get_job(job_id)
    assert (job.state, job.attempts, job.last_error) == ("queued", 4, "boom 4")
    assert _events(broker, job_id).count("attempt_failed") == 4


def test_reaper_applies_backoff_too(broker: Broker, conn: Conn) -> None:
    job_id = broker.enqueue("stuck").id
    _claim_one(broker, ttl=5)
    advance_db_time(conn, 6)
    assert [r.state for r in broker.reap()] == ["queued"]
    # The lease_expired event was written in the reaper's own transaction, at its now().
    row = conn.execute(
        "SELECT extract(epoch FROM j.run_at - e.at)::float8 FROM broker.jobs j"
        " JOIN broker.job_events e ON e.job_id = j.id AND e.event = 'lease_expired'"
        " WHERE j.id = %s",
        (job_id,),
    ).fetchone()
    assert row is not None
    assert 1.0 <= row[0] <= 1.25


def test_max_attempts_ends_in_failed(broker: Broker, conn: Conn) -> None:
    job_id = broker.enqueue("doomed", max_attempts=3).id
    states = []
    for attempt in (1, 2, 3):
        held = _claim_one(broker)
        assert held.attempt == attempt and held.max_attempts == 3
        states.append(broker.fail(held, f"error {attempt}"))
        advance_db_time(conn, 10)
    assert states == ["queued", "queued", "failed"]
    job = broker.get_job(job_id)
    assert (job.state, job.attempts, job.last_error) == ("failed", 3, "error 3")
    assert job.finished_at is not None and job.lease_expires_at is None
    assert broker.claim(["default"], 10, WORKER) == []
    [final] = [e for e in broker.events(job_id) if e.event == "failed"]
    assert (final.epoch, final.detail) == (3, {"error": "error 3", "attempt": 3})
    assert _events(broker, job_id) == [
        "enqueued",
        "claimed",
        "attempt_failed",
        "claimed",
        "attempt_failed",
        "claimed",
        "failed",
    ]


def test_reaper_fails_a_job_out_of_attempts(broker: Broker, conn: Conn) -> None:
    job_id = broker.enqueue("crashy", max_attempts=1).id
    _claim_one(broker, ttl=5)
    advance_db_time(conn, 6)
    assert [(r.job_id, r.state) for r in broker.reap()] == [(job_id, "failed")]
    job = broker.get_job(job_id)
    assert (job.state, job.last_error) == ("failed", "lease expired")
    assert _events(broker, job_id)[-2:] == ["lease_expired", "failed"]


def test_non_retryable_failure_fails_at_once(broker: Broker) -> None:
    first = broker.enqueue("bad-input").id
    second = broker.enqueue("bad-input").id
    held = _claim_one(broker)
    assert held.job_id == first
    assert broker.fail(held, "invalid input", retryable=False) == "failed"
    other = _claim_one(broker)
    [outcome] = broker.fail_many([(other, Failure("invalid too", retryable=False))])
    assert (outcome.applied, outcome.state) == (True, "failed")
    for job_id in (first, second):
        job = broker.get_job(job_id)
        assert (job.state, job.attempts, job.max_attempts) == ("failed", 1, 20)
        assert _events(broker, job_id)[-1] == "failed"
    assert broker.claim(["default"], 10, WORKER) == []


def test_explicit_delay_overrides_backoff(broker: Broker, conn: Conn) -> None:
    job_id = broker.enqueue("rate-limited").id
    held = _claim_one(broker)
    assert broker.fail(held, "429", delay=120) == "queued"
    assert _retry_delay(conn, job_id) == pytest.approx(120)
    advance_db_time(conn, 120 - SLACK)
    assert broker.claim(["default"], 1, WORKER) == []
    advance_db_time(conn, SLACK + 1)
    held = _claim_one(broker)
    # delay=0 means "retry now", not "use the backoff".
    assert broker.fail(held, "again", delay=0) == "queued"
    assert _retry_delay(conn, job_id) == 0
    assert _claim_one(broker).attempt == 3


# --- cancellation of a running job ----------------------------------------------------------


def test_cancel_requested_while_running_wins_over_retry(broker: Broker) -> None:
    job_id = broker.enqueue("long").id
    held = _claim_one(broker)
    assert broker.cancel(job_id) == "running"
    assert broker.heartbeat([held]).cancel_requested == [held]
    assert broker.fail(held, "interrupted") == "cancelled"
    job = broker.get_job(job_id)
    assert (job.state, job.attempts) == ("cancelled", 1)
    assert job.cancel_requested_at is not None and job.finished_at is not None
    assert _events(broker, job_id)[-2:] == ["cancel_requested", "cancelled"]
    assert broker.claim(["default"], 10, WORKER) == []


def test_reaper_ends_a_cancel_requested_job_cancelled(broker: Broker, conn: Conn) -> None:
    job_id = broker.enqueue("long").id
    _claim_one(broker, ttl=5)
    assert broker.cancel(job_id) == "running"
    advance_db_time(conn, 6)
    assert [(r.job_id, r.state) for r in broker.reap()] == [(job_id, "cancelled")]
    job = broker.get_job(job_id)
    assert (job.state, job.last_error) == ("cancelled", "lease expired")
    assert _events(broker, job_id)[-3:] == ["cancel_requested", "lease_expired", "cancelled"]
    advance_db_time(conn, 3600)
    assert broker.claim(["default"], 10, WORKER) == []
