"""One plain job without the enqueue function; inserts cost the jobs trigger nothing.

A one-job enqueue ran enqueue_many(jsonb): about 0.4 of a bare INSERT per call. Plain
jobs (no idempotency or subject key, no dependencies) now take a single INSERT statement
of their own (broker/sql/jobs.sql job_enqueue_one, nothing here), and this migration
takes the rest of the gap: every INSERT fired the statement trigger jobs_count_insert,
whose two queries over the transition table (born-finished jobs into job_counts, keyed
queues into keyed_queues) cost about 15% of a one-job enqueue though almost no insert
needs either. The trigger is now a row trigger whose WHEN names the rows that do (born
finished: superseded, or cancelled for a failed dependency; or keyed), calling the new
_job_inserted(); a plain insert queues no trigger event at all. _count_finished() keeps
UPDATE, DELETE and TRUNCATE, and its first query now also runs the range probe for
dependents, one statement fewer on every finish (decision 024).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# _count_finished() as 0012 left it (the downgrade).
BEFORE = r"""
CREATE OR REPLACE FUNCTION {s}._count_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  lo bigint;
  hi bigint;
  keyed boolean;
  old_ended boolean;
  waited boolean;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {s}.job_counts;
    DELETE FROM {s}.job_dependencies;
    RETURN NULL;
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, count(*) FROM new_rows WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2;
    SELECT coalesce(bool_or(concurrency_key IS NOT NULL), false) INTO keyed FROM new_rows;
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
    -- One statement says what else there is to do (each statement a plpgsql function runs
    -- costs more than these scans of the transition tables): what ended (lo, hi), whether
    -- a key was written, whether a finished job changed state and whether anybody waits. A
    -- claim or a heartbeat stops there. Its snapshot is taken after every row of the statement was written,
    -- which the waiters' registration relies on (see below).
    SELECT min(n.id) FILTER (WHERE n.state IN ('succeeded', 'failed', 'cancelled')),
           max(n.id) FILTER (WHERE n.state IN ('succeeded', 'failed', 'cancelled')),
           coalesce(bool_or(n.concurrency_key IS NOT NULL), false),
           EXISTS (SELECT 1 FROM old_rows o WHERE o.state IN ('succeeded', 'failed', 'cancelled')),
           EXISTS (SELECT 1 FROM {s}.job_waiters)
    INTO lo, hi, keyed, old_ended, waited FROM new_rows n;
    IF lo IS NOT NULL OR old_ended THEN
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
      IF waited THEN
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
  IF keyed THEN
    IF EXISTS (SELECT 1 FROM new_rows n WHERE n.concurrency_key IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM {s}.keyed_queues k WHERE k.name = n.queue)) THEN
      INSERT INTO {s}.keyed_queues (name)
      SELECT DISTINCT queue FROM new_rows WHERE concurrency_key IS NOT NULL
      ON CONFLICT DO NOTHING;
    END IF;
  END IF;
  RETURN NULL;
