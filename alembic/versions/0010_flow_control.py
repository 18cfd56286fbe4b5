"""Flow control: queue limits (broker.queues), concurrency keys, snooze and deadlines.

- broker.queues replaces broker.queue_pauses (its rows move over as paused queues): one
  row per configured queue with concurrency_limit, rate_limit per rate_period (NULL:
  unlimited) and the pause. broker.configure_queue() sets the limits; pause_queue() and
  resume_queue() keep their signatures and behaviour.
- broker.queue_starts: the claim's log of recent starts of rate-limited queues.
- _claim_flow(): the claim for queues that need flow control (a limit, or runnable jobs
  with a concurrency_key), called by job_claim; the other queues keep the plain claim
  (docs/decisions/014-queue-limits.md).
- finish_state() learns the `snooze` outcome.
- Indexes: keyed queued jobs in claim order per key, a unique one making a second running
  job per (queue, concurrency_key) impossible, and queued/waiting jobs by deadline (the
  reaper expires them). Each is partial, so jobs without a key or a deadline never enter
  it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Rendered with str.format: `{s}` is the schema, `{jobs_channel}` the NOTIFY channel;
# literal braces are doubled. The same text is in broker/sql/schema.sql.
FUNCTIONS = r"""
-- Pause a queue: workers stop claiming from it (running jobs finish); enqueues still land.
CREATE OR REPLACE FUNCTION {s}.pause_queue(queue text, reason text DEFAULT NULL) RETURNS void
LANGUAGE sql VOLATILE AS $$
  INSERT INTO {s}.queues AS q (name, paused, paused_at, pause_reason)
  VALUES (queue, true, now(), reason)
  ON CONFLICT (name) DO UPDATE
  SET paused = true, paused_at = coalesce(q.paused_at, now()), pause_reason = EXCLUDED.pause_reason
$$;

-- Resume a paused queue and wake its workers; returns false when it was not paused.
CREATE OR REPLACE FUNCTION {s}.resume_queue(queue text) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
  WITH resumed AS (
    UPDATE {s}.queues q SET paused = false, paused_at = NULL, pause_reason = NULL
    WHERE q.name = resume_queue.queue AND q.paused RETURNING q.name)
  SELECT count(pg_notify('{jobs_channel}', r.name)) > 0 FROM resumed r
$$;

-- Set a queue's limits (NULL: unlimited): at most concurrency_limit of its jobs running at
-- once, at most rate_limit started per rate_period. Every setting is given (a NULL clears
-- it); the pause is kept. Takes effect for claims that start after the commit. Wakes the
-- queue's workers, since a raised limit frees capacity. Returns the queue's row.
CREATE FUNCTION {s}.configure_queue(queue text, concurrency_limit integer DEFAULT NULL,
                                    rate_limit integer DEFAULT NULL,
                                    rate_period interval DEFAULT NULL)
RETURNS {s}.queues
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  r {s}.queues;
BEGIN
  IF queue IS NULL OR length(queue) NOT BETWEEN 1 AND 128 OR queue ~ '[^A-Za-z0-9_.:-]' THEN
    RAISE EXCEPTION USING ERRCODE = 'PB010',
      MESSAGE = 'queue must be 1-128 characters: letters, digits, _ . : -';
  END IF;
  IF configure_queue.concurrency_limit < 1 THEN
    RAISE EXCEPTION USING ERRCODE = 'PB010',
      MESSAGE = 'concurrency_limit must be at least 1 (or null: unlimited)';
  END IF;
  IF configure_queue.rate_limit < 1 THEN
    RAISE EXCEPTION USING ERRCODE = 'PB010',
      MESSAGE = 'rate_limit must be at least 1 (or null: unlimited)';
  END IF;
  IF configure_queue.rate_period <= interval '0' THEN
    RAISE EXCEPTION USING ERRCODE = 'PB010', MESSAGE = 'rate_period must be positive';
  END IF;
  IF configure_queue.rate_limit IS NOT NULL AND configure_queue.rate_period IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'PB010', MESSAGE = 'rate_limit needs a rate_period';
  END IF;
  INSERT INTO {s}.queues AS q (name, concurrency_limit, rate_limit, rate_period)
  VALUES (queue, configure_queue.concurrency_limit, configure_queue.rate_limit,
          configure_queue.rate_period)
  ON CONFLICT (name) DO UPDATE
  SET concurrency_limit = EXCLUDED.concurrency_limit, rate_limit = EXCLUDED.rate_limit,
      rate_period = EXCLUDED.rate_period, updated_at = now()
  RETURNING * INTO r;
  PERFORM pg_notify('{jobs_channel}', queue);
  RETURN r;
