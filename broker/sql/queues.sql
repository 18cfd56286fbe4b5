-- Queue settings: limits and the pause (broker.queues; migration 0010).

-- name: queue_configure
-- PATCH semantics for the API and the CLI: a setting not given keeps its stored value.
-- configure_queue() refuses bad values (SQLSTATE PB010).
SELECT q.name, q.concurrency_limit, q.rate_limit, extract(epoch FROM q.rate_period)::float8,
       q.paused
FROM {schema}.configure_queue(
    %(queue)s::text,
    CASE WHEN %(set_concurrency)s::bool THEN %(concurrency_limit)s::integer
         ELSE (SELECT c.concurrency_limit FROM {schema}.queues c WHERE c.name = %(queue)s::text) END,
    CASE WHEN %(set_rate)s::bool THEN %(rate_limit)s::integer
         ELSE (SELECT c.rate_limit FROM {schema}.queues c WHERE c.name = %(queue)s::text) END,
    CASE WHEN %(set_period)s::bool THEN make_interval(secs => %(rate_period)s::float8)
         ELSE (SELECT c.rate_period FROM {schema}.queues c WHERE c.name = %(queue)s::text) END
) q;

-- name: queue_pause
-- Whether the queue was running before (pause_queue() itself returns nothing).
SELECT NOT coalesce((SELECT paused FROM {schema}.queues WHERE name = %(queue)s::text), false),
       {schema}.pause_queue(%(queue)s::text, %(reason)s::text);

-- name: queue_resume
SELECT {schema}.resume_queue(%(queue)s::text);
