"""Idempotency keys: at most one job per key, even when many submitters race with it.

A repeat of the same request returns the first job (created=False); a different request
under a used key is an IdempotencyConflict. The request fingerprint is canonical JSON, so
object key order and whitespace never make two equal requests differ.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest

from broker import Broker
from broker.errors import IdempotencyConflict
from broker.lease import Enqueued, JobSpec

Conn = psycopg.Connection[tuple[Any, ...]]

SUBMITTERS = 20
ROUNDS = 10
BARRIER_TIMEOUT = 120.0


@pytest.fixture
def submitter_conns(db_url: str) -> Iterator[list[Conn]]:
    """SUBMITTERS autocommit connections, opened before any race."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(psycopg.connect(db_url, autocommit=True)) for _ in range(SUBMITTERS)
        ]


def _all_at_once(
    conns: list[Conn], submit: Callable[[int, Conn], Enqueued]
) -> list[Enqueued | BaseException]:
    """Call submit(i, conn) on every connection, each in its own thread, released together."""
    barrier = threading.Barrier(len(conns), timeout=BARRIER_TIMEOUT)
    outcomes: list[Enqueued | BaseException | None] = [None] * len(conns)

    def run(index: int, conn: Conn) -> None:
        try:
            barrier.wait()
            outcomes[index] = submit(index, conn)
        except BaseException as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(conns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BARRIER_TIMEOUT)
    assert all(o is not None for o in outcomes), "a submitter never finished"
    return [o for o in outcomes if o is not None]


def _jobs_with_key(conn: Conn, key: str) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM broker.jobs WHERE idempotency_key = %s ORDER BY id", (key,)
    ).fetchall()
    return [int(r[0]) for r in rows]