END
$$;

-- The claim for queues that need flow control: limited ones (broker.queues), and those
-- holding queued jobs with a concurrency_key. Called by every job_claim (broker/sql/
-- jobs.sql) with the queues it asks for; returns one row with a NULL id for every queue it
-- owns (paused, or needing flow control), which the plain claim then leaves alone, and the
-- jobs it claimed, at most `lim` in all, the worker's queue order first. Each owned queue's
-- claimers take turns on a transaction-level advisory lock (taken for all of them first,
-- in name order, so two claimers never wait on each other crosswise), and every statement
-- after it takes a new snapshot (READ COMMITTED), so it counts the jobs the previous holder
-- claimed: the running count, the starts in the rate window and the running keys are
-- exact. At most one job per key is taken, its key's first in claim order, and none of a
-- key already running (jobs_key_running_idx would refuse a second). Keys are found with a
-- loose scan of jobs_keyed_idx: one probe per distinct key, not one per queued job.
-- The keyed probe ends in OFFSET 0 so it stays one index lookup per queue (as a join or a
-- hashed subplan it would read all of jobs_keyed_idx).
CREATE FUNCTION {s}._claim_flow(p_queues text[], lim integer, worker text, ttl double precision)
RETURNS TABLE (id bigint, lease_epoch bigint, queue text, kind text, args jsonb,
               priority integer, attempts integer, max_attempts integer,
               timeout double precision)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
  owned text[];
  flowing text[];
  qname text;
  cfg {s}.queues;
  budget integer := lim;
  free integer;
  n integer;
  t timestamptz;
