-- Runtime queries on broker.job_logs: lines a handler logs while it holds the lease.

-- name: log_append_many
-- Fenced like every worker write: lines from a lost lease are dropped. The job's row is
-- locked (FOR NO KEY UPDATE, jobs in id order so two appenders never deadlock) before a
-- line takes its id, so one job's appends commit one after the other and a job's line ids
-- are in commit order: a follower reading "after id N" never skips a line that commits
-- later with a lower id (decision 023). The lock also waits for a concurrent finish, after
-- which the re-checked fence drops the line: once a follower sees the job finished, no
-- line of it can still commit. Followers register in job_waiters, and only then is
-- <schema>_logs notified (with the job ids): nobody following, no NOTIFY.
WITH d AS (
    SELECT u.job_id, u.epoch, u.line, u.ord
    FROM unnest(%(job_ids)s::bigint[], %(epochs)s::bigint[], %(lines)s::text[])
         WITH ORDINALITY AS u(job_id, epoch, line, ord)
),
held AS (
    SELECT d.job_id, d.epoch, d.line, d.ord
    FROM d JOIN {schema}.jobs j ON j.id = d.job_id AND j.lease_epoch = d.epoch AND j.state = 'running'
    ORDER BY d.job_id, d.ord
    FOR NO KEY UPDATE OF j
),
stored AS (
    INSERT INTO {schema}.job_logs (job_id, epoch, line)
    SELECT h.job_id, h.epoch, h.line FROM held h ORDER BY h.job_id, h.ord
    RETURNING id, job_id
),
notified AS (
    SELECT pg_notify((parse_ident('{schema}'))[1] || '_logs',
                     string_agg(DISTINCT s.job_id::text, ','))
    FROM stored s
    WHERE EXISTS (SELECT 1 FROM {schema}.job_waiters w WHERE w.job_id = s.job_id)
    HAVING count(*) > 0
)
SELECT s.id FROM stored s LEFT JOIN notified ON true;

-- name: logs_for_job
SELECT id, job_id, epoch, at, line
FROM {schema}.job_logs WHERE job_id = %(job_id)s AND id > %(after)s ORDER BY id LIMIT %(limit)s;

-- name: logs_listen
-- A log follower's channels: <schema>_logs (lines appended for a followed job) and
-- <schema>_done (a followed job ended; the registration makes the jobs trigger send it).
-- Built on the server for the reason worker_listen gives.
DO $$
BEGIN
    EXECUTE 'LISTEN ' || quote_ident((parse_ident('{schema}'))[1] || '_logs');
    EXECUTE 'LISTEN ' || quote_ident((parse_ident('{schema}'))[1] || '_done');
END
$$;
