"""Finished-job counts without reading the history: a rollup kept by statement triggers.

queue_stats counted every row of broker.jobs: 1.2 s at 5 million retained jobs, on every
`broker stats`, GET /v1/queues and metrics scrape. Live states (queued, running) are now
counted from their partial indexes, which hold only live rows; finished states come from
broker.job_counts, delta rows appended by statement-level triggers (one row per queue and
state a statement changed, never a hot counter row that writers would queue on) and
folded by prune_jobs(). Triggers see every writer: the broker's statements, the pruner,
and an operator's own UPDATE or DELETE (docs/decisions/009-history-proof-plans.md).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FINISHED = "('succeeded', 'failed', 'cancelled')"

FUNCTIONS = r"""
-- Append the change in finished jobs per (queue, state) made by one statement. Transition
-- tables hold the rows the statement touched; a claim or heartbeat touches no finished
-- row and appends nothing.
CREATE FUNCTION {s}._count_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {s}.job_counts;
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, count(*) FROM new_rows WHERE state IN {finished} GROUP BY 1, 2;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, -count(*) FROM old_rows WHERE state IN {finished} GROUP BY 1, 2;
  ELSE
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, sum(d) FROM (
      SELECT queue, state, 1 AS d FROM new_rows WHERE state IN {finished}
      UNION ALL
      SELECT queue, state, -1 FROM old_rows WHERE state IN {finished}
    ) x GROUP BY 1, 2 HAVING sum(d) <> 0;
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_insert AFTER INSERT ON {s}.jobs
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {s}._count_finished();
CREATE TRIGGER jobs_count_update AFTER UPDATE ON {s}.jobs
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION {s}._count_finished();
CREATE TRIGGER jobs_count_delete AFTER DELETE ON {s}.jobs
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {s}._count_finished();
CREATE TRIGGER jobs_count_truncate AFTER TRUNCATE ON {s}.jobs
  FOR EACH STATEMENT EXECUTE FUNCTION {s}._count_finished();

-- Fold the delta rows into one per (queue, state). Each delta is deleted by exactly one
-- fold (a concurrent fold skips rows already deleted), so sums stay exact.
CREATE FUNCTION {s}.fold_job_counts() RETURNS void
LANGUAGE sql VOLATILE AS $$
  WITH d AS (DELETE FROM {s}.job_counts RETURNING queue, state, n)
  INSERT INTO {s}.job_counts (queue, state, n)
  SELECT queue, state, sum(n) FROM d GROUP BY 1, 2 HAVING sum(n) <> 0
$$;

-- Rebuild the rollup from the jobs themselves (after TRUNCATE, or to check it): reads
-- every finished job once.
CREATE FUNCTION {s}.recount_jobs() RETURNS void
LANGUAGE sql VOLATILE AS $$
  LOCK TABLE {s}.job_counts IN EXCLUSIVE MODE;
  DELETE FROM {s}.job_counts;
  INSERT INTO {s}.job_counts (queue, state, n)
  SELECT queue, state, count(*) FROM {s}.jobs WHERE state IN {finished} GROUP BY 1, 2;
$$;

