"""Errors that are the caller's transaction's, not the broker's (a statement timeout, a
serialization failure), reach the caller as psycopg raised them."""

from __future__ import annotations

import psycopg
import pytest

from broker import Broker, lease


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
