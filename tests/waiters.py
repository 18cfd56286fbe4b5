"""A test's LISTEN connection hears `<schema>_jobs` only for a queue a worker waits on.

Enqueues notify a queue only while a registration in claim_waiters is live (decision
028); a worker writes one after an empty claim (broker/worker/wakeups.py). A test that
LISTENs itself registers the same way.
"""

from __future__ import annotations

from typing import Any

import psycopg


def wait_on(
    conn: psycopg.Connection[Any], *queues: str, schema: str = "broker", worker_id: str = "test"
) -> None:
    """Register `worker_id` as waiting on `queues` for ten minutes (committed at once when
    `conn` is in autocommit)."""
    conn.execute(
        f"INSERT INTO {schema}.claim_waiters (queue, worker_id, expires_at)"
        " SELECT q, %s, now() + interval '10 minutes' FROM unnest(%s::text[]) AS q"
        " ON CONFLICT (queue, worker_id) DO UPDATE SET expires_at = excluded.expires_at",
        [worker_id, list(queues)],
    )
