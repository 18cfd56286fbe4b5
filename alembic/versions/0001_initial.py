"""Initial schema: jobs, job_events, job_logs, workers, operator functions and views.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


# Longest delay or timeout accepted (100 years): beyond this intervals overflow or wrap.
MAX_DURATION_SECONDS = 3_155_760_000


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def _tstz() -> pg.TIMESTAMP:
    return pg.TIMESTAMP(timezone=True)


# Everything below is rendered with str.format: `{s}` is the schema (a validated plain
# identifier), `{jobs_channel}` / `{cancel_channel}` the NOTIFY channels. Literal braces
# are doubled.
FUNCTIONS = r"""
-- Exponential backoff with 0-25% jitter, capped at one hour: 1 s, 2 s, 4 s, ...
-- Operators may replace this function to change the retry curve for everyone.
CREATE FUNCTION {s}.retry_backoff(attempt integer) RETURNS interval
LANGUAGE sql VOLATILE AS $$
  SELECT make_interval(secs => least(3600, power(2, greatest(attempt, 1) - 1))
                               * (1 + 0.25 * random()))
$$;

CREATE FUNCTION {s}._reject(message text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'PB002', MESSAGE = message;
END
$$;

-- Parse a JSON array of job specs, applying defaults. Column rules (kind and queue names,
-- args an object, max_attempts, timeout) are CHECK constraints on the jobs table, so every
-- path in (this function, COPY, a plain INSERT) obeys the same rules.
-- The fingerprint is the sha256 of the canonical jsonb text of the normalized request
-- (jsonb orders object keys), so key order and whitespace in the request never matter.
CREATE FUNCTION {s}._parse_specs(specs jsonb)
RETURNS TABLE (ord bigint, queue text, kind text, args jsonb, priority integer,
               run_at timestamptz, max_attempts integer, timeout interval,
               idempotency_key text, fingerprint text, subject_key text, tags text[])
LANGUAGE sql VOLATILE AS $$
  SELECT r.ord,
         coalesce(r.queue, 'default'),
         r.kind,
         coalesce(r.args, '{{}}'::jsonb),
         coalesce(r.priority, 0),
         CASE WHEN r.run_at IS NOT NULL AND r.delay IS NOT NULL
                THEN {s}._reject(format('job %s: give run_at or delay, not both', r.ord))::timestamptz
              WHEN r.delay < 0 THEN {s}._reject(format('job %s: delay must not be negative', r.ord))::timestamptz
              WHEN NOT (r.delay <= {max_seconds})
                THEN {s}._reject(format('job %s: delay must be at most {max_seconds} seconds (100 years)', r.ord))::timestamptz
              WHEN NOT isfinite(r.run_at) OR r.run_at NOT BETWEEN '0001-01-01' AND '9999-12-31'
                THEN {s}._reject(format('job %s: run_at must be a date between years 1 and 9999', r.ord))::timestamptz
              WHEN r.delay IS NOT NULL THEN now() + make_interval(secs => r.delay)
              ELSE coalesce(r.run_at, now()) END,
         coalesce(r.max_attempts, {default_max_attempts}),
         CASE WHEN r.timeout IS NULL OR r.timeout <= {max_seconds} THEN make_interval(secs => r.timeout)
              ELSE {s}._reject(format('job %s: timeout must be at most {max_seconds} seconds', r.ord))::interval END,
         r.idempotency_key,
         CASE WHEN r.idempotency_key IS NOT NULL THEN
           encode(sha256(convert_to(jsonb_build_object(
             'kind', r.kind, 'args', coalesce(r.args, '{{}}'), 'queue', coalesce(r.queue, 'default'),
             'priority', coalesce(r.priority, 0),
             'run_at', extract(epoch FROM r.run_at), 'delay', r.delay,
             'max_attempts', coalesce(r.max_attempts, {default_max_attempts}),
             'timeout', r.timeout, 'subject_key', r.subject_key,
             'tags', to_jsonb(coalesce(r.tags, '{{}}'::text[])))::text, 'UTF8')), 'hex')
         END,
         r.subject_key,
         coalesce(r.tags, '{{}}'::text[])
  FROM ROWS FROM (jsonb_to_recordset(specs) AS (
         queue text, kind text, args jsonb, priority integer, run_at timestamptz,
         delay double precision, max_attempts integer, timeout double precision,
         idempotency_key text, subject_key text, tags text[]))
       WITH ORDINALITY AS r(queue, kind, args, priority, run_at, delay, max_attempts, timeout,
                            idempotency_key, subject_key, tags, ord)
$$;

-- Enqueue a JSON array of job specs in one statement. Returns one row per spec, in order:
-- the job id and whether it was created (false: an earlier job with the same
-- idempotency key and the same request). The NOTIFY for runnable jobs is sent in the
-- caller's transaction, once per queue.
CREATE FUNCTION {s}.enqueue_many(specs jsonb)
RETURNS TABLE (ord bigint, job_id bigint, created boolean)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
  v_ords bigint[];
  v_ids bigint[];
  rec record;
BEGIN
  IF jsonb_typeof(specs) IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION USING ERRCODE = 'PB002', MESSAGE = 'enqueue expects a JSON array of job objects';
  END IF;
  -- Serialize enqueues that supersede by subject, so two concurrent ones cannot both
  -- miss each other's job. The lock is taken before the insert's snapshot.
  IF jsonb_path_exists(specs, '$[*] ? (exists (@.subject_key))') THEN
    -- Under REPEATABLE READ the snapshot predates the lock, so a job committed while we
    -- waited would be invisible and never superseded. (SERIALIZABLE detects it itself.)
    IF current_setting('transaction_isolation') = 'repeatable read' THEN
      RAISE EXCEPTION USING ERRCODE = 'PB002',
        MESSAGE = 'subject_key needs READ COMMITTED or SERIALIZABLE isolation, not REPEATABLE READ';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(s.kind || '/' || s.subject_key, 0))
    FROM (SELECT DISTINCT p.kind, p.subject_key
          FROM jsonb_to_recordset(specs) AS p(kind text, subject_key text)
          WHERE p.subject_key IS NOT NULL ORDER BY 1, 2) s;
  END IF;

  WITH src AS (
    SELECT p.*, nextval('{s}.jobs_id_seq') AS id FROM {s}._parse_specs(specs) p
  ), newest_in_batch AS (
    -- Within one batch the last spec for a (kind, subject_key) wins; earlier ones are
    -- born superseded.
    -- A spec replaying an idempotency key (one already stored, or one used earlier in
    -- this batch: the insert runs in ord order, so the first use wins) creates nothing,
    -- so it cannot win.
    SELECT DISTINCT ON (kind, subject_key) kind, subject_key, id AS newest_id FROM src
    WHERE subject_key IS NOT NULL
      AND (idempotency_key IS NULL OR (
            NOT EXISTS (SELECT 1 FROM {s}.jobs e WHERE e.idempotency_key = src.idempotency_key)
            AND NOT EXISTS (SELECT 1 FROM src d
                            WHERE d.idempotency_key = src.idempotency_key AND d.ord < src.ord)))
    ORDER BY kind, subject_key, ord DESC
  ), ins AS (
    INSERT INTO {s}.jobs (id, queue, kind, args, priority, run_at, max_attempts, timeout,
                          idempotency_key, idempotency_fingerprint, subject_key, tags,
                          state, finished_at, last_error)
    SELECT src.id, src.queue, src.kind, src.args, src.priority, src.run_at, src.max_attempts,
           src.timeout, src.idempotency_key, src.fingerprint, src.subject_key, src.tags,
           CASE WHEN n.newest_id <> src.id THEN 'cancelled' ELSE 'queued' END,
           CASE WHEN n.newest_id <> src.id THEN now() END,
           CASE WHEN n.newest_id <> src.id THEN 'superseded' END
    FROM src LEFT JOIN newest_in_batch n USING (kind, subject_key) ORDER BY src.ord
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, queue, kind, subject_key, run_at, state
  ), ev AS (
    INSERT INTO {s}.job_events (job_id, event, detail)
    SELECT x.job_id, x.event, x.detail FROM (
      SELECT id AS job_id, 'enqueued' AS event, NULL::jsonb AS detail, 0 AS step FROM ins
      UNION ALL
      SELECT ins.id, 'superseded', jsonb_build_object('superseded_by', n.newest_id), 1
      FROM ins JOIN newest_in_batch n USING (kind, subject_key) WHERE ins.state = 'cancelled'
    ) x ORDER BY x.job_id, x.step
  ), newest AS (
    SELECT id, kind, subject_key FROM ins WHERE subject_key IS NOT NULL AND state = 'queued'
  ), sup AS (
    -- Driven from the (usually empty) newest rows through jobs_subject_idx, behind a
    -- one-time EXISTS gate: with statistics saying jobs was empty, the planner once
    -- scanned every job per inserted row here (7.5 s for a 10,000-job batch, measured).
    UPDATE {s}.jobs j SET state = 'cancelled', finished_at = now(), last_error = 'superseded'
    FROM (SELECT o.id, n.id AS by_id FROM newest n
          CROSS JOIN LATERAL (
            SELECT q.id FROM {s}.jobs q
            WHERE q.kind = n.kind AND q.subject_key = n.subject_key AND q.state = 'queued'
          ) o) older
    WHERE j.id = older.id AND j.state = 'queued' AND EXISTS (SELECT 1 FROM newest)
    RETURNING j.id, older.by_id
  ), sup_ev AS (
    INSERT INTO {s}.job_events (job_id, event, detail)
    SELECT id, 'superseded', jsonb_build_object('superseded_by', by_id) FROM sup
  ), notified AS (
    SELECT count(pg_notify('{jobs_channel}', q.queue)) AS n
    FROM (SELECT DISTINCT queue FROM ins WHERE state = 'queued' AND run_at <= now()) q
  )
  -- `notified` is a plain SELECT: it runs only because it is referenced here.
  SELECT array_agg(src.ord), array_agg(src.id)
  INTO v_ords, v_ids
  FROM src JOIN ins USING (id) CROSS JOIN notified;

  RETURN QUERY SELECT o, i, true FROM unnest(v_ords, v_ids) AS u(o, i);
  IF coalesce(array_length(v_ords, 1), 0) = jsonb_array_length(specs) THEN
    RETURN;
  END IF;

  -- Specs that were not inserted lost an idempotency race or repeat a key: this is a
  -- new statement, so it sees jobs committed by concurrent enqueues.
  FOR rec IN
    SELECT p.ord AS o, p.idempotency_key AS key, p.fingerprint AS fp,
           j.id AS existing_id, j.idempotency_fingerprint AS existing_fp
    FROM {s}._parse_specs(specs) p
    LEFT JOIN {s}.jobs j ON j.idempotency_key = p.idempotency_key
    WHERE p.idempotency_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM unnest(v_ords) AS c(o) WHERE c.o = p.ord)
    ORDER BY p.ord
  LOOP
    IF rec.existing_id IS NULL THEN
      RAISE EXCEPTION USING ERRCODE = '40001',
        MESSAGE = format('job with idempotency key %L vanished during enqueue; retry', rec.key);
    END IF;
    IF rec.existing_fp IS DISTINCT FROM rec.fp THEN
      RAISE EXCEPTION USING ERRCODE = 'PB001',
        MESSAGE = format('idempotency key %L was already used for a different request', rec.key),
        DETAIL = rec.key, HINT = rec.existing_id::text;
    END IF;
    ord := rec.o; job_id := rec.existing_id; created := false;
    RETURN NEXT;
  END LOOP;
