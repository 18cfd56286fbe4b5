"""docs/operations.md runs as written: every `sql` block, in order, against a fresh
database seeded with jobs in every state (and stuck ones of every reason)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg

from broker import Broker

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
WORKER = "6f1c2d4e-8a9b-4c3d-9e2f-1a2b3c4d5e6f:1"
# Blocks about the server rather than the broker's rows may rightly return nothing here.
MAY_BE_EMPTY = ("pg_stat_activity", "pg_replication_slots")


def sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def seed(broker: Broker, conn: psycopg.Connection[Any]) -> None:
    """Jobs in every state; a stuck job of every reason; one registered worker."""
    conn.execute(
        "INSERT INTO broker.workers (worker_id, host_id, seq, hostname, pid, queues,"
        " concurrency) VALUES (%s, %s, 1, 'web-1', 4242, ARRAY['default', 'emails'], 8)",
        (WORKER, WORKER.split(":")[0]),
    )
    for n in range(3):
        broker.enqueue("send_email", {"to": f"user{n}@example.com"}, queue="emails")
    for n in range(3):
        broker.enqueue("resize", {"image": n})
    broker.enqueue("report", {"day": "2026-11-23"}, delay=3600)  # scheduled
    cleanup = broker.enqueue("cleanup", {})
    broker.cancel(cleanup.id)  # cancelled

    sent, bounced, slow = broker.claim(["emails"], 3, WORKER)
    broker.complete(sent, {"ok": True})
    broker.fail(bounced, "mailbox does not exist", retryable=False)  # failed
    broker.cancel(slow.job_id)  # running, cancel requested
    conn.execute(
        "UPDATE broker.jobs SET cancel_requested_at = now() - interval '2 minutes' WHERE id = %s",
        (slow.job_id,),
    )
    done, expired = broker.claim(["default"], 2, WORKER)
    broker.complete(done)
    conn.execute(  # succeeded long enough ago to be pruned by the doc's example
        "UPDATE broker.jobs SET finished_at = now() - interval '2 hours' WHERE id = %s",
        (done.job_id,),
    )
    conn.execute(  # running past its lease, nobody reaped it
        "UPDATE broker.jobs SET lease_expires_at = now() - interval '1 minute' WHERE id = %s",
        (expired.job_id,),
    )
    conn.execute(  # runnable for 20 minutes, nobody claimed it
        "UPDATE broker.jobs SET run_at = now() - interval '20 minutes'"
        " WHERE state = 'queued' AND kind = 'resize'"
    )


def run_block(conn: psycopg.Connection[Any], code: str) -> list[list[Any]]:
    """Execute one block (possibly several statements); the rows of each result."""
    cur = conn.execute(code.encode())
    results: list[list[Any]] = []
    while True:
        if cur.description is not None:
            results.append(cur.fetchall())
        if not cur.nextset():
            break
    return results


def test_every_sql_block_runs(broker: Broker, conn: psycopg.Connection[Any]) -> None:
    seed(broker, conn)
    stuck = dict(conn.execute("SELECT reason, count(*) FROM broker.stuck_jobs GROUP BY 1"))
    assert stuck == {"lease_expired": 1, "cancel_unacknowledged": 1, "waiting": 1}

    blocks = sql_blocks()
    assert len(blocks) >= 15
    for code in blocks:
        try:
            results = run_block(conn, code)
        except psycopg.Error as exc:
            raise AssertionError(f"docs/operations.md block failed: {exc}\n{code}") from exc
        if code.startswith("DO ") or any(name in code for name in MAY_BE_EMPTY):
            continue
        assert results, f"block returned no result:\n{code}"
        assert all(rows for rows in results), f"block returned no rows:\n{code}"

    states = dict(conn.execute("SELECT kind || '/' || state, count(*) FROM broker.jobs GROUP BY 1"))
    assert "send_email/failed" not in states  # retried by the doc
    assert states["send_email/queued"] == 1
    assert "resize/queued" not in states  # cancelled by the doc
    assert "cleanup/cancelled" not in states  # pruned by the doc
    assert "resize/succeeded" not in states  # pruned (finished two hours ago)
    assert states["send_email/succeeded"] == 1  # finished just now: kept
    paused = conn.execute("SELECT count(*) FROM broker.queues WHERE paused").fetchone()
    assert paused == (0,)  # paused, then resumed by the doc
