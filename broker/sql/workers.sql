-- Runtime queries on broker.workers (the worker registry) and the worker's LISTEN setup.

-- name: worker_register
-- A restarted worker keeps its id, so registering is an upsert; started_at, pid and
-- stopped_at describe the current run. `db_clock` is returned to measure clock skew.
INSERT INTO {schema}.workers AS w
    (worker_id, host_id, seq, hostname, pid, queues, concurrency, version, clock_skew_seconds,
     meta)
VALUES (%(worker_id)s, %(host_id)s::uuid, %(seq)s, %(hostname)s, %(pid)s, %(queues)s::text[],
        %(concurrency)s, %(version)s, %(clock_skew)s, %(meta)s::jsonb)
ON CONFLICT (worker_id) DO UPDATE
SET host_id = excluded.host_id, seq = excluded.seq, hostname = excluded.hostname,
    pid = excluded.pid, queues = excluded.queues, concurrency = excluded.concurrency,
    version = excluded.version, clock_skew_seconds = excluded.clock_skew_seconds,
    meta = excluded.meta, started_at = now(), last_seen = now(), stopped_at = NULL
RETURNING worker_id, clock_timestamp();

-- name: worker_get
-- Used before registering: is another live process already using this id?
SELECT worker_id, hostname, pid, stopped_at IS NULL AND last_seen > now() - make_interval(secs => %(ttl)s)
       AS live
FROM {schema}.workers WHERE worker_id = %(worker_id)s;

-- name: worker_seen
-- Refresh last_seen (database time) and the latest clock skew measurement.
UPDATE {schema}.workers
SET last_seen = now(), clock_skew_seconds = coalesce(%(clock_skew)s, clock_skew_seconds)
WHERE worker_id = %(worker_id)s
RETURNING worker_id, clock_timestamp();

-- name: worker_stopped
UPDATE {schema}.workers SET stopped_at = now(), last_seen = now()
WHERE worker_id = %(worker_id)s AND pid = %(pid)s
RETURNING worker_id;

-- name: worker_ping
-- Proves the LISTEN connection is alive (a silently dead socket fails or times out).
SELECT 1;

-- name: worker_listen
-- LISTEN takes no bind parameters and the loader renders the schema as one quoted
-- identifier, so the channel names (<schema>_jobs, <schema>_cancel and the probe's
-- <schema>_probe, as Settings names them) are built and quoted on the server.
DO $$
BEGIN
    EXECUTE 'LISTEN ' || quote_ident((parse_ident('{schema}'))[1] || '_jobs');
    EXECUTE 'LISTEN ' || quote_ident((parse_ident('{schema}'))[1] || '_cancel');
    EXECUTE 'LISTEN ' || quote_ident((parse_ident('{schema}'))[1] || '_probe');
END
$$;

-- name: listen_probe
-- Sent from a second connection after a LISTEN (broker/_listen_probe.py): a LISTEN
-- connection that never hears its own token is not a session of its own (a transaction
-- pooler between it and the server), so NOTIFY cannot wake it.
SELECT pg_notify((parse_ident('{schema}'))[1] || '_probe', %(token)s);

-- name: claim_wait_register
-- A worker whose claim came back empty waits for these queues (decision 028): until
-- expires_at, enqueues into them notify. Refreshed while the worker still waits.
INSERT INTO {schema}.claim_waiters AS w (queue, worker_id, expires_at)
SELECT q, %(worker_id)s, now() + make_interval(secs => %(ttl)s)
FROM unnest(%(queues)s::text[]) AS q
ON CONFLICT (queue, worker_id) DO UPDATE SET expires_at = excluded.expires_at
RETURNING w.queue;

-- name: claim_wait_settled
-- True once no enqueue into the queues is in flight, so a claim from now on sees every
-- job whose enqueue did not see the registration (schema.sql, _claim_waiters_settled()).
SELECT {schema}._claim_waiters_settled(%(queues)s::text[]);

-- name: claim_wait_leave
-- The worker is busy (a full claim) or stopping: enqueues need not wake it. Expired rows
-- of the same queues (a worker killed while it waited) go with it.
DELETE FROM {schema}.claim_waiters
WHERE queue = ANY(%(queues)s::text[]) AND (worker_id = %(worker_id)s OR expires_at < now())
RETURNING queue;
