"""Enqueues notify a queue only while a worker waits on it (broker.claim_waiters).

Every enqueue of a runnable job sent a NOTIFY, and PostgreSQL lets notifying transactions
commit one at a time, so ten clients enqueueing one job per call ran at about a quarter
of the same clients' bare INSERTs. A worker whose claim comes back empty now registers in
broker.claim_waiters before it sleeps on LISTEN; _wake_queue() (called where the
enqueue statements, the finish statement and enqueue_many() called pg_notify) takes the
queue's advisory lock shared and notifies only when a live registration exists, and
_claim_waiters_settled() is the worker's proof, before its last claim, that no enqueue
which missed its registration is still in flight (decision 028). The statements in
broker/sql/jobs.sql change with the code; enqueue_many() changes here, by replacing its
one pg_notify call in the definition the database holds.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

ENQUEUE_MANY = "enqueue_many(jsonb)"

FUNCTIONS = r"""
CREATE FUNCTION {s}._wake_queue(channel text, queue text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared(hashtext('{s}.claim_waiters'), hashtext(queue));
  IF current_setting('transaction_isolation') <> 'read committed'
     OR EXISTS (SELECT 1 FROM {s}.claim_waiters w
                WHERE w.queue = _wake_queue.queue AND w.expires_at > now()) THEN
    PERFORM pg_notify(channel, queue);
    RETURN true;
  END IF;
  RETURN false;
END
$$;

CREATE FUNCTION {s}._claim_waiters_settled(queues text[]) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
  SELECT coalesce(bool_and(pg_try_advisory_xact_lock(hashtext('{s}.claim_waiters'),
                                                     hashtext(q))), true)
  FROM unnest(queues) AS q
$$;
"""


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def _replace_in_enqueue_many(s: str, old: str, new: str) -> None:
    """Redefine enqueue_many() with its one `old` call replaced by `new`."""
    conn = op.get_bind()
    definition = conn.execute(
        sa.text("SELECT pg_get_functiondef(CAST(:fn AS regprocedure))"),
        {"fn": f"{s}.{ENQUEUE_MANY}"},
    ).scalar_one()
    assert definition.count(old) == 1, f"enqueue_many() does not call {old} once"
    # Sent as it is, without bind parameters: the body is plpgsql, not a SQLAlchemy text.
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    with dbapi.cursor() as cursor:
        cursor.execute(definition.replace(old, new))


def upgrade() -> None:
    s = _schema()
    op.create_table(
        "claim_waiters",
        sa.Column("queue", sa.Text, primary_key=True),
        sa.Column("worker_id", sa.Text, primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        schema=s,
    )
    op.execute(FUNCTIONS.format(s=s))
    _replace_in_enqueue_many(
        s,
        f"count(pg_notify('{s}_jobs', q.queue))",
        f"count({s}._wake_queue('{s}_jobs', q.queue))",
    )


def downgrade() -> None:
    s = _schema()
    _replace_in_enqueue_many(
        s,
        f"count({s}._wake_queue('{s}_jobs', q.queue))",
        f"count(pg_notify('{s}_jobs', q.queue))",
    )
    op.execute(f"DROP FUNCTION {s}._claim_waiters_settled(text[])")
    op.execute(f"DROP FUNCTION {s}._wake_queue(text, text)")
    op.drop_table("claim_waiters", schema=s)
