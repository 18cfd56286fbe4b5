-- Read-only queries for operators and the REST API: listing, queue/worker views, metrics.

-- name: jobs_list
-- Keyset paging, newest first: the cursor is the last id of the previous page, so a page
-- costs the same however deep it is. Every filter is optional (NULL means "any").
SELECT id, queue, kind, args, priority, state, run_at, attempts, max_attempts, lease_epoch,
       lease_expires_at, worker_id, idempotency_key, subject_key, result, last_error, tags,
       created_at, started_at, finished_at, cancel_requested_at, timeout, "group",
       concurrency_key, deadline,
       ARRAY(SELECT d.depends_on FROM {schema}.job_dependencies d
             WHERE d.job_id = jobs.id ORDER BY 1) AS depends_on, meta
FROM {schema}.jobs
WHERE (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(state)s::text IS NULL OR state = %(state)s::text)
  -- Implied by state = 'running' (jobs_lease_check); spelled out so that filter reads the
  -- running jobs from jobs_lease_idx instead of walking the history.
  AND (%(state)s::text IS DISTINCT FROM 'running' OR lease_expires_at IS NOT NULL)
  AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
  AND (%(tag)s::text IS NULL OR tags @> ARRAY[%(tag)s::text])
  AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s::timestamptz)
  AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s::timestamptz)
  AND (%(group)s::text IS NULL OR "group" = %(group)s::text)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: queues_list
-- queue_stats, plus configured queues (paused or limited) that hold no jobs (the view only
-- lists queues with jobs), with their limits, and whether a live worker serves the queue.
SELECT coalesce(s.queue, p.name) AS queue,
       coalesce(s.queued, 0), coalesce(s.available, 0), coalesce(s.scheduled, 0),
       coalesce(s.running, 0), coalesce(s.succeeded, 0), coalesce(s.failed, 0),
       coalesce(s.cancelled, 0), coalesce(s.oldest_available_age_seconds, 0),
       coalesce(p.paused, false) AS paused, p.paused_at, p.pause_reason, coalesce(s.waiting, 0),
       p.concurrency_limit, p.rate_limit, extract(epoch FROM p.rate_period)::float8,
       EXISTS (SELECT 1 FROM {schema}.worker_status ws
               WHERE ws.status = 'alive' AND coalesce(s.queue, p.name) = ANY (ws.queues))
FROM {schema}.queue_stats s
FULL JOIN (SELECT * FROM {schema}.queues
           WHERE paused OR concurrency_limit IS NOT NULL OR rate_limit IS NOT NULL) p
  ON p.name = s.queue
ORDER BY 1;

-- name: workers_list
-- Status (alive/stopped/gone) comes from the worker_status view, so the API, the CLI and
-- psql agree; it is judged on the database clock only, like leases are.
SELECT s.worker_id, s.host_id::text, s.seq, s.hostname, s.pid, s.queues, s.concurrency,
       w.version, s.started_at, s.last_seen, w.stopped_at, s.clock_skew_seconds,
       s.seconds_since_seen, s.running_jobs, s.status
FROM {schema}.worker_status s JOIN {schema}.workers w USING (worker_id)
ORDER BY s.host_id, s.seq;

-- name: stats_overview
-- Totals from queue_stats: live states from their partial indexes, finished ones from the
-- job_counts rollup, so the cost does not grow with the retained history.
SELECT coalesce(sum(queued), 0)::bigint AS queued,
       coalesce(sum(available), 0)::bigint AS available,
       coalesce(sum(running), 0)::bigint AS running,
       coalesce(sum(succeeded), 0)::bigint AS succeeded,
       coalesce(sum(failed), 0)::bigint AS failed,
       coalesce(sum(cancelled), 0)::bigint AS cancelled,
       coalesce(max(oldest_available_age_seconds), 0)::float8 AS oldest_available_age_seconds,
       (SELECT count(*) FROM {schema}.worker_status WHERE status = 'alive') AS workers_alive,
       now() AS db_time,
       coalesce(sum(waiting), 0)::bigint AS waiting