BEGIN
  SELECT coalesce(array_agg(u.name ORDER BY u.ord), '{{}}'),
         coalesce(array_agg(u.name ORDER BY u.ord) FILTER (WHERE NOT coalesce(c.paused, false)),
                  '{{}}')
  INTO owned, flowing
  FROM unnest(p_queues) WITH ORDINALITY AS u(name, ord)
  LEFT JOIN {s}.queues c ON c.name = u.name
  WHERE coalesce(c.paused, false) OR c.concurrency_limit IS NOT NULL OR c.rate_limit IS NOT NULL
     OR EXISTS (SELECT 1 FROM {s}.jobs k
                WHERE k.state = 'queued' AND k.queue = u.name AND k.concurrency_key IS NOT NULL
                OFFSET 0);
  IF cardinality(owned) = 0 THEN
    RETURN;
  END IF;
  RETURN QUERY SELECT NULL::bigint, NULL::bigint, o.name, NULL::text, NULL::jsonb,
                      NULL::integer, NULL::integer, NULL::integer, NULL::float8
               FROM unnest(owned) AS o(name);
  IF cardinality(flowing) = 0 THEN
    RETURN;
  END IF;
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION USING ERRCODE = 'PB010',
      MESSAGE = 'claiming from a limited queue or jobs with a concurrency_key needs READ COMMITTED isolation';
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('{s}.queues'), hashtext(x.name))
  FROM (SELECT DISTINCT name FROM unnest(flowing) AS f(name) ORDER BY 1) x;
  FOREACH qname IN ARRAY flowing LOOP
    EXIT WHEN budget <= 0;
    cfg := NULL;
    SELECT * INTO cfg FROM {s}.queues c WHERE c.name = qname;
    CONTINUE WHEN cfg.paused;
    -- The time of this turn, not the statement's start (now()), which may be long before
    -- the lock was ours: starts, leases and the rate window are stamped with it, so a
    -- start is never stamped before the finish that made room for it, and the window log
    -- stays ordered (under the lock the clock only moves forward).
    t := clock_timestamp();
    free := budget;
    IF cfg.concurrency_limit IS NOT NULL THEN
      SELECT count(*) INTO n FROM {s}.jobs j
      WHERE j.lease_expires_at IS NOT NULL AND j.state = 'running' AND j.queue = qname;
      free := least(free, cfg.concurrency_limit - n);
    END IF;
    IF cfg.rate_limit IS NOT NULL THEN
      DELETE FROM {s}.queue_starts s WHERE s.queue = qname AND s.started_at <= t - cfg.rate_period;
      SELECT count(*) INTO n FROM {s}.queue_starts s WHERE s.queue = qname;
      free := least(free, cfg.rate_limit - n);
    END IF;
    CONTINUE WHEN free <= 0;
    RETURN QUERY
    WITH RECURSIVE keys(k) AS (
      (SELECT j.concurrency_key FROM {s}.jobs j
       WHERE j.state = 'queued' AND j.queue = qname AND j.concurrency_key IS NOT NULL
       ORDER BY j.concurrency_key LIMIT 1)
      UNION ALL
      SELECT (SELECT j.concurrency_key FROM {s}.jobs j
              WHERE j.state = 'queued' AND j.queue = qname AND j.concurrency_key > keys.k
              ORDER BY j.concurrency_key LIMIT 1)
      FROM keys WHERE keys.k IS NOT NULL
    ), heads AS (
      SELECT h.id, h.priority, h.run_at FROM keys
      CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at FROM {s}.jobs j
        WHERE j.state = 'queued' AND j.queue = qname AND j.concurrency_key = keys.k
          AND j.run_at <= t AND (j.deadline IS NULL OR j.deadline > t)
        ORDER BY j.priority DESC, j.run_at, j.id LIMIT 1
        FOR NO KEY UPDATE SKIP LOCKED) h
      WHERE keys.k IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM {s}.jobs r
                        WHERE r.lease_expires_at IS NOT NULL AND r.concurrency_key IS NOT NULL
                          AND r.queue = qname AND r.concurrency_key = keys.k)
    ), plain AS (
      SELECT j.id, j.priority, j.run_at FROM {s}.jobs j
      WHERE j.state = 'queued' AND j.queue = qname AND j.run_at <= t
        AND j.concurrency_key IS NULL AND (j.deadline IS NULL OR j.deadline > t)
      ORDER BY j.priority DESC, j.run_at, j.id LIMIT free
      FOR NO KEY UPDATE SKIP LOCKED
    ), pick AS (
      SELECT c.id FROM (SELECT * FROM plain UNION ALL SELECT * FROM heads) c
      ORDER BY c.priority DESC, c.run_at, c.id LIMIT free
    ), claimed AS (
      UPDATE {s}.jobs j
      SET state = 'running', attempts = j.attempts + 1, lease_epoch = j.lease_epoch + 1,
          lease_expires_at = t + make_interval(secs => ttl), worker_id = worker,
          started_at = t
      FROM pick WHERE j.id = pick.id
      RETURNING j.id, j.lease_epoch, j.queue, j.kind, j.args, j.priority, j.attempts,
                j.max_attempts, extract(epoch FROM j.timeout)::float8 AS timeout
    ), ev AS (
      INSERT INTO {s}.job_events (job_id, event, epoch, worker_id)
      SELECT c.id, 'claimed', c.lease_epoch, worker FROM claimed c
    ), starts AS (
      INSERT INTO {s}.queue_starts (queue, started_at)
      SELECT qname, t FROM claimed WHERE cfg.rate_limit IS NOT NULL
    )
    SELECT * FROM claimed;
    GET DIAGNOSTICS n = ROW_COUNT;
    budget := budget - n;
  END LOOP;
