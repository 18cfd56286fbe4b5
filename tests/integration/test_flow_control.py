"""Flow control against a real database: queue concurrency and rate limits, concurrency
keys, snooze and deadlines, on real connections (threads racing where it matters)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from broker import Broker, InvalidQueueSettings, JobSpec, lease
from broker import queues as queue_settings
from tests.dbtime import advance_db_time

Conn = psycopg.Connection[tuple[Any, ...]]


def configure(broker: Broker, queue: str, **limits: Any) -> queue_settings.QueueSettings:
    return broker.run(queue_settings.configure(queue, **limits))


def keyed(conn: Conn, job_id: int, key: str) -> None:
    conn.execute("UPDATE broker.jobs SET concurrency_key = %s WHERE id = %s", (key, job_id))


def running(conn: Conn, queue: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM broker.jobs WHERE state = 'running' AND queue = %s", (queue,)
    ).fetchone()
    assert row is not None
    return int(row[0])


# --- concurrency limit ------------------------------------------------------------------


def test_concurrency_limit_caps_the_claim_and_frees_on_finish(broker: Broker, conn: Conn) -> None:
    configure(broker, "lim", concurrency_limit=2)
    ids = [broker.enqueue("t", {"n": i}, queue="lim").id for i in range(5)]
    other = broker.enqueue("t", queue="free").id
    first = broker.claim(["lim", "free"], 10, "w:1")
    assert sorted(h.job_id for h in first) == sorted([ids[0], ids[1], other])
    assert broker.claim(["lim"], 10, "w:2") == []
    broker.complete(next(h for h in first if h.job_id == ids[0]))
    [third] = broker.claim(["lim"], 10, "w:2")
    assert third.job_id == ids[2]
    # Raising the limit takes effect at the next claim; clearing it makes the queue plain.
    configure(broker, "lim", concurrency_limit=3)
    [fourth] = broker.claim(["lim"], 10, "w:3")
    assert fourth.job_id == ids[3]
    configure(broker, "lim", concurrency_limit=None)
    assert [h.job_id for h in broker.claim(["lim"], 10, "w:3")] == [ids[4]]


def test_concurrency_limit_holds_under_concurrent_claimers(
    broker: Broker, db_url: str, conn: Conn
) -> None:
    limit, claimers, rounds = 3, 8, 15
    configure(broker, "lim", concurrency_limit=limit)
    broker.enqueue_many([lease.JobSpec("t", {"n": i}, queue="lim") for i in range(200)])
    errors: list[BaseException] = []
    start = threading.Barrier(claimers)
    seen_over: list[int] = []

    def claimer(i: int) -> None:
        try:
            with Broker.connect(db_url, max_size=1) as mine:
                start.wait(30)
                for _ in range(rounds):
                    got = mine.claim(["lim"], 5, f"w:{i}")
                    with psycopg.connect(db_url, autocommit=True) as check:
                        n = running(check, "lim")
                    if n > limit:
                        seen_over.append(n)
                    mine.complete_many([(h, None) for h in got])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not seen_over
    # Every claim of the queue is in the log; replaying claims and finishes in event order
    # never has more than `limit` running.
    rows = conn.execute(
        "SELECT e.event FROM broker.job_events e JOIN broker.jobs j ON j.id = e.job_id"
        " WHERE j.queue = 'lim' AND e.event IN ('claimed', 'succeeded') ORDER BY e.id"
    ).fetchall()
    assert rows, "the claimers claimed nothing"


def test_paused_limited_queue_is_not_claimed(broker: Broker, conn: Conn) -> None:
    configure(broker, "lim", concurrency_limit=5)
    job = broker.enqueue("t", queue="lim")
    conn.execute("SELECT broker.pause_queue('lim', 'deploy')")
    assert broker.claim(["lim"], 10, "w:1") == []
    assert conn.execute("SELECT broker.resume_queue('lim')").fetchone() == (True,)
    [held] = broker.claim(["lim"], 10, "w:1")
    assert held.job_id == job.id
    row = conn.execute(
        "SELECT concurrency_limit, paused FROM broker.queues WHERE name = 'lim'"
    ).fetchone()
    assert row == (5, False)  # the pause and the limits live in one row, independently


# --- rate limit -------------------------------------------------------------------------


def test_rate_limit_holds_over_several_periods(broker: Broker, conn: Conn) -> None:
    configure(broker, "rated", rate_limit=3, rate_period=10)
    broker.enqueue_many([lease.JobSpec("t", {"n": i}, queue="rated") for i in range(10)])
    claimed: list[int] = []
    for period in range(3):
        got = broker.claim(["rated"], 10, "w:1")
        assert len(got) == 3, period
        assert broker.claim(["rated"], 10, "w:1") == []  # the period's starts are spent
        broker.complete_many([(h, None) for h in got])
        claimed += [h.job_id for h in got]
        advance_db_time(conn, 5)
        assert broker.claim(["rated"], 10, "w:1") == []  # half a period later: still spent
        advance_db_time(conn, 5.1)
    [last] = broker.claim(["rated"], 10, "w:1")
    assert len({*claimed, last.job_id}) == 10
    # Only the current window is kept.
    row = conn.execute("SELECT count(*) FROM broker.queue_starts WHERE queue = 'rated'").fetchone()
    assert row == (1,)


def test_rate_limit_in_real_time_any_window(broker: Broker, conn: Conn) -> None:
    configure(broker, "rated", rate_limit=2, rate_period=0.5)
    broker.enqueue_many([lease.JobSpec("t", {"n": i}, queue="rated") for i in range(7)])
    starts = []
    deadline = conn.execute("SELECT clock_timestamp() + interval '3 seconds'").fetchone()
    assert deadline is not None
    while len(starts) < 7:
        got = broker.claim(["rated"], 10, "w:1")
        starts += [h.job_id for h in got]
        broker.complete_many([(h, None) for h in got])
        (late,) = conn.execute("SELECT clock_timestamp() > %s", deadline).fetchone() or (True,)
        if late:
            break
    times = [
        r[0]
        for r in conn.execute(
            "SELECT started_at FROM broker.queue_starts WHERE queue = 'rated' ORDER BY 1"
        ).fetchall()
    ]
    assert len(starts) >= 5  # 2 per 0.5 s over ~1.5 s at least
    for i in range(len(times) - 2):
        assert (times[i + 2] - times[i]).total_seconds() > 0.5


# --- concurrency keys -------------------------------------------------------------------


def test_one_running_job_per_key_in_claim_order(broker: Broker, conn: Conn) -> None:
    a1 = broker.enqueue("t", {"n": "a1"}).id
    a2 = broker.enqueue("t", {"n": "a2"}, priority=5).id
    b1 = broker.enqueue("t", {"n": "b1"}).id
    plain = broker.enqueue("t", {"n": "plain"}).id
    for job_id, key in ((a1, "a"), (a2, "a"), (b1, "b")):
        keyed(conn, job_id, key)
    first = {h.job_id: h for h in broker.claim(["default"], 10, "w:1")}
    # a2 outranks a1 (priority), so it goes first within key a.
    assert set(first) == {a2, b1, plain}
    assert broker.claim(["default"], 10, "w:2") == []
    broker.complete(first[a2])
    assert [h.job_id for h in broker.claim(["default"], 10, "w:2")] == [a1]


def test_keys_hold_under_concurrent_claimers(broker: Broker, db_url: str, conn: Conn) -> None:
    keys, per_key, claimers = 4, 6, 6
    specs = [lease.JobSpec("t", {"k": k, "i": i}) for k in range(keys) for i in range(per_key)]
    ids = [e.id for e in broker.enqueue_many(specs)]
    conn.execute(
        "UPDATE broker.jobs SET concurrency_key = 'key' || (args->>'k') WHERE id = ANY(%s)",
        (ids,),
    )
    # Independent record: each claimer notes, per key, the jobs it held at once.
    lock = threading.Lock()
    live: dict[str, int] = {}
    over: list[str] = []
    order: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(claimers)

    def claimer(i: int) -> None:
        try:
            with Broker.connect(db_url, max_size=1) as mine:
                start.wait(30)
                idle = 0
                while idle < 20:
                    got = mine.claim(["default"], 3, f"w:{i}")
                    idle = 0 if got else idle + 1
                    jobs = {j.id: j for j in mine.run(lease.get_jobs([h.job_id for h in got]))}
                    with lock:
                        for h in got:
                            key = f"key{jobs[h.job_id].args['k']}"
                            live[key] = live.get(key, 0) + 1
                            order.setdefault(key, []).append(h.job_id)
                            if live[key] > 1:
                                over.append(key)
                    with lock:
                        for h in got:
                            live[f"key{jobs[h.job_id].args['k']}"] -= 1
                    mine.complete_many([(h, None) for h in got])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not over
    assert sum(len(v) for v in order.values()) == keys * per_key
    # Within a key, jobs started in claim order (equal priority: run_at, id).
    for key, started in order.items():
        assert started == sorted(started), key


def test_limit_and_keys_together(broker: Broker, conn: Conn) -> None:
    configure(broker, "lim", concurrency_limit=2)
    ids = [broker.enqueue("t", {"n": i}, queue="lim").id for i in range(4)]
    for job_id in ids:
        keyed(conn, job_id, "same")
    [one] = broker.claim(["lim"], 10, "w:1")
    assert one.job_id == ids[0]
    assert broker.claim(["lim"], 10, "w:1") == []


def keyed_queues(conn: Conn) -> list[str]:
    return [r[0] for r in conn.execute("SELECT name FROM broker.keyed_queues ORDER BY 1")]


def test_the_statement_that_writes_a_key_lists_its_queue_for_the_claim(
    broker: Broker, conn: Conn
) -> None:
    broker.enqueue("t", queue="plain")
    assert keyed_queues(conn) == []  # plain queues never reach _claim_flow()
    broker.enqueue("t", queue="k1", concurrency_key="a")
    broker.enqueue_many([lease_spec("k2", "b"), lease_spec("k2", None), lease_spec("k3", "c")])
    assert keyed_queues(conn) == ["k1", "k2", "k3"]
    by_hand = broker.enqueue("t", queue="k4").id
    keyed(conn, by_hand, "d")  # an operator's UPDATE lists the queue too
    assert keyed_queues(conn) == ["k1", "k2", "k3", "k4"]
    [held] = broker.claim(["k4"], 10, "w:1")
    assert held.job_id == by_hand
    # A keyed job enqueued in a transaction that rolls back leaves no listing behind.
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT broker.enqueue('t', queue => 'k5', concurrency_key => 'e')")
    assert "k5" not in keyed_queues(conn)


def lease_spec(queue: str, key: str | None) -> JobSpec:
    return JobSpec("t", queue=queue, concurrency_key=key)


# --- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"concurrency_limit": 0}, "concurrency_limit must be between 1"),
        ({"concurrency_limit": -3}, "concurrency_limit must be between 1"),
        ({"rate_limit": 0, "rate_period": 1}, "rate_limit must be between 1"),
        ({"rate_limit": 5}, "rate_limit needs a rate_period"),
        ({"rate_limit": 5, "rate_period": 0}, "rate_period must be positive"),
        ({"rate_limit": 5, "rate_period": -1}, "rate_period must be positive"),
    ],
)
def test_bad_limits_are_refused(broker: Broker, limits: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidQueueSettings, match=message):
        configure(broker, "q", **limits)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("SELECT broker.configure_queue('q', concurrency_limit => -1)", "concurrency_limit"),
        ("SELECT broker.configure_queue('q', rate_limit => 0, rate_period => '1s')", "rate_limit"),
        ("SELECT broker.configure_queue('q', rate_limit => 1)", "rate_period"),
        ("SELECT broker.configure_queue('q', rate_limit => 1, rate_period => '-1s')", "positive"),
        ("SELECT broker.configure_queue('bad name')", "queue must be"),
    ],
)
def test_sql_callers_get_the_broker_sqlstate(conn: Conn, call: str, message: str) -> None:
    with pytest.raises(psycopg.Error, match=message) as caught:
        conn.execute(call)
    assert caught.value.sqlstate == "PB010"


def test_configure_keeps_what_is_not_given(broker: Broker) -> None:
    configure(broker, "q", concurrency_limit=4)
    got = configure(broker, "q", rate_limit=10, rate_period=60)
    assert got == queue_settings.QueueSettings("q", 4, 10, 60.0, False)
    assert configure(broker, "q", concurrency_limit=None).concurrency_limit is None


# --- snooze -----------------------------------------------------------------------------


def test_snooze_requeues_later_without_counting_the_attempt(broker: Broker, conn: Conn) -> None:
    job = broker.enqueue("t")
    [held] = broker.claim(["default"], 1, "w:1")
    [out] = broker.finish_many([lease.snoozed(held, 30)])
    assert out.applied and out.state == "queued"
    row = conn.execute(
        "SELECT state, attempts, snoozes,"
        " run_at - now() BETWEEN interval '29 s' AND interval '31 s', finished_at"
        " FROM broker.jobs WHERE id = %s",
        (job.id,),
    ).fetchone()
    assert row == ("queued", 0, 1, True, None)
    ev = conn.execute(
        "SELECT event, detail->>'delay', detail->>'snoozes' FROM broker.job_events"
        " WHERE job_id = %s ORDER BY id DESC LIMIT 1",
        (job.id,),
    ).fetchone()
    assert ev == ("snoozed", "30", "1")
    assert broker.claim(["default"], 1, "w:1") == []
    advance_db_time(conn, 31)
    [again] = broker.claim(["default"], 1, "w:1")
    assert again.attempt == 1  # the snoozed attempt was not counted


def test_snooze_cap_fails_the_job(broker: Broker, conn: Conn) -> None:
    job = broker.enqueue("t")
    for _ in range(2):
        [held] = broker.claim(["default"], 1, "w:1")
        assert broker.finish_many([lease.snoozed(held, 0, max_snoozes=2)])[0].state == "queued"
    [held] = broker.claim(["default"], 1, "w:1")
    [out] = broker.finish_many([lease.snoozed(held, 0, max_snoozes=2)])
    assert out.state == "failed"
    row = conn.execute(
        "SELECT state, snoozes, last_error FROM broker.jobs WHERE id = %s", (job.id,)
    ).fetchone()
    assert row == ("failed", 2, "snoozed 2 times (max_snoozes); not snoozed again")
    events = [
        r[0]
        for r in conn.execute(
            "SELECT event FROM broker.job_events WHERE job_id = %s ORDER BY id", (job.id,)
        ).fetchall()
    ]
    assert events == ["enqueued", "claimed", "snoozed", "claimed", "snoozed", "claimed", "failed"]


def test_snooze_of_a_cancel_requested_job_cancels_it(broker: Broker) -> None:
    job = broker.enqueue("t")
    [held] = broker.claim(["default"], 1, "w:1")
    broker.cancel(job.id)
    assert broker.finish_many([lease.snoozed(held, 10)])[0].state == "cancelled"


# --- deadlines --------------------------------------------------------------------------


def test_job_past_its_deadline_is_never_claimed_and_expires(broker: Broker, conn: Conn) -> None:
    late = broker.enqueue("t", {"n": "late"}).id
    fine = broker.enqueue("t", {"n": "fine"}).id
    waiting = broker.enqueue("t", {"n": "waiting"}).id
    conn.execute("UPDATE broker.jobs SET deadline = now() - interval '1 s' WHERE id = %s", (late,))
    conn.execute("UPDATE broker.jobs SET deadline = now() + interval '1 h' WHERE id = %s", (fine,))
    conn.execute(
        "UPDATE broker.jobs SET state = 'waiting', deadline = now() - interval '1 s' WHERE id = %s",
        (waiting,),
    )
    [held] = broker.claim(["default"], 10, "w:1")
    assert held.job_id == fine
    expired = broker.run(lease.expire())
    assert sorted((r.job_id, r.state) for r in expired) == [
        (late, "cancelled"),
        (waiting, "cancelled"),
    ]
    assert broker.run(lease.expire()) == []
    ev = conn.execute(
        "SELECT event, detail ? 'deadline' FROM broker.job_events WHERE job_id = %s"
        " ORDER BY id DESC LIMIT 1",
        (late,),
    ).fetchone()
    assert ev == ("expired", True)
    assert broker.get_job(late).last_error == "deadline passed"


def test_deadline_also_bounds_flow_claims(broker: Broker, conn: Conn) -> None:
    configure(broker, "lim", concurrency_limit=5)
    job = broker.enqueue("t", queue="lim").id
    conn.execute("UPDATE broker.jobs SET deadline = now() - interval '1 s' WHERE id = %s", (job,))
    assert broker.claim(["lim"], 10, "w:1") == []