END
$$;

-- Enqueue one job from SQL (psql, triggers, an application's own transaction).
-- Returns the job id (the existing one for a repeated idempotency key).
CREATE FUNCTION {s}.enqueue(
  kind text, args jsonb DEFAULT '{{}}', queue text DEFAULT 'default', priority integer DEFAULT 0,
  run_at timestamptz DEFAULT NULL, delay interval DEFAULT NULL,
  max_attempts integer DEFAULT {default_max_attempts}, timeout interval DEFAULT NULL,
  idempotency_key text DEFAULT NULL, subject_key text DEFAULT NULL, tags text[] DEFAULT '{{}}'
) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
  -- A JSON null reads exactly like an absent key in _parse_specs, so nothing is stripped
  -- (jsonb_strip_nulls would also strip nulls nested inside args).
  SELECT e.job_id FROM {s}.enqueue_many(jsonb_build_array(jsonb_build_object(
    'kind', kind, 'args', args, 'queue', queue, 'priority', priority,
    'run_at', run_at, 'delay', extract(epoch FROM delay), 'max_attempts', max_attempts,
    'timeout', extract(epoch FROM timeout), 'idempotency_key', idempotency_key,
    'subject_key', subject_key, 'tags', to_jsonb(tags)))) e
$$;

-- Cancel a job: queued -> cancelled at once; running -> cancel requested, and the worker
-- holding it is told with NOTIFY (it acknowledges with a fenced write); finished -> error.
CREATE FUNCTION {s}.cancel_job(job_id bigint) RETURNS SETOF {s}.jobs
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  j {s}.jobs;
BEGIN
  -- Lock first and branch on the locked row: a transition committing between separate
  -- UPDATEs (a retrying fail, a release, the reaper) would otherwise lose the cancel.
  SELECT * INTO j FROM {s}.jobs WHERE id = job_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB003', MESSAGE = format('job %s not found', job_id),
      HINT = job_id::text;
  END IF;
  IF j.state = 'queued' THEN
    UPDATE {s}.jobs SET state = 'cancelled', finished_at = now()
    WHERE id = job_id RETURNING * INTO j;
    INSERT INTO {s}.job_events (job_id, event) VALUES (j.id, 'cancelled');
  ELSIF j.state = 'running' THEN
    UPDATE {s}.jobs SET cancel_requested_at = coalesce(cancel_requested_at, now())
    WHERE id = job_id RETURNING * INTO j;
    INSERT INTO {s}.job_events (job_id, event, epoch, worker_id)
    VALUES (j.id, 'cancel_requested', j.lease_epoch, j.worker_id);
    PERFORM pg_notify('{cancel_channel}', j.id::text);
  ELSE
    RAISE EXCEPTION USING ERRCODE = 'PB004',
      MESSAGE = format('cannot cancel job %s: it is %s', job_id, j.state),
      DETAIL = j.state, HINT = job_id::text;
  END IF;
  RETURN NEXT j;
END
$$;

-- Put a failed or cancelled job back in the queue, runnable now, with at least one
-- attempt left.
CREATE FUNCTION {s}.retry_job(job_id bigint) RETURNS SETOF {s}.jobs
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  j {s}.jobs;
BEGIN
  UPDATE {s}.jobs
  SET state = 'queued', run_at = now(), finished_at = NULL, cancel_requested_at = NULL,
      lease_expires_at = NULL, result = NULL, max_attempts = greatest(max_attempts, attempts + 1)
  WHERE id = job_id AND state IN ('failed', 'cancelled') RETURNING * INTO j;
  IF FOUND THEN
    INSERT INTO {s}.job_events (job_id, event, epoch) VALUES (j.id, 'retried', j.lease_epoch);
    PERFORM pg_notify('{jobs_channel}', j.queue);
    RETURN NEXT j;
    RETURN;
  END IF;
  SELECT * INTO j FROM {s}.jobs WHERE id = job_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB003', MESSAGE = format('job %s not found', job_id),
      HINT = job_id::text;
  END IF;
  RAISE EXCEPTION USING ERRCODE = 'PB004', MESSAGE = format('cannot retry job %s: it is %s', job_id, j.state),
    DETAIL = j.state, HINT = job_id::text;
END
$$;

-- Per queue: jobs in each state, how many are waiting now, and how long the oldest has waited.
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
"""

DROP_FUNCTIONS = """
DROP VIEW IF EXISTS {s}.queue_stats;
DROP FUNCTION IF EXISTS {s}.retry_job(bigint);
DROP FUNCTION IF EXISTS {s}.cancel_job(bigint);
DROP FUNCTION IF EXISTS {s}.enqueue(text, jsonb, text, integer, timestamptz, interval, integer, interval, text, text, text[]);
DROP FUNCTION IF EXISTS {s}.enqueue_many(jsonb);
DROP FUNCTION IF EXISTS {s}._parse_specs(jsonb);
DROP FUNCTION IF EXISTS {s}._reject(text);
DROP FUNCTION IF EXISTS {s}.retry_backoff(integer);
"""


def upgrade() -> None:
    s = _schema()
    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("queue", sa.Text, nullable=False, server_default=sa.text("'default'")),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("args", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("priority", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("state", sa.Text, nullable=False, server_default=sa.text("'queued'")),
        sa.Column("run_at", _tstz(), nullable=False, server_default=sa.text("now()")),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer, nullable=False, server_default=sa.text("20")),
        sa.Column("lease_epoch", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("lease_expires_at", _tstz()),
        sa.Column("worker_id", sa.Text),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("idempotency_fingerprint", sa.Text),
        sa.Column("subject_key", sa.Text),
        sa.Column("result", pg.JSONB),
        sa.Column("last_error", sa.Text),
        sa.Column(
            "tags", pg.ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'::text[]")
        ),
        sa.Column("created_at", _tstz(), nullable=False, server_default=sa.text("now()")),
        sa.Column("started_at", _tstz()),
        sa.Column("finished_at", _tstz()),
        sa.Column("cancel_requested_at", _tstz()),
        sa.Column("timeout", sa.Interval),
        sa.CheckConstraint(
            "state in ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name="jobs_state_check",
        ),
        sa.CheckConstraint("max_attempts >= 1", name="jobs_max_attempts_check"),
        sa.CheckConstraint("attempts >= 0", name="jobs_attempts_check"),
        # Names are checked with a negated character class and length(): PostgreSQL's
        # regex engine is slow on bounded repetition like {1,200}.
        sa.CheckConstraint(
            "length(kind) BETWEEN 1 AND 200 AND kind !~ '[^A-Za-z0-9_.:-]'",
            name="jobs_kind_check",
        ),
        sa.CheckConstraint(
            "length(queue) BETWEEN 1 AND 128 AND queue !~ '[^A-Za-z0-9_.:-]'",
            name="jobs_queue_check",
        ),
        sa.CheckConstraint("jsonb_typeof(args) = 'object'", name="jobs_args_check"),
        sa.CheckConstraint("timeout > interval '0'", name="jobs_timeout_check"),
        schema=s,
    )
    op.create_index(
        "jobs_claim_idx",
        "jobs",
        ["queue", sa.text("priority DESC"), "run_at", "id"],
        schema=s,
        postgresql_where=sa.text("state = 'queued'"),
    )
    # Running jobs by id: fenced writes find their rows through it (as the bare-SQL bound
    # does) and the reaper scans it; the running set is bounded by worker concurrency.
    op.create_index(
        "jobs_running_idx",
        "jobs",
        ["id"],
        schema=s,
        postgresql_where=sa.text("state = 'running'"),
    )
    op.create_index(
        "jobs_idempotency_key_idx",
        "jobs",
        ["idempotency_key"],
        unique=True,
        schema=s,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "jobs_subject_idx",
        "jobs",
        ["kind", "subject_key"],
        schema=s,
        postgresql_where=sa.text("subject_key IS NOT NULL AND state = 'queued'"),
    )
    # No other index on jobs: a state change is never a HOT update (state is in the partial
    # index predicates), so every index is written on every transition. Measured at batch
    # 100, a GIN index on tags and btrees on kind and finished_at made the fenced complete
    # ~2.5x slower than the bare-SQL bound (docs/decisions/001-table-layout.md).
    # A hot queue table churns: vacuum and analyze it after 1-2% of rows change, not 20%.
    op.execute(
        f"ALTER TABLE {s}.jobs SET (autovacuum_vacuum_scale_factor = 0.01,"
        " autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 1)"
    )

    op.create_table(
        "job_events",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("job_id", sa.BigInteger, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("epoch", sa.BigInteger),
        sa.Column("worker_id", sa.Text),
        sa.Column("at", _tstz(), nullable=False, server_default=sa.text("now()")),
        sa.Column("detail", pg.JSONB),
        schema=s,
    )
    op.create_index("job_events_job_idx", "job_events", ["job_id", "id"], schema=s)

    op.create_table(
        "job_logs",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("job_id", sa.BigInteger, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("at", _tstz(), nullable=False, server_default=sa.text("now()")),
        sa.Column("line", sa.Text, nullable=False),
        schema=s,
    )
    op.create_index("job_logs_job_idx", "job_logs", ["job_id", "id"], schema=s)

    op.create_table(
        "workers",
        sa.Column("worker_id", sa.Text, primary_key=True),
        sa.Column("host_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("hostname", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column(
            "queues", pg.ARRAY(sa.Text), nullable=False, server_default=sa.text("'{}'::text[]")
        ),
        sa.Column("concurrency", sa.Integer, nullable=False, server_default=sa.text("1")),
        sa.Column("version", sa.Text),
        sa.Column("started_at", _tstz(), nullable=False, server_default=sa.text("now()")),
        sa.Column("last_seen", _tstz(), nullable=False, server_default=sa.text("now()")),
        sa.Column("stopped_at", _tstz()),
        sa.Column("clock_skew_seconds", sa.Double),
        sa.Column("meta", pg.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        schema=s,
    )

    op.execute(
        FUNCTIONS.format(
            s=s,
            jobs_channel=f"{s}_jobs",
            cancel_channel=f"{s}_cancel",
            default_max_attempts=20,
            max_seconds=MAX_DURATION_SECONDS,
        )
    )


def downgrade() -> None:
    s = _schema()
    op.execute(DROP_FUNCTIONS.format(s=s))
    op.drop_table("workers", schema=s)
    op.drop_table("job_logs", schema=s)
    op.drop_table("job_events", schema=s)
    op.drop_table("jobs", schema=s)
