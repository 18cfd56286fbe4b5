"""Migration 0009 (dependencies) on a database with jobs in it: up keeps them as they
were, down turns waiting jobs into queued ones and restores 0007's functions."""

from __future__ import annotations

import psycopg

from broker.migrate import downgrade, upgrade


def test_0009_up_and_down_with_jobs(empty_db_url: str) -> None:
    upgrade(empty_db_url, revision="0007")
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        old = conn.execute("SELECT broker.enqueue('k', idempotency_key => 'once')").fetchone()
        assert old is not None
        upgrade(empty_db_url, revision="0009")
        # A replay of a request fingerprinted before 0009 still matches it.
        again = conn.execute("SELECT broker.enqueue('k', idempotency_key => 'once')").fetchone()
        assert again == old
        row = conn.execute(
            "SELECT broker.enqueue('c', depends_on => ARRAY[%s]::bigint[], \"group\" => 'g')",
            old,
        ).fetchone()
        assert row is not None
        assert conn.execute("SELECT state FROM broker.jobs WHERE id = %s", row).fetchone() == (
            "waiting",
        )
        downgrade(empty_db_url, revision="0007")
        assert conn.execute("SELECT state FROM broker.jobs WHERE id = %s", row).fetchone() == (
            "queued",
        )
        assert conn.execute("SELECT to_regclass('broker.job_dependencies')").fetchone() == (None,)
        conn.execute("SELECT broker.enqueue('k', queue => 'q')")
        conn.execute("SELECT broker.cancel_job(%s)", row)
        upgrade(empty_db_url)


def test_0009_down_restores_0007_exactly(empty_db_url: str) -> None:
    from tests.migrations.test_schema_sql import catalog

    upgrade(empty_db_url, revision="0007")
    before = catalog(empty_db_url, "broker")
    upgrade(empty_db_url, revision="0009")
    assert catalog(empty_db_url, "broker") != before
    downgrade(empty_db_url, revision="0007")
    assert catalog(empty_db_url, "broker") == before
