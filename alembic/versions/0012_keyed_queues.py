"""The claim's gate (keyed queues) and the waiters' registry (no NOTIFY without waiters).

Every claim called _claim_flow(), which looks each asked-for queue up in broker.queues and
probes jobs_keyed_idx for queued jobs with a concurrency_key: about 6% of a claim of 100
from an unlimited queue (bench/flow_micro.py). Now job_claim calls it only when one of its
queues is paused or limited (broker.queues) or has ever held a keyed job
(broker.keyed_queues, new here): one lookup in each small table, in the claim's own
snapshot. The jobs trigger function (_count_finished) lists a queue in keyed_queues in
the statement that writes its first keyed job, so a claim that can see a keyed job can
see its queue listed. Rows are never removed: clearing one safely would have to exclude an
uncommitted keyed insert, and a listed queue without keyed jobs costs only the function
call it always cost (decision 014).

The worker's claim connection now asks for generic plans (broker/worker/_conn.py);
_claim_flow() keeps plan_cache_mode=auto for its own statements, whose LIMIT and queue
are plpgsql variables that a generic plan would guess at.

The done NOTIFY (migration 0011) was sent by every statement that ended jobs, and
PostgreSQL serializes the commits of notifying transactions (one queue lock per
database), so every worker's every finish did. Now waiters register the jobs they wait
for in broker.job_waiters (unlogged: a restart ends every wait anyway; rows expire) before
they read them; the trigger notifies only registered ids, and nothing while the table is
empty (decision 015).

The trigger function also reads its new rows once to learn whether any job ended or is
keyed, so a claim or a heartbeat runs two small scans instead of five statements.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# The trigger function as 0011 left it (the downgrade).
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
    IF lo IS NOT NULL THEN
      -- Waiters (broker.waiting) hear which jobs ended: their ids, 300 per payload (the
      -- limit is 8,000 bytes), one notification per statement (migration 0011).
      PERFORM pg_notify('{done_channel}', string_agg(id::text, ','))
      FROM (SELECT id, (row_number() OVER () - 1) / 300 AS chunk FROM new_rows
            WHERE state IN ('succeeded', 'failed', 'cancelled')) ended
      GROUP BY chunk;
    END IF;
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

# The trigger function after: it lists keyed queues, notifies only registered waiters,
# and gives a claim or a heartbeat (nothing ended, nothing keyed) two scans in all.
AFTER = r"""
CREATE OR REPLACE FUNCTION {s}._count_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  lo bigint;
  hi bigint;
  keyed boolean;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {s}.job_counts;
    DELETE FROM {s}.job_dependencies;
    RETURN NULL;
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, count(*) FROM new_rows WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2;
    SELECT bool_or(concurrency_key IS NOT NULL) INTO keyed FROM new_rows;
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
    RETURN NULL;
  ELSE
    -- One pass over the new rows says what else there is to do; a claim or a heartbeat
    -- (nothing ended, nothing keyed) then reads the old rows once and is done.
    SELECT min(id) FILTER (WHERE state IN ('succeeded', 'failed', 'cancelled')),
           max(id) FILTER (WHERE state IN ('succeeded', 'failed', 'cancelled')),
           bool_or(concurrency_key IS NOT NULL)
    INTO lo, hi, keyed FROM new_rows;
    IF lo IS NOT NULL OR EXISTS (SELECT 1 FROM old_rows
                                 WHERE state IN ('succeeded', 'failed', 'cancelled')) THEN
      INSERT INTO {s}.job_counts (queue, state, n)
      SELECT queue, state, sum(d) FROM (
        SELECT queue, state, 1 AS d FROM new_rows WHERE state IN ('succeeded', 'failed', 'cancelled')
        UNION ALL
        SELECT queue, state, -1 FROM old_rows WHERE state IN ('succeeded', 'failed', 'cancelled')
      ) x GROUP BY 1, 2 HAVING sum(d) <> 0;
    END IF;
    IF lo IS NOT NULL THEN
      -- Waiters (broker.waiting) hear which of the jobs they wait for ended: their ids,
      -- 300 per payload (the limit is 8,000 bytes), one notification per statement, and
      -- none while nobody waits (a NOTIFY serializes committing transactions; migration
      -- 0012). A waiter registers in job_waiters before it reads the job, and this check
      -- takes a snapshot of its own after every row of the statement is written, so a
      -- registration it misses was committed after those rows were locked: the waiter's
      -- read (job_wait_settled, FOR SHARE SKIP LOCKED) finds them locked and looks again.
      IF EXISTS (SELECT 1 FROM {s}.job_waiters) THEN
        PERFORM pg_notify('{done_channel}', string_agg(id::text, ','))
        FROM (SELECT n.id, (row_number() OVER () - 1) / 300 AS chunk FROM new_rows n
              WHERE n.state IN ('succeeded', 'failed', 'cancelled')
                AND EXISTS (SELECT 1 FROM {s}.job_waiters w WHERE w.job_id = n.id)) ended
        GROUP BY chunk;
      END IF;
      -- One range probe first: no edge names a job between the lowest and highest id
      -- that ended here (always so for anyone not using dependencies); only then one
      -- probe per job that ended.
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
  END IF;
  -- The claim's gate (job_claim): a queue that has held a job with a concurrency_key is
  -- listed once, by the statement that wrote the key (an enqueue, or an UPDATE by hand),
  -- so no claim can see a keyed job and miss its queue. Once listed, a keyed write only
  -- reads the list (no lock).
  IF keyed AND EXISTS (SELECT 1 FROM new_rows n WHERE n.concurrency_key IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM {s}.keyed_queues k WHERE k.name = n.queue)) THEN
    INSERT INTO {s}.keyed_queues (name)
    SELECT DISTINCT queue FROM new_rows WHERE concurrency_key IS NOT NULL
    ON CONFLICT DO NOTHING;
  END IF;
  RETURN NULL;
END
$$;
"""

CLAIM_FLOW = "_claim_flow(text[], integer, text, double precision)"


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def upgrade() -> None:
    s = _schema()
    op.create_table("keyed_queues", sa.Column("name", sa.Text, primary_key=True), schema=s)
    op.execute(
        f"INSERT INTO {s}.keyed_queues (name) SELECT DISTINCT queue FROM {s}.jobs"
        " WHERE concurrency_key IS NOT NULL"
    )
    op.create_table(
        "job_waiters",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("job_id", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        schema=s,
        prefixes=["UNLOGGED"],
    )
    op.create_index("job_waiters_job_idx", "job_waiters", ["job_id"], schema=s)
    op.execute(AFTER.format(s=s, done_channel=f"{s}_done"))
    op.execute(f"ALTER FUNCTION {s}.{CLAIM_FLOW} SET plan_cache_mode = auto")


def downgrade() -> None:
    s = _schema()
    op.execute(f"ALTER FUNCTION {s}.{CLAIM_FLOW} RESET plan_cache_mode")
    op.execute(BEFORE.format(s=s, done_channel=f"{s}_done"))
    op.drop_table("job_waiters", schema=s)
    op.drop_table("keyed_queues", schema=s)
