"""The finished-job rollup (broker.job_counts) always equals a count of the jobs themselves,
whatever writes them: the broker's transitions, the pruner, an operator's own SQL."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from broker import Broker, JobSpec
from broker.lease import Failure

FINISHED = ("succeeded", "failed", "cancelled")


def counted(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], int]:
    rows = conn.execute(
        "SELECT queue, state, count(*) FROM broker.jobs"
        " WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2"
    ).fetchall()
    return {(q, s): n for q, s, n in rows}


def rolled_up(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], int]:
    rows = conn.execute(
        "SELECT queue, state, sum(n)::bigint FROM broker.job_counts GROUP BY 1, 2"
        " HAVING sum(n) <> 0"
    ).fetchall()
    return {(q, s): n for q, s, n in rows}


def from_queue_stats(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], int]:
    rows = conn.execute(
        "SELECT queue, succeeded, failed, cancelled FROM broker.queue_stats"
    ).fetchall()
    return {(q, state): n for q, *ns in rows for state, n in zip(FINISHED, ns, strict=True) if n}


def test_every_writer_keeps_the_rollup_exact(broker: Broker, conn: psycopg.Connection[Any]) -> None:
    broker.enqueue_many([JobSpec("k", queue="a") for _ in range(30)])
    broker.enqueue_many([JobSpec("k", queue="b", max_attempts=1) for _ in range(20)])
    broker.enqueue_many([JobSpec("k", queue="a") for _ in range(600)])  # the COPY path
    ok = broker.claim(["a"], 10, "w:1")
    broker.complete_many([(lease, {"n": 1}) for lease in ok])
    bad = broker.claim(["b"], 8, "w:1")
    broker.fail_many([(lease, Failure("boom")) for lease in bad])  # final: max_attempts=1
    queued = conn.execute("SELECT id FROM broker.jobs WHERE state = 'queued' LIMIT 5").fetchall()
    for (job_id,) in queued:
        broker.cancel(job_id)
    broker.retry(bad[0].job_id)
    broker.retry(queued[0][0])
    assert counted(conn) == rolled_up(conn) == from_queue_stats(conn)
    assert counted(conn)[("a", "succeeded")] == 10

    conn.execute("SELECT broker.prune_jobs('succeeded', interval '0', 4)")  # folds too
    conn.execute("DELETE FROM broker.jobs WHERE state = 'cancelled' AND queue = 'a'")
    conn.execute("UPDATE broker.jobs SET queue = 'c' WHERE state = 'failed'")
    conn.execute(
        "INSERT INTO broker.jobs (kind, state, finished_at) VALUES ('k', 'succeeded', now())"
    )
    assert counted(conn) == rolled_up(conn) == from_queue_stats(conn)
    assert counted(conn)[("a", "succeeded")] == 6

    conn.execute("SELECT broker.fold_job_counts()")
    rows = conn.execute("SELECT count(*) FROM broker.job_counts").fetchone()
    assert rows is not None and rows[0] == len(counted(conn))
    assert counted(conn) == rolled_up(conn) == from_queue_stats(conn)

    conn.execute("TRUNCATE broker.jobs")
    assert rolled_up(conn) == {} and from_queue_stats(conn) == {}


def test_concurrent_writers_and_folds_stay_exact(
    db_url: str, conn: psycopg.Connection[Any]
) -> None:
    with Broker.connect(db_url, max_size=4) as client:
        client.enqueue_many([JobSpec("k", queue=f"q{i % 3}") for i in range(3000)])
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with Broker.connect(db_url, max_size=1) as client:
                while leases := client.claim(["q0", "q1", "q2"], 25, f"w:{n}"):
                    client.complete_many([(lease, None) for lease in leases])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def fold() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                for _ in range(200):
                    c.execute("SELECT broker.fold_job_counts()")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=fold) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert counted(conn) == rolled_up(conn) == from_queue_stats(conn)
    assert sum(counted(conn).values()) == 3000


def test_recount_rebuilds_the_rollup(broker: Broker, conn: psycopg.Connection[Any]) -> None:
    broker.enqueue_many([JobSpec("k") for _ in range(5)])
    broker.complete_many([(lease, None) for lease in broker.claim(["default"], 5, "w:1")])
    conn.execute("DELETE FROM broker.job_counts")  # an operator emptied it by hand
    assert rolled_up(conn) == {}
    conn.execute("SELECT broker.recount_jobs()")
    assert rolled_up(conn) == counted(conn) == {("default", "succeeded"): 5}
