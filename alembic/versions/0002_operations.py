"""Operations: queue pause/resume, worker_status and stuck_jobs views, retention pruning.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# How long without a heartbeat before a worker counts as gone (workers beat every
# lease_ttl/3, 5 s by default), and the thresholds of broker.stuck_jobs.
WORKER_GONE_AFTER = "30 seconds"

FUNCTIONS = r"""
-- Pause a queue: workers stop claiming from it (running jobs finish); enqueues still land.
CREATE FUNCTION {s}.pause_queue(queue text, reason text DEFAULT NULL) RETURNS void
LANGUAGE sql VOLATILE AS $$
  INSERT INTO {s}.queue_pauses (queue, reason) VALUES (queue, reason)
  ON CONFLICT ON CONSTRAINT queue_pauses_pkey DO UPDATE SET reason = EXCLUDED.reason
$$;

-- Resume a paused queue and wake its workers; returns false when it was not paused.
CREATE FUNCTION {s}.resume_queue(queue text) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
  WITH resumed AS (DELETE FROM {s}.queue_pauses p WHERE p.queue = resume_queue.queue RETURNING p.queue)
  SELECT count(pg_notify('{jobs_channel}', r.queue)) > 0 FROM resumed r
$$;

-- Delete up to `batch` finished jobs in `state` older than `older_than` (by finished_at,
-- database time), with their events and logs. Returns how many jobs went. Safe to run
-- from several sessions at once (SKIP LOCKED).
CREATE FUNCTION {s}.prune_jobs(state text, older_than interval, batch integer DEFAULT 1000)
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

-- Every registered worker, alive or gone by the database's clock.
CREATE VIEW {s}.worker_status AS
SELECT w.worker_id, w.host_id, w.hostname, w.pid, w.seq, w.queues, w.concurrency,
       (SELECT count(*) FROM {s}.jobs j
        WHERE j.state = 'running' AND j.worker_id = w.worker_id) AS running_jobs,
       w.started_at, w.last_seen,
       extract(epoch FROM now() - w.last_seen)::double precision AS seconds_since_seen,
       w.clock_skew_seconds,
       CASE WHEN w.stopped_at IS NOT NULL THEN 'stopped'
            WHEN w.last_seen >= now() - interval '{gone_after}' THEN 'alive'
            ELSE 'gone' END AS status
FROM {s}.workers w;

-- Jobs that need a look: a lease that expired but was not reaped (no reaper running?),
-- a cancel no worker acknowledged, a runnable job nobody has claimed for 10 minutes.
CREATE VIEW {s}.stuck_jobs AS
SELECT id, queue, kind, state, 'lease_expired' AS reason, lease_expires_at AS since,
       worker_id, attempts
FROM {s}.jobs WHERE state = 'running' AND lease_expires_at < now() - interval '10 seconds'
UNION ALL
SELECT id, queue, kind, state, 'cancel_unacknowledged', cancel_requested_at, worker_id, attempts
FROM {s}.jobs WHERE state = 'running' AND cancel_requested_at < now() - interval '60 seconds'
UNION ALL
SELECT id, queue, kind, state, 'waiting', run_at, worker_id, attempts
FROM {s}.jobs WHERE state = 'queued' AND run_at < now() - interval '10 minutes';

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
"""

DOWNGRADE = r"""
DROP VIEW {s}.queue_stats;
CREATE VIEW {s}.queue_stats AS
SELECT queue,
       count(*) FILTER (WHERE state = 'queued') AS queued,
       count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS available,
       count(*) FILTER (WHERE state = 'queued' AND run_at > now()) AS scheduled,
       count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
       coalesce(extract(epoch FROM now() - min(run_at) FILTER (WHERE state = 'queued' AND run_at <= now())), 0)::double precision
         AS oldest_available_age_seconds
FROM {s}.jobs
GROUP BY queue;
DROP VIEW {s}.stuck_jobs;
DROP VIEW {s}.worker_status;
DROP FUNCTION {s}.prune_jobs(text, interval, integer);
DROP FUNCTION {s}.resume_queue(text);
DROP FUNCTION {s}.pause_queue(text, text);
"""


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def upgrade() -> None:
    s = _schema()
    op.create_table(
        "queue_pauses",
        sa.Column("queue", sa.Text, primary_key=True),
        sa.Column(
            "paused_at", pg.TIMESTAMP(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.Column("reason", sa.Text),
        schema=s,
    )
    # Retention deletes finished jobs oldest first, per state. Written once per job (at
    # its terminal transition), unlike an index on every state change.
    op.create_index(
        "jobs_finished_idx",
        "jobs",
        ["state", "finished_at"],
        schema=s,
        postgresql_where=sa.text("state IN ('succeeded', 'failed', 'cancelled')"),
    )
    op.execute(FUNCTIONS.format(s=s, jobs_channel=f"{s}_jobs", gone_after=WORKER_GONE_AFTER))


def downgrade() -> None:
    s = _schema()
    op.execute(DOWNGRADE.format(s=s))
    op.drop_index("jobs_finished_idx", "jobs", schema=s)
    op.drop_table("queue_pauses", schema=s)
