"""Periodic jobs: broker.schedules and the functions operators use on it.

A schedule names a job (kind, args, queue, priority) and when to enqueue it: a five-field
cron expression read in a time zone, or a period in seconds (`every`). PostgreSQL cannot
evaluate cron, so ticks are computed in Python (workers, the API, the CLI) from the
database's now(); `next_run_at` NULL means "the next scheduler pass computes it", which is
what a schedule created from SQL (create_schedule) starts with. Workers enqueue each tick
with the idempotency key `schedule:<name>:<tick>`, so a tick is enqueued once however many
workers run the scheduler (docs/decisions/012-periodic-jobs.md).

Functions: create_schedule, pause_schedule, resume_schedule, trigger_schedule,
delete_schedule (PB005 for an unknown name, PB002 for a bad definition), the internal
_put_schedule (the one upsert) and _schedule_orphaned; view schedule_status.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLE = r"""
CREATE TABLE {s}.schedules (
  name text NOT NULL,
  kind text NOT NULL,
  args jsonb NOT NULL DEFAULT '{{}}'::jsonb,
  queue text NOT NULL DEFAULT 'default',
  priority integer NOT NULL DEFAULT 0,
  cron text,
  every double precision,
  timezone text NOT NULL DEFAULT 'UTC',
  backfill integer NOT NULL DEFAULT 1,
  paused boolean NOT NULL DEFAULT false,
  next_run_at timestamptz,
  last_run_at timestamptz,
  last_tick timestamptz,
  last_job_id bigint,
  error text,
  declared_by text,
  declared_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT schedules_pkey PRIMARY KEY (name),
  CONSTRAINT schedules_name_check
    CHECK (length(name) BETWEEN 1 AND 128 AND name !~ '[^A-Za-z0-9_.:-]'),
  CONSTRAINT schedules_kind_check
    CHECK (length(kind) BETWEEN 1 AND 200 AND kind !~ '[^A-Za-z0-9_.:-]'),
  CONSTRAINT schedules_queue_check
    CHECK (length(queue) BETWEEN 1 AND 128 AND queue !~ '[^A-Za-z0-9_.:-]'),
  CONSTRAINT schedules_args_check CHECK (jsonb_typeof(args) = 'object'),
  CONSTRAINT schedules_timing_check CHECK ((cron IS NULL) <> (every IS NULL)),
  CONSTRAINT schedules_every_check CHECK (every >= 1),
  CONSTRAINT schedules_cron_check CHECK (cron ~ '^\s*\S+(\s+\S+){{4}}\s*$'),
  CONSTRAINT schedules_backfill_check CHECK (backfill BETWEEN 1 AND 1000)
);
CREATE INDEX schedules_due_idx ON {s}.schedules (next_run_at) WHERE NOT paused AND error IS NULL;
"""

# The same text as the schedules section of broker/sql/schema.sql.
FUNCTIONS = r"""
-- Whether no live worker declares `kind` (workers record the kinds they run in
-- broker.workers.meta->'kinds' at start; live as the worker_status view judges it). The
-- scheduler skips an orphaned schedule's ticks instead of enqueuing jobs nobody runs.
CREATE FUNCTION {s}._schedule_orphaned(kind text) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT NOT EXISTS (
    SELECT 1 FROM {s}.worker_status ws JOIN {s}.workers w ON w.worker_id = ws.worker_id
    WHERE ws.status = 'alive' AND w.meta -> 'kinds' ? kind)
$$;

-- Create or replace a schedule: the one upsert every door goes through. Python doors pass
-- next_run_at (the first tick after database now(), computed with the cron library); SQL
-- callers leave it NULL and the next scheduler pass computes it. A replacement never
-- changes `paused`, keeps next_run_at unless the timing (cron, every, timezone) changed,
-- and clears `error`. A cron expression is only checked for its five fields here; the
-- scheduler parses it and sets `error` on a schedule it cannot run.
CREATE FUNCTION {s}._put_schedule(
  name text, kind text, args jsonb, queue text, priority integer, cron text,
  every double precision, timezone text, backfill integer, paused boolean,
  next_run_at timestamptz, declared_by text
) RETURNS SETOF {s}.schedules
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_variable
DECLARE
  problem text;