FROM {schema}.queue_stats;

-- name: metrics_snapshot
-- Everything /metrics reads from the database, in one statement: live workers, and per
-- queue (the queues queues_list lists) its jobs in every state and how long its oldest
-- runnable job has waited. With no queue at all there is still one row, NULL past the first
-- column. Counts come from queue_stats, so the cost does not grow with the history.
SELECT w.alive, q.queue, q.waiting, q.queued, q.running, q.succeeded, q.failed, q.cancelled,
       q.oldest_available_age_seconds
FROM (SELECT count(*) FROM {schema}.worker_status WHERE status = 'alive') AS w(alive)
LEFT JOIN (
  SELECT coalesce(s.queue, p.name) AS queue,
         coalesce(s.waiting, 0) AS waiting, coalesce(s.queued, 0) AS queued,
         coalesce(s.running, 0) AS running, coalesce(s.succeeded, 0) AS succeeded,
         coalesce(s.failed, 0) AS failed, coalesce(s.cancelled, 0) AS cancelled,
         coalesce(s.oldest_available_age_seconds, 0) AS oldest_available_age_seconds
  FROM {schema}.queue_stats s
  FULL JOIN (SELECT name FROM {schema}.queues
             WHERE paused OR concurrency_limit IS NOT NULL OR rate_limit IS NOT NULL) p
    ON p.name = s.queue
) q ON true
ORDER BY q.queue;

-- name: queues_recent_outcomes
-- Jobs per queue that finished within the window, by finished_at in database time: one
-- range of jobs_finished_idx per finished state (a BitmapOr), so the history outside the
-- window is not read. Spelled as ORs: with `state IN (...)` PostgreSQL 15 scanned the
-- whole table (an hour's 3,000 of 200,000 jobs), and a LATERAL over the states was
-- flattened into a hash join over a seq scan. Planned with its values (prepare=False): a
-- generic plan cannot see how narrow the window is.
SELECT queue,
       count(*) FILTER (WHERE state = 'succeeded'),
       count(*) FILTER (WHERE state = 'failed'),
       count(*) FILTER (WHERE state = 'cancelled')
FROM {schema}.jobs
WHERE (state = 'succeeded' OR state = 'failed' OR state = 'cancelled')
  AND finished_at >= now() - make_interval(secs => %(window)s::float8)
GROUP BY queue
ORDER BY queue;

-- name: groups_list
-- Group names by a loose index scan of jobs_group_idx (one probe per distinct name, so
-- listing costs the names listed, not their jobs), then each listed group's counts per
-- state from the same index, group by group (LATERAL: a join read every grouped job,
-- listed or not).
WITH RECURSIVE names(name) AS (
  -- Every group name sorts after '' (names are not empty): a range however `after` is.
  (SELECT "group" FROM {schema}.jobs
   WHERE "group" IS NOT NULL AND "group" > coalesce(%(after)s::text, '')
   ORDER BY "group" LIMIT 1)
  UNION ALL
  SELECT (SELECT j."group" FROM {schema}.jobs j
          WHERE j."group" IS NOT NULL AND j."group" > n.name ORDER BY j."group" LIMIT 1)
  FROM names n WHERE n.name IS NOT NULL
), listed AS (
  SELECT name FROM names WHERE name IS NOT NULL LIMIT %(limit)s
)
SELECT l.name, c.state, c.jobs
FROM listed l
CROSS JOIN LATERAL (SELECT j.state, count(*) AS jobs FROM {schema}.jobs j
                    WHERE j."group" = l.name GROUP BY j.state) c
ORDER BY l.name, c.state;

-- name: group_counts
-- A group's jobs per state, from jobs_group_idx (an index-only scan of the group's rows).
SELECT state, count(*) FROM {schema}.jobs WHERE "group" = %(group)s GROUP BY state;

-- name: schema_revision
-- Raises undefined_table on a database that was never migrated; callers treat that as
-- "not ready".
SELECT version_num FROM {schema}.alembic_version;
