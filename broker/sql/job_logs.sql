-- Runtime queries on broker.job_logs: lines a handler logs while it holds the lease.

-- name: log_append_many
-- Fenced like every worker write: lines from a lost lease are dropped.
INSERT INTO {schema}.job_logs (job_id, epoch, line)
SELECT d.job_id, d.epoch, d.line
FROM unnest(%(job_ids)s::bigint[], %(epochs)s::bigint[], %(lines)s::text[]) AS d(job_id, epoch, line)
JOIN {schema}.jobs j ON j.id = d.job_id AND j.lease_epoch = d.epoch AND j.state = 'running'
RETURNING id;

-- name: logs_for_job
SELECT id, job_id, epoch, at, line
FROM {schema}.job_logs WHERE job_id = %(job_id)s AND id > %(after)s ORDER BY id LIMIT %(limit)s;
