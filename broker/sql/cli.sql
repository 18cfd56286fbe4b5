-- Read-only queries of the operator CLI (`broker stats`, `broker workers`).

-- name: cli_summary
SELECT count(*) FILTER (WHERE status = 'alive') AS workers_alive, now() AS db_time
FROM {schema}.worker_status;
