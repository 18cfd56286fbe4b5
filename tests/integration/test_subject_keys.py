"""subject_key supersede where it meets an idempotency key repeated in one batch, and the
isolation levels it cannot work under."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from broker import Broker, InvalidJobError, JobSpec

Conn = psycopg.Connection[tuple[Any, ...]]


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


def test_subject_key_refused_under_repeatable_read(broker: Broker, db_url: str) -> None:
    with psycopg.connect(db_url) as caller:
        caller.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(InvalidJobError, match="READ COMMITTED or SERIALIZABLE"):
            broker.enqueue("k", subject_key="s", conn=caller)
