"""Regressions for defects a second reader found in the core (each test failed before)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from broker import Broker, ConfigError, InvalidJobError, JobSpec, lease
from broker.config import validate_schema

Conn = psycopg.Connection[tuple[Any, ...]]
BIG = lease.COPY_MIN_BATCH


def test_key_repeated_in_one_batch_with_subject_keeps_one_queued_job(
    broker: Broker, conn: Conn
) -> None:
    spec = JobSpec("sync", {"doc": 1}, subject_key="doc-1", idempotency_key="K")
    first, second = broker.enqueue_many([spec, spec])
    assert (first.created, second.created, first.id == second.id) == (True, False, True)
    assert broker.get_job(first.id).state == "queued"
    assert conn.execute(
        "SELECT count(*) FROM broker.job_events WHERE event = 'superseded'"
    ).fetchone() == (0,)


@pytest.mark.parametrize("size", [1, BIG])
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("priority", 2**31, "priority must be between"),
        ("priority", -(2**31) - 1, "priority must be between"),
        ("priority", 1.5, "priority must be an integer"),
        ("max_attempts", 2**32 + 3, "max_attempts must be between"),
        ("tags", [1], "tags must be a list of strings"),
        ("delay", 1e12, "at most 100 years"),
        ("timeout", float("inf"), "finite number of seconds"),
    ],
)
def test_out_of_range_values_are_rejected_on_both_paths(
    broker: Broker, conn: Conn, size: int, field: str, value: Any, message: str
) -> None:
    bad = JobSpec("k", **{field: value})
    with pytest.raises(InvalidJobError, match=message):
        broker.enqueue_many([bad] * size)
    assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == (0,)


def test_sql_enqueue_rejects_unreadable_times(conn: Conn) -> None:
    for call in (
        "SELECT broker.enqueue('k', run_at => 'infinity')",
        "SELECT broker.enqueue('k', delay => interval '1000 years')",
        "SELECT broker.enqueue('k', timeout => interval '1000 years')",
    ):
        with pytest.raises(psycopg.Error, match="must be"):
            conn.execute(call)


def test_subject_key_refused_under_repeatable_read(broker: Broker, db_url: str) -> None:
    with psycopg.connect(db_url) as caller:
        caller.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(InvalidJobError, match="READ COMMITTED or SERIALIZABLE"):
            broker.enqueue("k", subject_key="s", conn=caller)


def test_serialization_failures_and_timeouts_keep_their_own_error(
    broker: Broker, db_url: str
) -> None:
    with psycopg.connect(db_url, autocommit=True) as caller:
        caller.execute("SET statement_timeout = '50ms'")
        with psycopg.connect(db_url) as locker:
            locker.execute("LOCK TABLE broker.jobs IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(psycopg.errors.QueryCanceled):
                broker.run(lease.get_jobs([1]), conn=caller)
    with psycopg.connect(db_url) as a, psycopg.connect(db_url) as b:
        job = broker.enqueue("k").id
        a.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        a.execute("SELECT 1")  # take the snapshot
        b.execute("UPDATE broker.jobs SET priority = 1 WHERE id = %s", (job,))
        b.commit()
        with pytest.raises(psycopg.errors.SerializationFailure):
            broker.run(lease.cancel(job), conn=a)


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
        broker.run(lease.fail([(held, lease.Failure("boom", True, 0.0))]), conn=failing)
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


def test_schema_names_leave_room_for_notify_channels() -> None:
    assert validate_schema("s" * 56) == "s" * 56
    with pytest.raises(ConfigError, match="at most 56"):
        validate_schema("s" * 57)


def test_prune_jobs_requires_a_batch(conn: Conn) -> None:
    with pytest.raises(psycopg.Error, match="batch must be at least 1"):
        conn.execute("SELECT broker.prune_jobs('succeeded', '1 day', NULL)")


def test_run_at_with_any_utc_offset_is_accepted(broker: Broker) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    far = datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=23)))
    job = broker.enqueue("k", run_at=far)
    assert broker.get_job(job.id).run_at == far.astimezone(UTC)


def test_run_at_whose_utc_instant_overflows_is_invalid() -> None:
    from datetime import datetime, timedelta, timezone

    edge = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    with pytest.raises(InvalidJobError, match="run_at is out of range"):
        JobSpec("k", run_at=edge).to_json()
