"""Waiters are woken by NOTIFY: every transition into a terminal state notifies
`<schema>_done` with the job ids.

A statement-level trigger on broker.jobs, so every writer notifies (the finish
statement, the reaper, cancel_job(), a dependency cascade, an operator's UPDATE) and a
statement that ends a hundred jobs sends one notification, not a hundred. A payload
holds at most 300 ids (6,000 bytes; the limit is 8,000), so a larger statement sends one
per 300. broker.waiting (Broker.wait, AsyncBroker.wait, GET /v1/jobs/{id}?wait=) listens.
The transition table is the one jobs_count_update already has PostgreSQL capture.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

FUNCTIONS = r"""
CREATE FUNCTION {s}.notify_done() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{done_channel}', string_agg(id::text, ','))
  FROM (SELECT id, (row_number() OVER () - 1) / 300 AS chunk FROM new_rows
        WHERE state IN ('succeeded', 'failed', 'cancelled')) ended
  GROUP BY chunk;
  RETURN NULL;
END
$$;

CREATE TRIGGER jobs_done_notify AFTER UPDATE ON {s}.jobs
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {s}.notify_done();
"""


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def upgrade() -> None:
    s = _schema()
    op.execute(FUNCTIONS.format(s=s, done_channel=f"{s}_done"))


def downgrade() -> None:
    s = _schema()
    op.execute(f"DROP TRIGGER jobs_done_notify ON {s}.jobs")
    op.execute(f"DROP FUNCTION {s}.notify_done()")
