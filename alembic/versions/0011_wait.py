"""Waiters are woken by NOTIFY: every statement that ends jobs notifies `<schema>_done`
with their ids.

The jobs table's statement trigger function (_count_finished, which already reads the
ended rows of every UPDATE for the rollup and the dependencies) sends it, so every
writer notifies (the finish statement, the reaper, cancel_job(), the dependency cascade,
deadline expiry, an operator's UPDATE) and a statement that ends a hundred jobs sends one
notification, not a hundred. A payload holds at most 300 ids (6,000 bytes; the limit is
8,000). A claim or a heartbeat ends nothing and sends nothing. broker.waiting
(Broker.wait, AsyncBroker.wait, GET /v1/jobs/{id}?wait=) listens (decision 015).

A separate trigger for this cost 0.14 ms per claim + finish of 100 jobs (3%: one more
plpgsql call and scan of the transition table on every UPDATE); inside the existing
function it costs only the notification, and only when jobs ended.

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

# The trigger function as 0009 left it; upgrade() adds NOTIFY after ANCHOR.
BEFORE = r"""
CREATE OR REPLACE FUNCTION {s}._count_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  lo bigint;
  hi bigint;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {s}.job_counts;
    DELETE FROM {s}.job_dependencies;
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, count(*) FROM new_rows WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, -count(*) FROM old_rows WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2;
    DELETE FROM {s}.job_dependencies d USING old_rows o WHERE d.job_id = o.id;
    IF EXISTS (SELECT 1 FROM old_rows o WHERE o.state <> 'succeeded'
               AND EXISTS (SELECT 1 FROM {s}.job_dependencies d WHERE d.depends_on = o.id)) THEN
      PERFORM {s}._resolve_dependents(
        ARRAY(SELECT id FROM old_rows WHERE state <> 'succeeded'),
        ARRAY(SELECT 'deleted'::text FROM old_rows WHERE state <> 'succeeded'), '{{}}');
    END IF;
  ELSE
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, sum(d) FROM (
      SELECT queue, state, 1 AS d FROM new_rows WHERE state IN ('succeeded', 'failed', 'cancelled')
      UNION ALL
      SELECT queue, state, -1 FROM old_rows WHERE state IN ('succeeded', 'failed', 'cancelled')
    ) x GROUP BY 1, 2 HAVING sum(d) <> 0;
    -- One range probe first: no edge names a job between the lowest and highest id that
    -- ended here (always so for a claim or heartbeat, whose rows did not end, and for
    -- anyone not using dependencies); only then one probe per job that ended.
    SELECT min(id), max(id) INTO lo, hi FROM new_rows
    WHERE state IN ('succeeded', 'failed', 'cancelled');
    IF EXISTS (SELECT 1 FROM {s}.job_dependencies d WHERE d.depends_on BETWEEN lo AND hi)
       AND EXISTS (SELECT 1 FROM new_rows n WHERE n.state IN ('succeeded', 'failed', 'cancelled')
                   AND EXISTS (SELECT 1 FROM {s}.job_dependencies d WHERE d.depends_on = n.id)) THEN
      PERFORM {s}._resolve_dependents(
        ARRAY(SELECT n.id FROM new_rows n JOIN old_rows o USING (id)
              WHERE n.state IN ('failed', 'cancelled') AND o.state <> n.state ORDER BY 1),
        ARRAY(SELECT n.state FROM new_rows n JOIN old_rows o USING (id)
              WHERE n.state IN ('failed', 'cancelled') AND o.state <> n.state ORDER BY n.id),
        ARRAY(SELECT n.id FROM new_rows n JOIN old_rows o USING (id)
              WHERE n.state = 'succeeded' AND o.state <> 'succeeded'));
    END IF;
  END IF;
  RETURN NULL;
END
$$;
"""

ANCHOR = """    WHERE state IN ('succeeded', 'failed', 'cancelled');
"""

NOTIFY = """    IF lo IS NOT NULL THEN
      -- Waiters (broker.waiting) hear which jobs ended: their ids, 300 per payload (the
      -- limit is 8,000 bytes), one notification per statement (migration 0011).
      PERFORM pg_notify('{done_channel}', string_agg(id::text, ','))
      FROM (SELECT id, (row_number() OVER () - 1) / 300 AS chunk FROM new_rows
            WHERE state IN ('succeeded', 'failed', 'cancelled')) ended
      GROUP BY chunk;
    END IF;
"""


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def upgrade() -> None:
    s = _schema()
    after = BEFORE.replace(ANCHOR, ANCHOR + NOTIFY, 1)
    op.execute(after.format(s=s, done_channel=f"{s}_done"))


def downgrade() -> None:
    s = _schema()
    op.execute(BEFORE.format(s=s))