BEGIN
  problem := CASE
    WHEN name IS NULL OR length(name) NOT BETWEEN 1 AND 128 OR name ~ '[^A-Za-z0-9_.:-]'
      THEN 'schedule name must be 1-128 characters of letters, digits, _ . : -'
    WHEN kind IS NULL OR length(kind) NOT BETWEEN 1 AND 200 OR kind ~ '[^A-Za-z0-9_.:-]'
      THEN 'kind must be 1-200 characters of letters, digits, _ . : -'
    WHEN queue IS NULL OR length(queue) NOT BETWEEN 1 AND 128 OR queue ~ '[^A-Za-z0-9_.:-]'
      THEN 'queue must be 1-128 characters of letters, digits, _ . : -'
    WHEN args IS NULL OR jsonb_typeof(args) <> 'object' THEN 'args must be a JSON object'
    WHEN priority IS NULL THEN 'priority must be an integer'
    WHEN (cron IS NULL) = (every IS NULL) THEN 'a schedule needs exactly one of cron or every'
    WHEN cron !~ '^\s*\S+(\s+\S+){{4}}\s*$'
      THEN 'cron must have 5 fields (minute hour day-of-month month day-of-week)'
    WHEN NOT (every BETWEEN 1 AND 3155760000)
      THEN 'every must be between 1 and 3155760000 seconds'
    WHEN timezone IS NULL OR NOT EXISTS (SELECT 1 FROM pg_timezone_names z WHERE z.name = timezone)
      THEN format('unknown time zone %L (use an IANA name)', timezone)
    WHEN backfill IS NULL OR backfill NOT BETWEEN 1 AND 1000
      THEN 'backfill must be between 1 and 1000'
  END;
  IF problem IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'PB002', MESSAGE = problem;
  END IF;
  RETURN QUERY
  INSERT INTO {s}.schedules AS sc
    (name, kind, args, queue, priority, cron, every, timezone, backfill, paused, next_run_at,
     declared_by, declared_at)
  VALUES (name, kind, args, queue, priority, cron, every, timezone, backfill,
          coalesce(paused, false), next_run_at, declared_by,
          CASE WHEN declared_by IS NOT NULL THEN now() END)
  ON CONFLICT ON CONSTRAINT schedules_pkey DO UPDATE
  SET kind = excluded.kind, args = excluded.args, queue = excluded.queue,
      priority = excluded.priority, cron = excluded.cron, every = excluded.every,
      timezone = excluded.timezone, backfill = excluded.backfill,
      next_run_at = CASE
        WHEN (sc.cron, sc.every, sc.timezone)
             IS NOT DISTINCT FROM (excluded.cron, excluded.every, excluded.timezone)
          THEN sc.next_run_at
        ELSE excluded.next_run_at END,
      error = NULL, declared_by = excluded.declared_by, declared_at = excluded.declared_at,
      updated_at = now()
  RETURNING sc.*;
END
$$;

-- Create or replace a schedule from SQL: a five-field cron expression (read in
-- `timezone`) or a period. Its first tick is computed by the next scheduler pass (in a
-- worker), which also parses the expression fully and sets `error` if it cannot.
CREATE FUNCTION {s}.create_schedule(
  name text, kind text, cron text DEFAULT NULL, every interval DEFAULT NULL,
  args jsonb DEFAULT '{{}}', queue text DEFAULT 'default', priority integer DEFAULT 0,
  timezone text DEFAULT 'UTC', backfill integer DEFAULT 1, paused boolean DEFAULT false
) RETURNS SETOF {s}.schedules
LANGUAGE sql VOLATILE AS $$
  SELECT * FROM {s}._put_schedule(name, kind, args, queue, priority, cron,
    extract(epoch FROM every)::double precision, timezone, backfill, paused, NULL, NULL)
$$;