CREATE OR REPLACE FUNCTION {s}.prune_jobs(state text, older_than interval, batch integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  pruned integer;
BEGIN
  IF state NOT IN ('succeeded', 'failed', 'cancelled') THEN
    RAISE EXCEPTION USING ERRCODE = 'PB002',
      MESSAGE = format('only finished jobs are pruned (succeeded, failed, cancelled), not %L', state);
  END IF;
  IF older_than IS NULL OR older_than < interval '0' OR batch IS NULL OR batch < 1 THEN
    RAISE EXCEPTION USING ERRCODE = 'PB002',
      MESSAGE = 'older_than must not be negative and batch must be at least 1';
  END IF;
  WITH doomed AS (
    SELECT j.id FROM {s}.jobs j
    WHERE j.state = prune_jobs.state AND j.finished_at < now() - older_than
    ORDER BY j.finished_at
    LIMIT batch
    FOR UPDATE SKIP LOCKED
  ), gone AS (
    DELETE FROM {s}.jobs j USING doomed d WHERE j.id = d.id RETURNING j.id
  ), events AS (
    DELETE FROM {s}.job_events e USING gone g WHERE e.job_id = g.id
  ), logs AS (
    DELETE FROM {s}.job_logs l USING gone g WHERE l.job_id = g.id
  )
  SELECT count(*) INTO pruned FROM gone;
  -- Whoever prunes keeps the rollup short (workers every BROKER_PRUNE_INTERVAL, or cron).
  PERFORM {s}.fold_job_counts();
  RETURN pruned;
END
$$;

-- Live states from their partial indexes (jobs_claim_idx, jobs_lease_idx: only live rows),
-- finished states from the rollup: neither reads the retained history.
CREATE OR REPLACE VIEW {s}.queue_stats AS
WITH live AS (
  SELECT queue,
         count(*) AS queued,
         count(*) FILTER (WHERE run_at <= now()) AS available,
         count(*) FILTER (WHERE run_at > now()) AS scheduled,
         min(run_at) FILTER (WHERE run_at <= now()) AS oldest_available
  FROM {s}.jobs WHERE state = 'queued' GROUP BY queue
), running AS (
  SELECT queue, count(*) AS running FROM {s}.jobs
  WHERE lease_expires_at IS NOT NULL AND state = 'running' GROUP BY queue
), finished AS (
  SELECT queue,
         coalesce(sum(n) FILTER (WHERE state = 'succeeded'), 0)::bigint AS succeeded,
         coalesce(sum(n) FILTER (WHERE state = 'failed'), 0)::bigint AS failed,
         coalesce(sum(n) FILTER (WHERE state = 'cancelled'), 0)::bigint AS cancelled
  FROM {s}.job_counts GROUP BY queue
), q AS (
  SELECT queue FROM live UNION SELECT queue FROM running
  UNION SELECT queue FROM finished WHERE succeeded + failed + cancelled > 0
)
SELECT q.queue,
       coalesce(l.queued, 0) AS queued,
       coalesce(l.available, 0) AS available,
       coalesce(l.scheduled, 0) AS scheduled,
       coalesce(r.running, 0) AS running,
       coalesce(f.succeeded, 0) AS succeeded,
       coalesce(f.failed, 0) AS failed,
       coalesce(f.cancelled, 0) AS cancelled,
       coalesce(extract(epoch FROM now() - l.oldest_available), 0)::double precision
         AS oldest_available_age_seconds,
       EXISTS (SELECT 1 FROM {s}.queue_pauses p WHERE p.queue = q.queue) AS paused
FROM q LEFT JOIN live l USING (queue) LEFT JOIN running r USING (queue)
LEFT JOIN finished f USING (queue);
"""

DOWNGRADE = r"""
CREATE OR REPLACE VIEW {s}.queue_stats AS
SELECT queue,
       count(*) FILTER (WHERE state = 'queued') AS queued,
       count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS available,
       count(*) FILTER (WHERE state = 'queued' AND run_at > now()) AS scheduled,
       count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
       coalesce(extract(epoch FROM now() - min(run_at) FILTER (WHERE state = 'queued' AND run_at <= now())), 0)::double precision
         AS oldest_available_age_seconds,
       EXISTS (SELECT 1 FROM {s}.queue_pauses p WHERE p.queue = jobs.queue) AS paused
FROM {s}.jobs
GROUP BY queue;

CREATE OR REPLACE FUNCTION {s}.prune_jobs(state text, older_than interval, batch integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  pruned integer;
BEGIN
  IF state NOT IN ('succeeded', 'failed', 'cancelled') THEN
    RAISE EXCEPTION USING ERRCODE = 'PB002',
      MESSAGE = format('only finished jobs are pruned (succeeded, failed, cancelled), not %L', state);
  END IF;
  IF older_than IS NULL OR older_than < interval '0' OR batch IS NULL OR batch < 1 THEN
    RAISE EXCEPTION USING ERRCODE = 'PB002',
      MESSAGE = 'older_than must not be negative and batch must be at least 1';
  END IF;
  WITH doomed AS (
    SELECT j.id FROM {s}.jobs j
    WHERE j.state = prune_jobs.state AND j.finished_at < now() - older_than
    ORDER BY j.finished_at
    LIMIT batch
    FOR UPDATE SKIP LOCKED
  ), gone AS (
    DELETE FROM {s}.jobs j USING doomed d WHERE j.id = d.id RETURNING j.id
  ), events AS (
    DELETE FROM {s}.job_events e USING gone g WHERE e.job_id = g.id
  ), logs AS (
    DELETE FROM {s}.job_logs l USING gone g WHERE l.job_id = g.id
  )
  SELECT count(*) INTO pruned FROM gone;
  RETURN pruned;
END
$$;

DROP TRIGGER jobs_count_truncate ON {s}.jobs;
DROP TRIGGER jobs_count_delete ON {s}.jobs;
DROP TRIGGER jobs_count_update ON {s}.jobs;
DROP TRIGGER jobs_count_insert ON {s}.jobs;
DROP FUNCTION {s}.recount_jobs();
DROP FUNCTION {s}.fold_job_counts();
DROP FUNCTION {s}._count_finished();
"""


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def upgrade() -> None:
    s = _schema()
    op.create_table(
        "job_counts",
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
        schema=s,
    )
    op.execute(FUNCTIONS.format(s=s, finished=FINISHED))
    # The jobs already kept; the triggers count everything from here on.
    op.execute(f"SELECT {s}.recount_jobs()")


def downgrade() -> None:
    s = _schema()
    op.execute(DOWNGRADE.format(s=s))
    op.drop_table("job_counts", schema=s)
