-- Read-only queries of the operator CLI (`broker stats`, `broker workers`).

-- name: cli_queue_stats
-- queue_stats, plus paused queues that hold no jobs (the view only lists queues with jobs).
SELECT coalesce(s.queue, p.queue) AS queue,
       coalesce(s.queued, 0), coalesce(s.available, 0), coalesce(s.scheduled, 0),
       coalesce(s.running, 0), coalesce(s.succeeded, 0), coalesce(s.failed, 0),
       coalesce(s.cancelled, 0), coalesce(s.oldest_available_age_seconds, 0),
       p.queue IS NOT NULL AS paused, p.paused_at, p.reason
FROM {schema}.queue_stats s
FULL JOIN {schema}.queue_pauses p ON p.queue = s.queue
ORDER BY 1;

-- name: cli_workers
-- Status (alive/stopped/gone) comes from the worker_status view, so the CLI and psql agree.
SELECT s.worker_id, s.host_id::text, s.seq, s.hostname, s.pid, s.queues, s.concurrency,
       w.version, s.started_at, s.last_seen, w.stopped_at, s.clock_skew_seconds,
       s.seconds_since_seen, s.running_jobs, s.status
FROM {schema}.worker_status s
JOIN {schema}.workers w ON w.worker_id = s.worker_id
ORDER BY s.host_id, s.seq;

-- name: cli_summary
SELECT count(*) FILTER (WHERE status = 'alive') AS workers_alive, now() AS db_time
FROM {schema}.worker_status;
