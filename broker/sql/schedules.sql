-- Runtime queries on broker.schedules (periodic jobs; broker/schedules.py builds them).
-- Columns of a schedule, in broker.schedules.Schedule's order, end with `orphaned`.

-- name: schedule_clock
-- Python doors compute a new schedule's first tick from this instant, never their own clock.
SELECT now();

-- name: schedule_put
SELECT p.name, p.kind, p.args, p.queue, p.priority, p.cron, p.every, p.timezone, p.backfill,
       p.paused, p.next_run_at, p.last_run_at, p.last_tick, p.last_job_id, p.error,
       p.declared_by, p.declared_at, p.created_at, p.updated_at,
       {schema}._schedule_orphaned(p.kind)
FROM {schema}._put_schedule(%(name)s::text, %(kind)s::text, %(args)s::jsonb, %(queue)s::text,
                            %(priority)s::integer, %(cron)s::text, %(every)s::double precision,
                            %(timezone)s::text, %(backfill)s::integer, %(paused)s::boolean,
                            %(next_run_at)s::timestamptz, %(declared_by)s::text) p;

-- name: schedule_list
SELECT name, kind, args, queue, priority, cron, every, timezone, backfill, paused, next_run_at,
       last_run_at, last_tick, last_job_id, error, declared_by, declared_at, created_at,
       updated_at, orphaned
FROM {schema}.schedule_status ORDER BY name;

-- name: schedule_get
SELECT name, kind, args, queue, priority, cron, every, timezone, backfill, paused, next_run_at,
       last_run_at, last_tick, last_job_id, error, declared_by, declared_at, created_at,
       updated_at, orphaned
FROM {schema}.schedule_status WHERE name = %(name)s;

-- name: schedule_pause
SELECT p.name, p.kind, p.args, p.queue, p.priority, p.cron, p.every, p.timezone, p.backfill,
       p.paused, p.next_run_at, p.last_run_at, p.last_tick, p.last_job_id, p.error,
       p.declared_by, p.declared_at, p.created_at, p.updated_at,
       {schema}._schedule_orphaned(p.kind)
FROM {schema}.pause_schedule(%(name)s::text) p;

-- name: schedule_resume
SELECT p.name, p.kind, p.args, p.queue, p.priority, p.cron, p.every, p.timezone, p.backfill,
       p.paused, p.next_run_at, p.last_run_at, p.last_tick, p.last_job_id, p.error,
       p.declared_by, p.declared_at, p.created_at, p.updated_at,
       {schema}._schedule_orphaned(p.kind)
FROM {schema}.resume_schedule(%(name)s::text) p;

-- name: schedule_trigger
SELECT {schema}.trigger_schedule(%(name)s::text);

-- name: schedule_delete
SELECT {schema}.delete_schedule(%(name)s::text);

-- name: schedule_claim_due
-- One scheduler pass's batch: due (or first tick not yet computed), unpaused, unbroken
-- schedules, locked until the pass commits. SKIP LOCKED: schedulers in other workers take
-- other rows (or none) instead of waiting, and a row another pass advanced meanwhile is
-- re-checked against its new next_run_at. now() is the instant the whole pass computes
-- ticks from.
SELECT sc.name, sc.kind, sc.args, sc.queue, sc.priority, sc.cron, sc.every, sc.timezone,
       sc.backfill, sc.next_run_at, sc.last_tick, {schema}._schedule_orphaned(sc.kind), now()
FROM {schema}.schedules sc
WHERE (sc.next_run_at IS NULL OR sc.next_run_at <= now()) AND NOT sc.paused
  AND sc.error IS NULL
ORDER BY sc.next_run_at NULLS FIRST, sc.name
LIMIT %(limit)s
FOR UPDATE OF sc SKIP LOCKED;

-- name: schedule_advance
-- The pass's writes to the rows it claimed: the next tick, and the tick and job it
-- enqueued (last_run_at in database time), or why it cannot run the schedule.
UPDATE {schema}.schedules sc
SET next_run_at = u.next_run_at,
    last_run_at = CASE WHEN u.tick IS NULL THEN sc.last_run_at ELSE now() END,
    last_tick = coalesce(u.tick, sc.last_tick),
    last_job_id = coalesce(u.job_id, sc.last_job_id),
    error = u.error
FROM jsonb_to_recordset(%(rows)s::jsonb)
     AS u(name text, next_run_at timestamptz, tick timestamptz, job_id bigint, error text)
WHERE sc.name = u.name
RETURNING sc.name;

-- name: schedule_next_due
-- How long the scheduler may sleep: seconds until the earliest next_run_at (0 when a first
-- tick waits to be computed), NULL when no schedule can fire.
SELECT CASE WHEN bool_or(next_run_at IS NULL) THEN 0
            ELSE extract(epoch FROM min(next_run_at) - now()) END
FROM {schema}.schedules WHERE NOT paused AND error IS NULL;
