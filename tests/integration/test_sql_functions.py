"""The SQL surface for operators and applications: broker.enqueue (from psql and triggers),
NOTIFY, cancel_job, retry_job, queue_stats, subject_key supersede and enqueue validation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from broker import (
    Broker,
    InvalidJobError,
    InvalidTransition,
    JobNotFound,
    JobSpec,
)
from broker.lease import Statement
from tests.dbtime import advance_db_time
from tests.waiters import wait_on

Conn = psycopg.Connection[tuple[Any, ...]]
NOTIFY_WAIT = 15.0  # generous: the machine is shared and slow; only reached on failure


@pytest.fixture
def listener(db_url: str) -> Iterator[Conn]:
    """A separate autocommit connection listening on both broker channels."""
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("LISTEN broker_jobs")
        c.execute("LISTEN broker_cancel")
        # The queues these tests expect a wake-up for; enqueues notify only a queue a
        # worker waits on (decision 028).
        wait_on(c, "orders", "alpha", "beta", "bulk_a", "bulk_b", "real", "q1", "default")
        yield c


def notifications(listener: Conn, conn: Conn) -> list[tuple[str, str]]:
    """Every notification delivered so far, in order.

    A sentinel NOTIFY is committed last from `conn`; PostgreSQL delivers notifications in
    commit order, so once the sentinel arrives every earlier one has too. No sleeping, and
    "no notification" is a definite answer rather than a timeout.
    """
    conn.execute("NOTIFY broker_jobs, '__sentinel__'")
    seen: list[tuple[str, str]] = []
    for note in listener.notifies(timeout=NOTIFY_WAIT):
        if note.payload == "__sentinel__":
            return seen
        seen.append((note.channel, note.payload))
    raise AssertionError(f"sentinel notification never arrived; saw {seen}")


def count(conn: Conn, query: str, *params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


def events(conn: Conn, job_id: int) -> list[str]:
    rows = conn.execute(
        "SELECT event FROM broker.job_events WHERE job_id = %s ORDER BY id", (job_id,)
    ).fetchall()
    return [str(r[0]) for r in rows]


def job_row(conn: Conn, job_id: int) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM broker.jobs WHERE id = %s", (job_id,))
    row = cur.fetchone()
    assert row is not None, f"job {job_id} missing"
    assert cur.description is not None
    return {col.name: value for col, value in zip(cur.description, row, strict=True)}


# --- broker.enqueue from SQL --------------------------------------------------------------


def test_enqueue_with_named_arguments(conn: Conn) -> None:
    row = conn.execute(
        "SELECT broker.enqueue('send_email', '{\"to\": \"a@example.com\"}',"
        " queue => 'emails', priority => 7, delay => interval '10 minutes',"
        " max_attempts => 3, timeout => interval '30 seconds', subject_key => 'user:1',"
        " tags => ARRAY['x', 'y'])"
    ).fetchone()
    assert row is not None and isinstance(row[0], int)
    job = job_row(conn, row[0])
    assert job["kind"] == "send_email"
    assert job["args"] == {"to": "a@example.com"}
    assert (job["queue"], job["priority"], job["max_attempts"]) == ("emails", 7, 3)
    assert (job["state"], job["attempts"], job["lease_epoch"]) == ("queued", 0, 0)
    assert job["timeout"].total_seconds() == 30
    assert (job["subject_key"], job["tags"]) == ("user:1", ["x", "y"])
    delay = count(
        conn,
        "SELECT extract(epoch FROM run_at - created_at)::int FROM broker.jobs WHERE id = %s",
        row[0],
    )
    assert delay == 600
    assert events(conn, row[0]) == ["enqueued"]


def test_enqueue_defaults_and_run_at(conn: Conn) -> None:
    first = count(conn, "SELECT broker.enqueue('minimal')")
    job = job_row(conn, first)
    assert (job["queue"], job["priority"], job["args"], job["tags"]) == ("default", 0, {}, [])
    assert job["max_attempts"] == 20 and job["timeout"] is None
    assert count(conn, "SELECT count(*) FROM broker.jobs WHERE id = %s AND run_at <= now()", first)

    second = count(
        conn, "SELECT broker.enqueue('at', run_at => '2099-01-01T00:00:00Z'::timestamptz)"
    )
    assert second > first
    assert count(
        conn,
        "SELECT count(*) FROM broker.jobs WHERE id = %s AND run_at = '2099-01-01T00:00:00Z'",
        second,
    )


def test_enqueue_idempotency_key_from_sql(conn: Conn) -> None:
    query = "SELECT broker.enqueue('k', '{\"n\": 1}', idempotency_key => 'once')"
    first = count(conn, query)
    assert count(conn, query) == first
    assert count(conn, "SELECT count(*) FROM broker.jobs") == 1
    with pytest.raises(psycopg.Error) as info:
        conn.execute("SELECT broker.enqueue('k', '{\"n\": 2}', idempotency_key => 'once')")
    assert info.value.sqlstate == "PB001"


def test_enqueued_job_is_claimable_by_the_client(conn: Conn, broker: Broker) -> None:
    job_id = count(conn, "SELECT broker.enqueue('from_sql', '{\"a\": [1, 2]}')")
    [held] = broker.claim(["default"], 5, "w:1", 5.0)
    assert (held.job_id, held.kind, held.args, held.epoch) == (
        job_id,
        "from_sql",
        {"a": [1, 2]},
        1,
    )


# --- inside an application's trigger and transaction ---------------------------------------


@pytest.fixture
def orders(conn: Conn) -> None:
    """An application table whose AFTER INSERT trigger enqueues a job."""
    conn.execute("CREATE TABLE public.orders (id bigint PRIMARY KEY, total integer NOT NULL)")
    conn.execute(
        """
        CREATE FUNCTION public.orders_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM broker.enqueue('process_order', jsonb_build_object('order_id', NEW.id),
                                 queue => 'orders');
          RETURN NEW;
        END $$
        """
    )
    conn.execute(
        "CREATE TRIGGER orders_enqueue AFTER INSERT ON public.orders"
        " FOR EACH ROW EXECUTE FUNCTION public.orders_enqueue()"
    )


@pytest.mark.usefixtures("orders")
def test_trigger_enqueue_rolls_back_with_the_transaction(
    db_url: str, conn: Conn, listener: Conn
) -> None:
    with psycopg.connect(db_url) as app:  # not autocommit: the application's transaction
        app.execute("INSERT INTO public.orders VALUES (1, 100)")
        assert count(app, "SELECT count(*) FROM broker.jobs") == 1  # visible inside only
        assert count(conn, "SELECT count(*) FROM broker.jobs") == 0
        app.rollback()
    assert count(conn, "SELECT count(*) FROM broker.jobs") == 0
    assert count(conn, "SELECT count(*) FROM broker.job_events") == 0
    assert notifications(listener, conn) == []


@pytest.mark.usefixtures("orders")
def test_trigger_enqueue_commits_with_the_transaction(
    db_url: str, conn: Conn, listener: Conn, broker: Broker
) -> None:
    with psycopg.connect(db_url) as app:
        app.execute("INSERT INTO public.orders VALUES (1, 100), (2, 250)")
        app.commit()
    rows = conn.execute("SELECT id, kind, queue, args FROM broker.jobs ORDER BY id").fetchall()
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("process_order", "orders", {"order_id": 1}),
        ("process_order", "orders", {"order_id": 2}),
    ]
    assert all(events(conn, r[0]) == ["enqueued"] for r in rows)
    # Two enqueues in one transaction to one queue: listeners hear about the queue once.
    assert notifications(listener, conn) == [("broker_jobs", "orders")]
    claimed = broker.claim(["orders"], 5, "w:1", 5.0)
    assert sorted(lease.args["order_id"] for lease in claimed) == [1, 2]


# --- NOTIFY ---------------------------------------------------------------------------


def test_batch_notifies_once_per_queue(conn: Conn, listener: Conn, broker: Broker) -> None:
    broker.enqueue_many(
        [
            JobSpec("k", queue="alpha"),
            JobSpec("k", queue="beta"),
            JobSpec("k", queue="alpha"),
            JobSpec("k", queue="gamma", delay=3600),  # not runnable yet: no wake-up
            JobSpec("k", queue="beta", priority=9),
        ]
    )
    seen = notifications(listener, conn)
    assert sorted(seen) == [("broker_jobs", "alpha"), ("broker_jobs", "beta")]


def test_large_batch_notifies_once_per_runnable_queue(
    conn: Conn, listener: Conn, broker: Broker
) -> None:
    # Big plain batches take another path (COPY); the wake-up rule must be the same.
    specs = [JobSpec("k", queue="bulk_a") for _ in range(300)]
    specs += [JobSpec("k", queue="bulk_b", priority=i % 3) for i in range(299)]
    specs += [JobSpec("k", queue="bulk_later", delay=3600)]
    created = broker.enqueue_many(specs)
    assert len({e.id for e in created}) == 600
    assert sorted(notifications(listener, conn)) == [
        ("broker_jobs", "bulk_a"),
        ("broker_jobs", "bulk_b"),
    ]
    assert count(conn, "SELECT count(*) FROM broker.job_events WHERE event = 'enqueued'") == 600


def test_large_batch_with_one_bad_job_creates_nothing(
    conn: Conn, listener: Conn, broker: Broker
) -> None:
    specs = [JobSpec("k", queue="bulk") for _ in range(599)] + [JobSpec("bad kind", queue="bulk")]
    with pytest.raises(InvalidJobError, match="kind must be"):
        broker.enqueue_many(specs)
    assert count(conn, "SELECT count(*) FROM broker.jobs") == 0
    assert count(conn, "SELECT count(*) FROM broker.job_events") == 0
    assert notifications(listener, conn) == []


def test_rolled_back_enqueue_does_not_notify(db_url: str, conn: Conn, listener: Conn) -> None:
    with psycopg.connect(db_url) as app:
        app.execute("SELECT broker.enqueue('k', queue => 'ghost')")
        app.rollback()
    assert notifications(listener, conn) == []
    assert count(conn, "SELECT count(*) FROM broker.jobs") == 0


def test_client_enqueue_on_callers_connection_rolls_back(
    db_url: str, conn: Conn, listener: Conn, broker: Broker
) -> None:
    with psycopg.connect(db_url) as app:
        broker.enqueue("k", queue="ghost", conn=app)
        app.rollback()
        broker.enqueue("k", queue="real", conn=app)
        app.commit()
    assert notifications(listener, conn) == [("broker_jobs", "real")]
    rows = conn.execute("SELECT queue FROM broker.jobs").fetchall()
    assert rows == [("real",)]


def test_future_run_at_does_not_notify(conn: Conn, listener: Conn) -> None:
    conn.execute("SELECT broker.enqueue('later', delay => interval '1 hour', queue => 'q1')")
    conn.execute("SELECT broker.enqueue('later', run_at => now() + interval '1 day')")
    assert notifications(listener, conn) == []
    conn.execute("SELECT broker.enqueue('now', queue => 'q1')")
    assert notifications(listener, conn) == [("broker_jobs", "q1")]


# --- cancel_job -----------------------------------------------------------------------


def test_cancel_queued_job(conn: Conn, listener: Conn) -> None:
    job_id = count(conn, "SELECT broker.enqueue('k')")
    notifications(listener, conn)  # the enqueue's own wake-up
    row = conn.execute("SELECT id, state FROM broker.cancel_job(%s)", (job_id,)).fetchone()
    assert row == (job_id, "cancelled")
    job = job_row(conn, job_id)
    assert job["state"] == "cancelled" and job["finished_at"] is not None
    assert events(conn, job_id) == ["enqueued", "cancelled"]
    assert notifications(listener, conn) == []  # nobody holds it: no cancel notice


def test_cancel_running_job_requests_and_notifies(
    conn: Conn, listener: Conn, broker: Broker
) -> None:
    job = broker.enqueue("k")
    [held] = broker.claim(["default"], 1, "w:1", 30.0)
    notifications(listener, conn)
    assert broker.cancel(job.id) == "running"
    assert notifications(listener, conn) == [("broker_cancel", str(job.id))]
    row = job_row(conn, job.id)
    assert row["state"] == "running" and row["cancel_requested_at"] is not None
    ev = conn.execute(
        "SELECT event, epoch, worker_id FROM broker.job_events WHERE job_id = %s ORDER BY id",
        (job.id,),
    ).fetchall()
    assert ev[-1] == ("cancel_requested", held.epoch, "w:1")
    # The holder learns it on its next heartbeat and acknowledges with a fenced write.
    assert broker.heartbeat([held]).cancel_requested == [held]
    [ack] = broker.cancel_ack_many([(held, "cancelled by operator")])
    assert ack.applied
    assert broker.get_job(job.id).state == "cancelled"


def test_cancel_twice_while_running_keeps_first_request(conn: Conn, broker: Broker) -> None:
    job = broker.enqueue("k")
    broker.claim(["default"], 1, "w:1", 30.0)
    broker.cancel(job.id)
    first = job_row(conn, job.id)["cancel_requested_at"]
    advance_db_time(conn, 5)
    first_shifted = job_row(conn, job.id)["cancel_requested_at"]
    assert broker.cancel(job.id) == "running"
    assert job_row(conn, job.id)["cancel_requested_at"] == first_shifted != first


@pytest.mark.parametrize("final", ["succeeded", "failed", "cancelled"])
def test_cancel_finished_job_is_invalid_transition(conn: Conn, broker: Broker, final: str) -> None:
    job = broker.enqueue("k", max_attempts=1)
    if final == "cancelled":
        broker.cancel(job.id)
    else:
        [held] = broker.claim(["default"], 1, "w:1", 30.0)
        if final == "succeeded":
            broker.complete(held)
        else:
            broker.fail(held, "boom")
    with pytest.raises(InvalidTransition) as info:
        broker.cancel(job.id)
    assert (info.value.job_id, info.value.state, info.value.action) == (job.id, final, "cancel")
    with pytest.raises(psycopg.Error) as raw:
        conn.execute("SELECT * FROM broker.cancel_job(%s)", (job.id,))
    assert raw.value.sqlstate == "PB004"
    assert job_row(conn, job.id)["state"] == final


def test_cancel_unknown_job(conn: Conn, broker: Broker) -> None:
    with pytest.raises(JobNotFound) as info:
        broker.cancel(424242)
    assert info.value.job_id == 424242
    with pytest.raises(psycopg.Error) as raw:
        conn.execute("SELECT * FROM broker.cancel_job(424242)")
    assert raw.value.sqlstate == "PB003"


# --- retry_job ------------------------------------------------------------------------


def test_retry_exhausted_failed_job_raises_max_attempts(
    conn: Conn, listener: Conn, broker: Broker
) -> None:
    job = broker.enqueue("k", max_attempts=1)
    [held] = broker.claim(["default"], 1, "w:1", 30.0)
    assert broker.fail(held, "boom") == "failed"
    notifications(listener, conn)
    assert broker.retry(job.id) == "queued"
    row = job_row(conn, job.id)
    assert (row["state"], row["attempts"], row["max_attempts"]) == ("queued", 1, 2)
    assert row["finished_at"] is None and row["result"] is None
    assert events(conn, job.id)[-1] == "retried"
    assert notifications(listener, conn) == [("broker_jobs", "default")]
    [again] = broker.claim(["default"], 1, "w:2", 30.0)
    assert (again.job_id, again.epoch, again.attempt) == (job.id, 2, 2)


def test_retry_non_retryable_failure_keeps_attempts_left(conn: Conn, broker: Broker) -> None:
    job = broker.enqueue("k", max_attempts=5)
    [held] = broker.claim(["default"], 1, "w:1", 30.0)
    assert broker.fail(held, "bad input", retryable=False) == "failed"
    row = conn.execute("SELECT id, state FROM broker.retry_job(%s)", (job.id,)).fetchone()
    assert row == (job.id, "queued")
    assert job_row(conn, job.id)["max_attempts"] == 5


def test_retry_cancelled_job_runs_now(conn: Conn, broker: Broker) -> None:
    job = broker.enqueue("k", delay=3600)
    broker.cancel(job.id)
    assert broker.retry(job.id) == "queued"
    assert count(conn, "SELECT count(*) FROM broker.jobs WHERE id = %s AND run_at <= now()", job.id)
    assert [lease.job_id for lease in broker.claim(["default"], 1, "w:1", 30.0)] == [job.id]


@pytest.mark.parametrize("current", ["queued", "running", "succeeded"])
def test_retry_of_unfinished_or_succeeded_job_is_invalid(
    conn: Conn, broker: Broker, current: str
) -> None:
    job = broker.enqueue("k")
    if current != "queued":
        [held] = broker.claim(["default"], 1, "w:1", 30.0)
        if current == "succeeded":
            broker.complete(held)
    with pytest.raises(InvalidTransition) as info:
        broker.retry(job.id)
    assert (info.value.state, info.value.action) == (current, "retry")
    assert job_row(conn, job.id)["state"] == current
    assert "retried" not in events(conn, job.id)


def test_retry_unknown_job(broker: Broker) -> None:
    with pytest.raises(JobNotFound):
        broker.retry(99)


# --- queue_stats ----------------------------------------------------------------------


def test_queue_stats_counts(conn: Conn, broker: Broker) -> None:
    broker.enqueue_many([JobSpec("k", queue="q1") for _ in range(5)])
    broker.enqueue("k", queue="q1", delay=3600)
    broker.enqueue("k", queue="q2")
    a, b, c = broker.claim(["q1"], 3, "w:1", 30.0)
    broker.complete(a)
    broker.fail(b, "no", retryable=False)
    [d] = broker.claim(["q1"], 1, "w:1", 30.0)
    broker.cancel(d.job_id)  # running: cancel requested, still running
    queued = broker.enqueue("k", queue="q1")
    broker.cancel(queued.id)
    advance_db_time(conn, 120)

    cur = conn.execute("SELECT * FROM broker.queue_stats ORDER BY queue")
    assert cur.description is not None
    names = [col.name for col in cur.description]
    stats = {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}
    assert set(stats) == {"q1", "q2"}
    q1 = stats["q1"]
    counts = ("queued", "available", "scheduled", "running", "succeeded", "failed", "cancelled")
    assert {k: q1[k] for k in counts} == {
        "queued": 2,
        "available": 1,
        "scheduled": 1,
        "running": 2,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 1,
    }
    assert q1["oldest_available_age_seconds"] >= 120
    assert (stats["q2"]["queued"], stats["q2"]["available"], stats["q2"]["running"]) == (1, 1, 0)
    del c


# --- subject_key supersede ------------------------------------------------------------


def test_newer_job_supersedes_older_queued_ones(conn: Conn, broker: Broker) -> None:
    old1 = broker.enqueue("sync_user", {"v": 1}, subject_key="user:1")
    old2 = broker.enqueue("sync_user", {"v": 2}, subject_key="user:1", delay=60)
    other_subject = broker.enqueue("sync_user", {"v": 1}, subject_key="user:2")
    other_kind = broker.enqueue("email_user", {"v": 1}, subject_key="user:1")
    newest = broker.enqueue("sync_user", {"v": 3}, subject_key="user:1")

    # Each enqueue supersedes what was queued before it: old1 by old2, old2 by newest.
    for old, by in ((old1, old2), (old2, newest)):
        row = job_row(conn, old.id)
        assert (row["state"], row["last_error"]) == ("cancelled", "superseded")
        detail = conn.execute(
            "SELECT detail FROM broker.job_events WHERE job_id = %s AND event = 'superseded'",
            (old.id,),
        ).fetchall()
        assert detail == [({"superseded_by": by.id},)]
    for kept in (other_subject, other_kind, newest):
        assert job_row(conn, kept.id)["state"] == "queued"


def test_supersede_leaves_running_jobs_alone(conn: Conn, broker: Broker) -> None:
    running = broker.enqueue("sync_user", subject_key="user:1")
    [held] = broker.claim(["default"], 1, "w:1", 30.0)
    assert held.job_id == running.id
    newer = broker.enqueue("sync_user", subject_key="user:1")
    assert job_row(conn, running.id)["state"] == "running"
    assert "superseded" not in events(conn, running.id)
    assert job_row(conn, newer.id)["state"] == "queued"
    broker.complete(held)  # the old run still finishes under its own lease
    assert job_row(conn, running.id)["state"] == "succeeded"


def test_within_one_batch_the_last_wins(conn: Conn, broker: Broker) -> None:
    first, middle, last, unrelated = broker.enqueue_many(
        [
            JobSpec("sync_user", {"v": 1}, subject_key="user:1"),
            JobSpec("sync_user", {"v": 2}, subject_key="user:1"),
            JobSpec("sync_user", {"v": 3}, subject_key="user:1"),
            JobSpec("sync_user", {"v": 9}, subject_key="user:9"),
        ]
    )
    assert all(e.created for e in (first, middle, last, unrelated))
    states = {j: job_row(conn, j)["state"] for j in (first.id, middle.id, last.id, unrelated.id)}
    assert states == {
        first.id: "cancelled",
        middle.id: "cancelled",
        last.id: "queued",
        unrelated.id: "queued",
    }
    assert events(conn, first.id) == ["enqueued", "superseded"]
    assert events(conn, last.id) == ["enqueued"]
    claimed = broker.claim(["default"], 10, "w:1", 30.0)
    assert sorted(lease.args["v"] for lease in claimed) == [3, 9]


# --- validation -----------------------------------------------------------------------


def _raw_enqueue(broker: Broker, specs: str) -> list[Any]:
    """Send a spec array as-is, past JobSpec's own checks, to test the database's."""
    return broker.run(Statement("job_enqueue_many", {"specs": specs}, lambda rows: rows))


INVALID = [
    ('[{"kind": "bad kind!"}]', "kind must be 1-200 characters of letters, digits, _ . : -"),
    ('[{"kind": ""}]', "kind must be 1-200 characters"),
    ('[{"kind": "%s"}]' % ("k" * 201), "kind must be 1-200 characters"),
    ('[{"args": {}}]', "kind is required"),
    ('[{"kind": "k", "queue": "no spaces"}]', "queue must be 1-128 characters"),
    ('[{"kind": "k", "args": [1, 2]}]', "args must be a JSON object"),
    ('[{"kind": "k", "args": "text"}]', "args must be a JSON object"),
    (
        '[{"kind": "k", "run_at": "2030-01-01T00:00:00Z", "delay": 5}]',
        "give run_at or delay, not both",
    ),
    ('[{"kind": "k", "max_attempts": 0}]', "max_attempts must be at least 1"),
    ('[{"kind": "k", "delay": -1}]', "delay must not be negative"),
    ('[{"kind": "k", "timeout": 0}]', "timeout must be positive"),
    ('[{"kind": "ok"}, {"kind": "k", "max_attempts": -3}]', "max_attempts must be at least 1"),
    ('{"kind": "k"}', "enqueue expects a JSON array"),
]


@pytest.mark.parametrize(("specs", "message"), INVALID)
def test_invalid_specs_are_rejected_and_create_nothing(
    conn: Conn, broker: Broker, specs: str, message: str
) -> None:
    with pytest.raises(InvalidJobError) as info:
        _raw_enqueue(broker, specs)
    assert message in str(info.value)
    # The caller's message never echoes the failing row back.
    assert "violates" not in str(info.value) and "DETAIL" not in str(info.value)
    assert count(conn, "SELECT count(*) FROM broker.jobs") == 0
    assert count(conn, "SELECT count(*) FROM broker.job_events") == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "bad kind"}, "kind must be"),
        ({"queue": "bad/queue"}, "queue must be"),
        ({"run_at": "2030-01-01T00:00:00Z", "delay": 5.0}, "run_at or delay, not both"),
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"delay": -0.5}, "delay must not be negative"),
    ],
)
def test_client_enqueue_validation(
    conn: Conn, broker: Broker, options: dict[str, Any], message: str
) -> None:
    from datetime import datetime

    kwargs = dict(options)
    kind = kwargs.pop("kind", "k")
    if "run_at" in kwargs:
        kwargs["run_at"] = datetime.fromisoformat(kwargs["run_at"])
    with pytest.raises(InvalidJobError, match=message):
        broker.enqueue(kind, {}, **kwargs)
    assert count(conn, "SELECT count(*) FROM broker.jobs") == 0


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        ("SELECT broker.enqueue('k', '[1]')", "jobs_args_check"),
        ("SELECT broker.enqueue('k', max_attempts => 0)", "jobs_max_attempts_check"),
        ("SELECT broker.enqueue('k', timeout => interval '0')", "jobs_timeout_check"),
        ("SELECT broker.enqueue('two words')", "jobs_kind_check"),
        ("SELECT broker.enqueue('k', queue => '')", "jobs_queue_check"),
        ("SELECT broker.enqueue('k', delay => interval '-1 second')", "delay must not be negative"),
        (
            "SELECT broker.enqueue('k', run_at => now(), delay => interval '1 second')",
            "give run_at or delay, not both",
        ),
    ],
)
def test_sql_enqueue_validation(conn: Conn, call: str, reason: str) -> None:
    """From SQL a bad job is refused by a named CHECK constraint or a PB002 error."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(call)
    exc = info.value
    if reason.startswith("jobs_"):
        assert (exc.sqlstate, exc.diag.constraint_name) == ("23514", reason)
    else:
        assert exc.sqlstate == "PB002"
        assert reason in str(exc)
    assert count(conn, "SELECT count(*) FROM broker.jobs") == 0


def test_plain_insert_obeys_the_same_rules(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO broker.jobs (kind, args) VALUES ('k', '[]')")
    conn.execute("INSERT INTO broker.jobs (kind) VALUES ('plain')")
    assert count(conn, "SELECT count(*) FROM broker.jobs WHERE state = 'queued'") == 1


def test_bad_batch_rolls_back_whole_batch(conn: Conn, broker: Broker) -> None:
    with pytest.raises(InvalidJobError, match="max_attempts must be at least 1"):
        broker.enqueue_many([JobSpec("a"), JobSpec("b"), JobSpec("c", max_attempts=0)])
    assert count(conn, "SELECT count(*) FROM broker.jobs") == 0
    assert count(conn, "SELECT count(*) FROM broker.job_events") == 0
