"""The Python client refuses text and JSON the database cannot store (InvalidJobError, not a
raw psycopg or Unicode error), and a row it cannot decode fails only its own job."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from broker import Broker, InvalidJobError, JobSpec
from broker.spec import UnreadableJSON

Conn = psycopg.Connection[tuple[Any, ...]]


def insert_unreadable(conn: Conn, queue: str = "default") -> int:
    """A job whose args nest deeper than Python's decoder can go, inserted past the doors."""
    deep = '{"deep": ' + "[" * 2000 + "]" * 2000 + "}"
    row = conn.execute(
        "INSERT INTO broker.jobs (kind, args, queue, priority) VALUES ('k', %s::jsonb, %s, 9)"
        " RETURNING id",
        (deep, queue),
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"args": {"a": "\x00"}}, "args must not contain NUL"),
        ({"args": {"\ud800": 1}}, "args must be valid Unicode"),
        ({"kind": "k\x00"}, "kind must be"),
        ({"queue": "\ud800"}, "queue must be"),
        ({"tags": ["t\x00"]}, "each tag must be"),
        ({"tags": ["\udfff"]}, "tags must be valid Unicode"),
        ({"idempotency_key": "k\x00"}, "idempotency_key must be"),
        ({"subject_key": "\ud800"}, "subject_key must be"),
    ],
)
def test_enqueue_refuses_text_the_database_cannot_store(
    broker: Broker, conn: Conn, options: dict[str, Any], why: str
) -> None:
    kind = options.pop("kind", "k")
    args = options.pop("args", {})
    with pytest.raises(InvalidJobError, match=why):
        broker.enqueue(kind, args, **options)
    with pytest.raises(InvalidJobError, match=why):
        broker.enqueue_many([JobSpec(kind, args, **options)] * 500)  # the COPY path
    assert conn.execute("SELECT count(*) FROM broker.jobs").fetchone() == (0,)


def test_worker_writes_refuse_what_the_database_cannot_store(broker: Broker, conn: Conn) -> None:
    broker.enqueue("k")
    [held] = broker.claim(["default"], 1, "w:1")
    deep: Any = 1
    for _ in range(70):
        deep = [deep]
    for write in (
        lambda: broker.complete(held, {"a": "\x00"}),
        lambda: broker.complete(held, "\ud800"),
        lambda: broker.complete(held, deep),
        lambda: broker.fail(held, "bad\x00"),
        lambda: broker.fail(held, "\ud800"),
        lambda: broker.append_logs([(held, "ok"), (held, "bad\x00")]),
        lambda: broker.cancel_ack_many([(held, "\x00")]),
    ):
        with pytest.raises(InvalidJobError):
            write()
    assert conn.execute("SELECT state, result FROM broker.jobs").fetchone() == ("running", None)
    assert conn.execute("SELECT count(*) FROM broker.job_logs").fetchone() == (0,)
    broker.complete(held, {"ok": True})


def test_lookups_with_unstorable_text_are_invalid_input(broker: Broker) -> None:
    from broker.inspection import JobFilter, list_jobs

    for tag in ("\x00", "\ud800"):
        with pytest.raises(InvalidJobError):
            broker.run(list_jobs(JobFilter(tag=tag), 10, None))


def test_claim_fails_a_row_it_cannot_decode_and_returns_the_rest(
    broker: Broker, conn: Conn
) -> None:
    good = [e.id for e in broker.enqueue_many([JobSpec("k", {"n": n}) for n in range(3)])]
    bad = insert_unreadable(conn)
    leases = broker.claim(["default"], 10, "w:1")
    assert sorted(held.job_id for held in leases) == good
    job = broker.get_job(bad)
    assert (job.state, job.attempts) == ("failed", 1)
    assert job.last_error is not None and "args cannot be decoded" in job.last_error
    assert isinstance(job.args, UnreadableJSON)
    assert [e.event for e in broker.events(bad)] == ["claimed", "failed"]
    for held in leases:
        broker.complete(held)