END
$$;

-- Where an attempt's outcome sends the job: completion wins over a pending cancel; a
-- requested cancel wins over a retry, a release or a snooze; a failure retries while
-- attempts remain and it is retryable; a snooze requeues while the job may still snooze
-- (`retryable` says so), else fails it. NULL for an unknown outcome (the NOT NULL state
-- refuses it).
CREATE OR REPLACE FUNCTION {s}.finish_state(outcome text, retryable boolean,
                                            cancel_requested boolean, attempts integer,
                                            max_attempts integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN outcome = 'complete' THEN 'succeeded'
    WHEN outcome NOT IN ('fail', 'cancel', 'release', 'snooze') THEN NULL
    WHEN outcome = 'cancel' OR cancel_requested THEN 'cancelled'
    WHEN outcome = 'release' THEN 'queued'
    WHEN outcome = 'snooze' THEN CASE WHEN retryable THEN 'queued' ELSE 'failed' END
    WHEN retryable AND attempts < max_attempts THEN 'queued'
    ELSE 'failed'
  END
$$;
"""

VIEWS = r"""
CREATE OR REPLACE VIEW {s}.queue_stats AS
WITH live AS (
  SELECT queue,
         count(*) AS queued,
         count(*) FILTER (WHERE run_at <= now()) AS available,
         count(*) FILTER (WHERE run_at > now()) AS scheduled,
         min(run_at) FILTER (WHERE run_at <= now()) AS oldest_available
  FROM {s}.jobs WHERE state = 'queued' GROUP BY queue
), waiting AS (
  SELECT queue, count(*) AS waiting FROM {s}.jobs WHERE state = 'waiting' GROUP BY queue
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
  SELECT queue FROM live UNION SELECT queue FROM waiting UNION SELECT queue FROM running
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
       EXISTS (SELECT 1 FROM {s}.queues p WHERE p.name = q.queue AND p.paused) AS paused,
       coalesce(w.waiting, 0) AS waiting
FROM q LEFT JOIN live l USING (queue) LEFT JOIN running r USING (queue)
LEFT JOIN finished f USING (queue) LEFT JOIN waiting w USING (queue);
"""

OLD = r"""
CREATE OR REPLACE VIEW {s}.queue_stats AS
WITH live AS (
  SELECT queue,
         count(*) AS queued,
         count(*) FILTER (WHERE run_at <= now()) AS available,
         count(*) FILTER (WHERE run_at > now()) AS scheduled,
         min(run_at) FILTER (WHERE run_at <= now()) AS oldest_available
  FROM {s}.jobs WHERE state = 'queued' GROUP BY queue
), waiting AS (
  SELECT queue, count(*) AS waiting FROM {s}.jobs WHERE state = 'waiting' GROUP BY queue
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
  SELECT queue FROM live UNION SELECT queue FROM waiting UNION SELECT queue FROM running
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
       EXISTS (SELECT 1 FROM {s}.queue_pauses p WHERE p.queue = q.queue) AS paused,
       coalesce(w.waiting, 0) AS waiting
FROM q LEFT JOIN live l USING (queue) LEFT JOIN running r USING (queue)
LEFT JOIN finished f USING (queue) LEFT JOIN waiting w USING (queue);

CREATE OR REPLACE FUNCTION {s}.pause_queue(queue text, reason text DEFAULT NULL) RETURNS void
LANGUAGE sql VOLATILE AS $$
  INSERT INTO {s}.queue_pauses (queue, reason) VALUES (queue, reason)
  ON CONFLICT ON CONSTRAINT queue_pauses_pkey DO UPDATE SET reason = EXCLUDED.reason
$$;

CREATE OR REPLACE FUNCTION {s}.resume_queue(queue text) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
  WITH resumed AS (DELETE FROM {s}.queue_pauses p WHERE p.queue = resume_queue.queue RETURNING p.queue)
  SELECT count(pg_notify('{jobs_channel}', r.queue)) > 0 FROM resumed r
$$;

CREATE OR REPLACE FUNCTION {s}.finish_state(outcome text, retryable boolean, cancel_requested boolean,
                                 attempts integer, max_attempts integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN outcome = 'complete' THEN 'succeeded'
    WHEN outcome NOT IN ('fail', 'cancel', 'release') THEN NULL
    WHEN outcome = 'cancel' OR cancel_requested THEN 'cancelled'
    WHEN outcome = 'release' THEN 'queued'
    WHEN retryable AND attempts < max_attempts THEN 'queued'
    ELSE 'failed'
  END
$$;
"""


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def upgrade() -> None:
    s = _schema()
    op.create_table(
        "queues",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("concurrency_limit", sa.Integer),
        sa.Column("rate_limit", sa.Integer),
        sa.Column("rate_period", sa.Interval),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("paused_at", pg.TIMESTAMP(timezone=True)),
        sa.Column("pause_reason", sa.Text),
        sa.Column(
            "updated_at", pg.TIMESTAMP(timezone=True), nullable=False, server_default=sa.text("now()")
        ),
        sa.CheckConstraint("concurrency_limit >= 1", name="queues_concurrency_limit_check"),
        sa.CheckConstraint("rate_limit >= 1", name="queues_rate_limit_check"),
        sa.CheckConstraint(
            "rate_period > interval '0' AND (rate_limit IS NULL OR rate_period IS NOT NULL)",
            name="queues_rate_period_check",
        ),
        schema=s,
    )
    op.execute(
        f"INSERT INTO {s}.queues (name, paused, paused_at, pause_reason)"
        f" SELECT queue, true, paused_at, reason FROM {s}.queue_pauses"
    )
    op.create_table(
        "queue_starts",
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("started_at", pg.TIMESTAMP(timezone=True), nullable=False),
        schema=s,
    )
    op.create_index("queue_starts_idx", "queue_starts", ["queue", "started_at"], schema=s)
    op.execute(
        f"CREATE INDEX jobs_keyed_idx ON {s}.jobs"
        " (queue, concurrency_key, priority DESC, run_at, id)"
        " WHERE state = 'queued' AND concurrency_key IS NOT NULL"
    )
    op.execute(
        f"CREATE UNIQUE INDEX jobs_key_running_idx ON {s}.jobs (queue, concurrency_key)"
        " WHERE lease_expires_at IS NOT NULL AND concurrency_key IS NOT NULL"
    )
    op.execute(
        f"CREATE INDEX jobs_deadline_idx ON {s}.jobs (deadline)"
        " WHERE deadline IS NOT NULL AND state IN ('queued', 'waiting')"
    )
    op.execute(FUNCTIONS.format(s=s, jobs_channel=f"{s}_jobs"))
    op.execute(VIEWS.format(s=s))
    op.drop_table("queue_pauses", schema=s)


def downgrade() -> None:
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
    op.execute(
        f"INSERT INTO {s}.queue_pauses (queue, paused_at, reason)"
        f" SELECT name, coalesce(paused_at, now()), pause_reason FROM {s}.queues WHERE paused"
    )
    op.execute(OLD.format(s=s, jobs_channel=f"{s}_jobs"))
    op.execute(f"DROP FUNCTION {s}._claim_flow(text[], integer, text, double precision)")
    op.execute(f"DROP FUNCTION {s}.configure_queue(text, integer, integer, interval)")
    op.execute(f"DROP INDEX {s}.jobs_deadline_idx")
    op.execute(f"DROP INDEX {s}.jobs_key_running_idx")
    op.execute(f"DROP INDEX {s}.jobs_keyed_idx")
    op.drop_table("queue_starts", schema=s)
    op.drop_table("queues", schema=s)