END
$$;
"""

AFTER = r"""
CREATE OR REPLACE FUNCTION {s}._count_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  lo bigint;
  hi bigint;
  keyed boolean;
  old_ended boolean;
  waited boolean;
  parents boolean;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {s}.job_counts;
    DELETE FROM {s}.job_dependencies;
    RETURN NULL;
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
    -- One statement says what else there is to do (each statement a plpgsql function runs
    -- costs more than these scans of the transition tables): what ended (lo, hi), whether
    -- a key was written, whether a finished job changed state, whether anybody waits, and
    -- whether an edge names a job between the lowest and highest id that ended here (the
    -- range probe for dependents: never so for anyone not using dependencies). A claim or
    -- a heartbeat stops there. Its snapshot is taken after every row of the statement was
    -- written, which the waiters' registration relies on (see below).
    SELECT x.lo, x.hi, x.keyed, x.old_ended, x.waited,
           x.lo IS NOT NULL AND EXISTS (SELECT 1 FROM {s}.job_dependencies d
                                        WHERE d.depends_on BETWEEN x.lo AND x.hi)
    INTO lo, hi, keyed, old_ended, waited, parents
    FROM (SELECT min(n.id) FILTER (WHERE n.state IN ('succeeded', 'failed', 'cancelled')) AS lo,
                 max(n.id) FILTER (WHERE n.state IN ('succeeded', 'failed', 'cancelled')) AS hi,
                 coalesce(bool_or(n.concurrency_key IS NOT NULL), false) AS keyed,
                 EXISTS (SELECT 1 FROM old_rows o
                         WHERE o.state IN ('succeeded', 'failed', 'cancelled')) AS old_ended,
                 EXISTS (SELECT 1 FROM {s}.job_waiters) AS waited
          FROM new_rows n) x;
    IF lo IS NOT NULL OR old_ended THEN
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
      IF waited THEN
        PERFORM pg_notify('{done_channel}', string_agg(id::text, ','))
        FROM (SELECT n.id, (row_number() OVER () - 1) / 300 AS chunk FROM new_rows n
              WHERE n.state IN ('succeeded', 'failed', 'cancelled')
                AND EXISTS (SELECT 1 FROM {s}.job_waiters w WHERE w.job_id = n.id)) ended
        GROUP BY chunk;
      END IF;
      -- Only when the range probe found an edge: one probe per job that ended.
      IF parents
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
  -- listed once, by the statement that wrote the key (an UPDATE by hand here, an enqueue
  -- in _job_inserted), so no claim can see a keyed job and miss its queue. Once listed, a
  -- keyed write only reads the list (no lock).
  IF keyed THEN
    IF EXISTS (SELECT 1 FROM new_rows n WHERE n.concurrency_key IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM {s}.keyed_queues k WHERE k.name = n.queue)) THEN
      INSERT INTO {s}.keyed_queues (name)
      SELECT DISTINCT queue FROM new_rows WHERE concurrency_key IS NOT NULL
      ON CONFLICT DO NOTHING;
    END IF;
  END IF;
  RETURN NULL;
END
$$;
"""

INSERTED = r"""
CREATE OR REPLACE FUNCTION {s}._job_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.state IN ('succeeded', 'failed', 'cancelled') THEN
    INSERT INTO {s}.job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1);
  END IF;
  -- Listed by the statement that writes the key, as for an UPDATE (see _count_finished).
  IF NEW.concurrency_key IS NOT NULL
     AND NOT EXISTS (SELECT 1 FROM {s}.keyed_queues k WHERE k.name = NEW.queue) THEN
    INSERT INTO {s}.keyed_queues (name) VALUES (NEW.queue) ON CONFLICT DO NOTHING;
  END IF;
  RETURN NULL;
END
$$;
"""


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def upgrade() -> None:
    s = _schema()
    op.execute(INSERTED.format(s=s))
    op.execute(AFTER.format(s=s, done_channel=f"{s}_done"))
    op.execute(f"DROP TRIGGER jobs_count_insert ON {s}.jobs")
    op.execute(
        f"CREATE TRIGGER jobs_count_insert AFTER INSERT ON {s}.jobs FOR EACH ROW"
        " WHEN (NEW.state IN ('succeeded', 'failed', 'cancelled')"
        " OR NEW.concurrency_key IS NOT NULL)"
        f" EXECUTE FUNCTION {s}._job_inserted()"
    )


def downgrade() -> None:
    s = _schema()
    op.execute(f"DROP TRIGGER jobs_count_insert ON {s}.jobs")
    op.execute(BEFORE.format(s=s, done_channel=f"{s}_done"))
    op.execute(
        f"CREATE TRIGGER jobs_count_insert AFTER INSERT ON {s}.jobs"
        " REFERENCING NEW TABLE AS new_rows"
        f" FOR EACH STATEMENT EXECUTE FUNCTION {s}._count_finished()"
    )
    op.execute(f"DROP FUNCTION {s}._job_inserted()")