-- Stop enqueuing a schedule's ticks (trigger_schedule still works).
CREATE FUNCTION {s}.pause_schedule(name text) RETURNS SETOF {s}.schedules
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  RETURN QUERY UPDATE {s}.schedules sc SET paused = true, updated_at = now()
  WHERE sc.name = pause_schedule.name RETURNING sc.*;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB005',
      MESSAGE = format('schedule %L not found', pause_schedule.name), HINT = pause_schedule.name;
  END IF;
END
$$;

-- Resume a paused schedule from its next tick after now: ticks missed while it was paused
-- are not enqueued (next_run_at NULL: the next scheduler pass computes it).
CREATE FUNCTION {s}.resume_schedule(name text) RETURNS SETOF {s}.schedules
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  RETURN QUERY UPDATE {s}.schedules sc
  SET paused = false, updated_at = now(),
      next_run_at = CASE WHEN sc.paused AND sc.next_run_at <= now() THEN NULL
                         ELSE sc.next_run_at END
  WHERE sc.name = resume_schedule.name RETURNING sc.*;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB005',
      MESSAGE = format('schedule %L not found', resume_schedule.name), HINT = resume_schedule.name;
  END IF;
END
$$;

-- Enqueue a schedule's job now, outside its timing and whether paused or not, with its
-- own idempotency key (schedule:<name>:manual:<uuid>); returns the job id.
CREATE FUNCTION {s}.trigger_schedule(name text) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  sc {s}.schedules;
  job bigint;
BEGIN
  SELECT * INTO sc FROM {s}.schedules s WHERE s.name = trigger_schedule.name FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB005',
      MESSAGE = format('schedule %L not found', trigger_schedule.name), HINT = trigger_schedule.name;
  END IF;
  job := {s}.enqueue(sc.kind, sc.args, queue => sc.queue, priority => sc.priority,
    idempotency_key => format('schedule:%s:manual:%s', sc.name, gen_random_uuid()));
  UPDATE {s}.schedules s SET last_run_at = now(), last_job_id = job WHERE s.name = sc.name;
  RETURN job;
END
$$;

-- Remove a schedule (its jobs stay). A code-declared one is declared again by the next
-- worker that starts with its task.
CREATE FUNCTION {s}.delete_schedule(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  DELETE FROM {s}.schedules sc WHERE sc.name = delete_schedule.name;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB005',
      MESSAGE = format('schedule %L not found', delete_schedule.name), HINT = delete_schedule.name;
  END IF;
  RETURN true;
END
$$;

-- Schedules with whether they are orphaned (no live worker declares their kind).
CREATE VIEW {s}.schedule_status AS
SELECT sc.name, sc.kind, sc.args, sc.queue, sc.priority, sc.cron, sc.every, sc.timezone,
       sc.backfill, sc.paused, sc.next_run_at, sc.last_run_at, sc.last_tick, sc.last_job_id,
       sc.error, sc.declared_by, sc.declared_at, sc.created_at, sc.updated_at,
       {s}._schedule_orphaned(sc.kind) AS orphaned
FROM {s}.schedules sc;
"""

DOWNGRADE = """
DROP VIEW {s}.schedule_status;
DROP FUNCTION {s}.delete_schedule(text);
DROP FUNCTION {s}.trigger_schedule(text);
DROP FUNCTION {s}.resume_schedule(text);
DROP FUNCTION {s}.pause_schedule(text);
DROP FUNCTION {s}.create_schedule(text, text, text, interval, jsonb, text, integer, text,
                                  integer, boolean);
DROP FUNCTION {s}._put_schedule(text, text, jsonb, text, integer, text, double precision,
                                text, integer, boolean, timestamptz, text);
DROP FUNCTION {s}._schedule_orphaned(text);
DROP TABLE {s}.schedules;
"""


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def upgrade() -> None:
    s = _schema()
    op.execute(TABLE.format(s=s))
    op.execute(FUNCTIONS.format(s=s))


def downgrade() -> None:
    op.execute(DOWNGRADE.format(s=_schema()))
