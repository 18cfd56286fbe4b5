-- Retention: deleting finished jobs (with their events and logs) past their state's
-- retention. The work itself is broker.prune_jobs() (migration 0002), shared with operators.

-- name: prune_batch
-- One bounded batch, by the one session holding the pruner's advisory lock for this
-- transaction; NULL when another process is pruning right now.
SELECT CASE WHEN pg_try_advisory_xact_lock(hashtext('{schema}.pruner'))
            THEN {schema}.prune_jobs(%(state)s, make_interval(secs => %(older_than)s), %(batch)s)
       END;

-- name: prune_count
-- How many jobs prune_batch would delete for `state` in one run of at most `most` jobs
-- (`broker prune --dry-run`); bounded like the run itself.
SELECT count(*) FROM (
    SELECT 1 FROM {schema}.jobs j
    WHERE j.state = %(state)s AND j.finished_at < now() - make_interval(secs => %(older_than)s)
    LIMIT %(most)s
) doomed;