def _enqueued_events(conn: Conn, job_id: int) -> int:
    row = conn.execute(
        "SELECT count(*) FROM broker.job_events WHERE job_id = %s AND event = 'enqueued'",
        (job_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_concurrent_same_request_makes_one_job(
    broker: Broker, submitter_conns: list[Conn], conn: Conn
) -> None:
    for round_ in range(ROUNDS):
        key = f"order-{round_}"

        def submit(_i: int, c: Conn, key: str = key) -> Enqueued:
            return broker.enqueue(
                "charge", {"order": 7, "cents": 1999}, idempotency_key=key, conn=c
            )

        outcomes = _all_at_once(submitter_conns, submit)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert errors == []
        results = [o for o in outcomes if isinstance(o, Enqueued)]
        assert len({r.id for r in results}) == 1
        assert sum(r.created for r in results) == 1
        assert _jobs_with_key(conn, key) == [results[0].id]
        assert _enqueued_events(conn, results[0].id) == 1


def test_concurrent_different_requests_one_wins_the_rest_conflict(
    broker: Broker, submitter_conns: list[Conn], conn: Conn
) -> None:
    for round_ in range(ROUNDS):
        key = f"signup-{round_}"

        def submit(i: int, c: Conn, key: str = key) -> Enqueued:
            # Even submitters send one request, odd ones another, under the same key.
            return broker.enqueue("welcome", {"plan": i % 2}, idempotency_key=key, conn=c)

        outcomes = _all_at_once(submitter_conns, submit)
        [job_id] = _jobs_with_key(conn, key)
        [plan] = conn.execute("SELECT args->'plan' FROM broker.jobs WHERE id = %s", (job_id,))
        for i, outcome in enumerate(outcomes):
            if i % 2 == plan[0]:
                assert isinstance(outcome, Enqueued) and outcome.id == job_id
            else:
                assert isinstance(outcome, IdempotencyConflict)
                assert (outcome.key, outcome.job_id) == (key, job_id)
        assert sum(isinstance(o, Enqueued) and o.created for o in outcomes) == 1


def test_different_request_same_key_conflicts(broker: Broker, conn: Conn) -> None:
    first = broker.enqueue("charge", {"cents": 100}, idempotency_key="k")
    assert first.created
    variants: list[dict[str, Any]] = [
        {"args": {"cents": 101}},
        {"args": {"cents": 100}, "queue": "other"},
        {"args": {"cents": 100}, "priority": 1},
        {"args": {"cents": 100}, "delay": 5},
        {"args": {"cents": 100}, "max_attempts": 2},
    ]
    for options in variants:
        with pytest.raises(IdempotencyConflict) as conflict:
            broker.enqueue("charge", idempotency_key="k", **options)
        assert (conflict.value.key, conflict.value.job_id) == ("k", first.id)
    with pytest.raises(IdempotencyConflict):
        broker.enqueue("refund", {"cents": 100}, idempotency_key="k")
    assert _jobs_with_key(conn, "k") == [first.id]
    again = broker.enqueue("charge", {"cents": 100}, idempotency_key="k")
    # (The answer may carry routing warnings: no worker serves the queue here.)
    assert (again.id, again.created) == (first.id, False)


def test_fingerprint_ignores_json_key_order(broker: Broker, conn: Conn) -> None:
    first = broker.enqueue(
        "sync", {"a": 1, "b": 2, "n": {"x": [1, 2], "y": "z"}}, idempotency_key="ko"
    )
    same = broker.enqueue(
        "sync", {"n": {"y": "z", "x": [1, 2]}, "b": 2, "a": 1}, idempotency_key="ko"
    )
    assert (first.created, same.id, same.created) == (True, first.id, False)
    # Through SQL, with other key order and whitespace: still the same request.
    row = conn.execute(
        "SELECT broker.enqueue('sync', %s::jsonb, idempotency_key => 'ko')",
        ('{ "b" : 2,"n":{"y":"z",  "x":[1,2]}, "a":1 }',),
    ).fetchone()
    assert row == (first.id,)
    # Array order is data, not formatting: a different request.
    with pytest.raises(IdempotencyConflict):
        broker.enqueue("sync", {"a": 1, "b": 2, "n": {"x": [2, 1], "y": "z"}}, idempotency_key="ko")
    assert _jobs_with_key(conn, "ko") == [first.id]


def test_batch_mixing_new_and_repeated_keys_keeps_input_order(broker: Broker, conn: Conn) -> None:
    old_1 = broker.enqueue("mail", {"to": 1}, idempotency_key="m1").id
    old_3 = broker.enqueue("mail", {"to": 3}, idempotency_key="m3").id
    batch = [
        JobSpec("mail", {"to": 0}, idempotency_key="m0"),
        JobSpec("mail", {"to": 1}, idempotency_key="m1"),
        JobSpec("mail", {"to": 2}, idempotency_key="m2"),
        JobSpec("mail", {"to": 3}, idempotency_key="m3"),
        JobSpec("mail", {"to": 4}),
        JobSpec("mail", {"to": 2}, idempotency_key="m2"),
    ]
    results = broker.enqueue_many(batch)
    assert [r.created for r in results] == [True, False, True, False, True, False]
    assert (results[1].id, results[3].id) == (old_1, old_3)
    assert results[5].id == results[2].id
    new_ids = [results[0].id, results[2].id, results[4].id]
    assert len(set(new_ids) | {old_1, old_3}) == 5
    for spec, result in zip(batch, results, strict=True):
        assert broker.get_job(result.id).args == spec.args
    assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == (5,)


def test_batch_with_a_conflict_enqueues_nothing(broker: Broker, conn: Conn) -> None:
    broker.enqueue("mail", {"to": 1}, idempotency_key="c1")
    with pytest.raises(IdempotencyConflict):
        broker.enqueue_many(
            [
                JobSpec("mail", {"to": 9}, idempotency_key="c9"),
                JobSpec("mail", {"to": 2}, idempotency_key="c1"),
            ]
        )
    assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == (1,)
    assert _jobs_with_key(conn, "c9") == []


def test_sql_enqueue_keeps_null_args(broker: Broker, conn: Conn) -> None:
    args = {"a": None, "n": {"y": None}}
    row = conn.execute(
        "SELECT broker.enqueue('nulls', %s::jsonb, idempotency_key => 'nk')",
        ('{"a": null, "n": {"y": null}}',),
    ).fetchone()
    assert row is not None
    assert broker.get_job(int(row[0])).args == args
    replay = broker.enqueue("nulls", args, idempotency_key="nk")
    assert (replay.id, replay.created) == (int(row[0]), False)
