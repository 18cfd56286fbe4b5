-- Runtime queries on broker.job_events (append-only; writes happen inside jobs.sql CTEs).

-- name: events_for_job
SELECT id, job_id, event, epoch, worker_id, at, detail
FROM {schema}.job_events WHERE job_id = %(job_id)s AND id > %(after)s ORDER BY id LIMIT %(limit)s;
