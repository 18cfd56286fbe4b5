-- Runtime queries on broker.jobs. `{schema}` is replaced with the quoted schema name when
-- the file is loaded; parameters are psycopg named placeholders.

-- name: job_enqueue_many
-- All enqueue rules (validation, defaults, idempotency, subject supersede, events, NOTIFY)
-- live in the enqueue_many() SQL function, shared with broker.enqueue() for SQL callers.
SELECT ord, job_id, created FROM {schema}.enqueue_many(%(specs)s::jsonb) ORDER BY ord;

-- name: job_enqueue_routed
-- enqueue_many() with the registry's part of the routing rule (decision 023), in the
-- same round trip: a spec without "queue" goes to the queue that live workers (as
-- worker_status judges them) declare for its kind in meta->'task_queues', the one most of
-- them declare (ties: the first by name), else 'default'. Each row also says what the
-- warnings need: every queue declared for the kind, whether a live worker serves the
-- job's queue, whether one that runs the kind does, and the queues where live workers run
-- the kind. The registry holds a row per worker process, so this reads a few rows.
WITH live AS (
    SELECT w.queues, w.meta
    FROM {schema}.worker_status ws JOIN {schema}.workers w USING (worker_id)
    WHERE ws.status = 'alive'
),
spec AS (
    SELECT e.ord, e.spec, e.spec ->> 'kind' AS kind, e.spec ? 'queue' AS named
    FROM jsonb_array_elements(%(specs)s::jsonb) WITH ORDINALITY AS e(spec, ord)
),
routed AS (
    SELECT s.ord, s.kind, s.named, d.declared,
           CASE WHEN s.named THEN s.spec
                ELSE s.spec || jsonb_build_object('queue', coalesce(d.declared[1], 'default'))
           END AS spec
    FROM spec s
    CROSS JOIN LATERAL (
        SELECT coalesce(array_agg(c.queue ORDER BY c.n DESC, c.queue), '{{}}') AS declared
        FROM (SELECT l.meta -> 'task_queues' ->> s.kind AS queue, count(*) AS n
              FROM live l WHERE l.meta -> 'task_queues' ? s.kind GROUP BY 1) c
    ) d
),
done AS (
    SELECT e.ord, e.job_id, e.created
    FROM {schema}.enqueue_many((SELECT jsonb_agg(r.spec ORDER BY r.ord) FROM routed r)) e
)
SELECT d.ord, d.job_id, d.created, r.kind, r.spec ->> 'queue', r.named, r.declared,
       EXISTS (SELECT 1 FROM live l WHERE r.spec ->> 'queue' = ANY (l.queues)),
       EXISTS (SELECT 1 FROM live l
               WHERE r.spec ->> 'queue' = ANY (l.queues) AND l.meta -> 'kinds' ? r.kind),
       ARRAY(SELECT DISTINCT q FROM live l CROSS JOIN unnest(l.queues) AS q
             WHERE l.meta -> 'kinds' ? r.kind ORDER BY 1)
FROM done d JOIN routed r USING (ord)
ORDER BY d.ord;

-- name: job_enqueue_one
-- One plain job (no idempotency or subject key, no dependencies: broker.spec.plain)
-- into a named queue, without the enqueue_many() function, about twice the calls per
-- second (decision 024). The contract is the same: broker.spec.check() has applied
-- _parse_specs' rules before the statement (the COPY path relies on the same checks)
-- and the table's constraints hold in it; the defaults, the `enqueued` event and the
-- NOTIFY (only for a job runnable now, and only while a worker waits on its queue) are
-- enqueue_many()'s. The rows are job_enqueue_one_rows, filled in by broker._queries.
WITH {rows}
SELECT i.id, (SELECT count(*) FROM notified) FROM ins i;

-- name: job_enqueue_one_routed
-- The same for a job whose caller named no queue: the live workers' declarations choose
-- it as in job_enqueue_routed, and the row carries the same placement columns. Its own
-- statement, because the registry's CTEs cost a named queue's enqueue a seventh even behind a
-- one-time filter.
WITH live AS (
    SELECT w.queues, w.meta
    FROM {schema}.worker_status ws JOIN {schema}.workers w USING (worker_id)
    WHERE ws.status = 'alive'
),
declared AS (
    SELECT coalesce(array_agg(c.queue ORDER BY c.n DESC, c.queue), '{{}}') AS queues
    FROM (SELECT l.meta -> 'task_queues' ->> %(kind)s::text AS queue, count(*) AS n
          FROM live l WHERE l.meta -> 'task_queues' ? %(kind)s::text GROUP BY 1) c
),
{rows}
SELECT 1, i.id, true, i.kind, i.queue, false,
       (SELECT d.queues FROM declared d),
       EXISTS (SELECT 1 FROM live l WHERE i.queue = ANY (l.queues)),
       EXISTS (SELECT 1 FROM live l WHERE i.queue = ANY (l.queues) AND l.meta -> 'kinds' ? i.kind),
       ARRAY(SELECT DISTINCT q FROM live l CROSS JOIN unnest(l.queues) AS q
             WHERE l.meta -> 'kinds' ? i.kind ORDER BY 1),
       (SELECT count(*) FROM notified)
FROM ins i;

-- name: job_enqueue_one_rows
-- The CTEs both single enqueues share (not a statement of its own): the job in its queue
-- (the named one, or the declared one), its `enqueued` event, and the wake-up of its
-- queue's waiting workers when it is runnable now (decision 028).
ins AS (
    INSERT INTO {schema}.jobs (queue, kind, args, priority, run_at, max_attempts, timeout,
                               tags, "group", concurrency_key, deadline, meta)
    VALUES ({queue}, %(kind)s::text, %(args)s::jsonb, %(priority)s::integer,
            coalesce(%(run_at)s::timestamptz,
                     now() + make_interval(secs => coalesce(%(delay)s::float8, 0))),
            %(max_attempts)s::integer, make_interval(secs => %(timeout)s::float8),
            %(tags)s::text[], %(group)s::text, %(concurrency_key)s::text,
            coalesce(%(deadline)s::timestamptz,
                     now() + make_interval(secs => %(start_within)s::float8)),
            coalesce(%(meta)s::jsonb, '{{}}'))
    RETURNING id, queue, kind, run_at
),
ev AS (
    INSERT INTO {schema}.job_events (job_id, event) SELECT id, 'enqueued' FROM ins
),
notified AS (
    SELECT {schema}._wake_queue(%(channel)s::text, queue) FROM ins WHERE run_at <= now()
)

-- name: job_get
SELECT id, queue, kind, args, priority, state, run_at, attempts, max_attempts, lease_epoch,
       lease_expires_at, worker_id, idempotency_key, subject_key, result, last_error, tags,
       created_at, started_at, finished_at, cancel_requested_at, timeout, "group",
       concurrency_key, deadline,
       ARRAY(SELECT d.depends_on FROM {schema}.job_dependencies d
             WHERE d.job_id = jobs.id ORDER BY 1) AS depends_on, meta
FROM {schema}.jobs WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id;

-- name: job_claim
-- The claim of a worker of one queue; job_claim_many is the same statement for a worker
-- of several. The loader (broker._queries) puts job_claim_each, or job_claim_merged, in
-- place of the candidates below (decision 027).
-- The CTE is deliberate: it fixes the candidate rows (LIMIT, SKIP LOCKED) before the
-- UPDATE, so the planner can never update more rows than the LIMIT asks for.
-- _claim_flow() goes first: it owns the paused queues (skipped) and those that need flow
-- control (a concurrency or rate limit in broker.queues, or queued jobs with a
-- concurrency_key), claims from the latter taking turns with their other claimers, and
-- names every queue it owns in a row with a NULL id. The plain path takes the rest, and
-- never a keyed job. Deciding ownership in one place keeps the two paths on disjoint
-- queues whatever changes between their snapshots. The function is called only when one
-- of the queues is paused or limited (broker.queues) or has ever held a keyed job
-- (broker.keyed_queues, listed in the keyed job's own transaction): the gate is a
-- one-time filter read in the statement's snapshot, so a claim that cannot see the
-- setting or the keyed queue cannot see a job it would govern either (a keyed job is
-- never on the plain path). Otherwise the plain path is the claim it always was
-- (decision 014 has the figures). Jobs past their deadline are never started (the
-- reaper expires them).
-- FOR NO KEY UPDATE is enough to own the row and does not block foreign-key checks.
WITH flow AS (
    SELECT * FROM {schema}._claim_flow(%(queues)s::text[], %(limit)s, %(worker_id)s, %(ttl)s)
    WHERE EXISTS (SELECT 1 FROM {schema}.queues c
                  WHERE c.name = ANY(%(queues)s::text[])
                    AND (c.paused OR c.concurrency_limit IS NOT NULL OR c.rate_limit IS NOT NULL))
       OR EXISTS (SELECT 1 FROM {schema}.keyed_queues k WHERE k.name = ANY(%(queues)s::text[]))
), next AS (
    SELECT c.id
    FROM (
{choice}
    ) c
    ORDER BY c.priority DESC, c.run_at, c.id
    LIMIT %(limit)s - (SELECT count(id) FROM flow)
), claimed AS (
    UPDATE {schema}.jobs j
    SET state = 'running', attempts = j.attempts + 1, lease_epoch = j.lease_epoch + 1,
        lease_expires_at = now() + make_interval(secs => %(ttl)s), worker_id = %(worker_id)s,
        started_at = now()
    -- = ANY(ARRAY(...)), not a join with `next`: the generic plan (the worker's shared
    -- connection uses it, see broker/worker/_conn.py) guesses a tenth of the table for a
    -- parameter LIMIT and would hash-join a sequential scan; an array is always probed
    -- through the primary key.
    WHERE j.id = ANY(ARRAY(SELECT id FROM next))
    -- An empty meta (most jobs) comes back as NULL, which the client does not decode.
    RETURNING j.id, j.lease_epoch, j.queue, j.kind, j.args, j.priority, j.attempts,
              j.max_attempts, extract(epoch FROM j.timeout)::float8 AS timeout,
              nullif(j.meta, '{{}}'::jsonb) AS meta
), ev AS (
    INSERT INTO {schema}.job_events (job_id, event, epoch, worker_id)
    SELECT id, 'claimed', lease_epoch, %(worker_id)s FROM claimed
)
SELECT id, lease_epoch, queue, kind, args, priority, attempts, max_attempts, timeout, meta
FROM claimed
UNION ALL
SELECT id, lease_epoch, queue, kind, args, priority, attempts, max_attempts, timeout, meta
FROM flow WHERE id IS NOT NULL
ORDER BY priority DESC, id;

-- name: job_claim_each
-- job_claim's candidates (and job_claim_merged's fallback):
-- one LATERAL subquery per queue walks jobs_claim_idx in claim order and stops at the
-- LIMIT; `queue = ANY(...)` instead cannot use the index order and sorts every queued
-- row on each claim (10 ms per claim at 20k queued, measured). SKIP LOCKED sits inside
-- each subquery so concurrent claimers pass over each other's rows instead of coming
-- back empty; rows locked but not chosen by the outer LIMIT are released at commit.
SELECT l.id, l.priority, l.run_at
FROM (SELECT name FROM unnest(%(queues)s::text[]) AS u(name)
      WHERE NOT EXISTS (SELECT 1 FROM flow f WHERE f.id IS NULL AND f.queue = u.name)) q
CROSS JOIN LATERAL (
    SELECT id, priority, run_at FROM {schema}.jobs
    WHERE state = 'queued' AND queue = q.name AND run_at <= now()
      AND concurrency_key IS NULL AND (deadline IS NULL OR deadline > now())
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
) l;

-- name: job_claim_merged
-- job_claim_many's candidates. job_claim_each locks up to the LIMIT in every queue before
-- the outer ORDER BY chooses: 20,000 row locks per claim of 100 with 200 queues of 100
-- jobs (9.4k jobs/s against 31.4k for one queue, issue 13). Here each queue's share of
-- the next LIMIT jobs in claim order is chosen first, reading without locks (a read of
-- a queued row costs far less than locking it: a lock writes the row's header and WAL),
-- then each queue locks that many of its first rows, SKIP LOCKED: a concurrent claimer
-- that chose the same rows takes the next ones of the same queue. If the chosen queues
-- had nothing left unlocked while others have jobs, the claim would come back empty and
-- its worker would sleep with work waiting: an empty result falls back to
-- job_claim_each (a one-time filter, so it runs only then). Measured per claim (bench/
-- claim_queues.py, decision 027): 200 queues 1.4-1.8x faster, 50 queues 1.0-1.2x. One
-- Merge Append over a branch per queue would read only what the LIMIT takes, but it
-- costs more than it saves: the executor sets up every branch on every claim (~50 us
-- each) and planning 200 branches takes 200 ms.
WITH share AS (
    SELECT queue AS name, count(*)::integer AS n
    FROM (
        SELECT c.queue
        FROM (SELECT name FROM unnest(%(queues)s::text[]) AS u(name)
              WHERE NOT EXISTS (SELECT 1 FROM flow f WHERE f.id IS NULL AND f.queue = u.name)) q
        CROSS JOIN LATERAL (
            SELECT queue, priority, run_at, id FROM {schema}.jobs
            WHERE state = 'queued' AND queue = q.name AND run_at <= now()
              AND concurrency_key IS NULL AND (deadline IS NULL OR deadline > now())
            ORDER BY priority DESC, run_at, id
            LIMIT %(limit)s
        ) c
        ORDER BY c.priority DESC, c.run_at, c.id
        LIMIT %(limit)s - (SELECT count(id) FROM flow)
    ) chosen
    GROUP BY queue
), locked AS (
    SELECT l.id, l.priority, l.run_at
    FROM share q
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at FROM {schema}.jobs
        WHERE state = 'queued' AND queue = q.name AND run_at <= now()
          AND concurrency_key IS NULL AND (deadline IS NULL OR deadline > now())
        ORDER BY priority DESC, run_at, id
        LIMIT q.n
        FOR NO KEY UPDATE SKIP LOCKED
    ) l
)
SELECT * FROM locked
UNION ALL
SELECT * FROM (
{each}
) fallback
WHERE NOT EXISTS (SELECT 1 FROM locked);

-- name: job_heartbeat_many
-- Every fenced write has this shape: apply where (id, epoch) still holds a running lease,
-- record stale_write_rejected for the rest, and return the rows that applied (the caller
-- knows what it sent, so the rest were rejected). unnest() sits directly in UPDATE ...
-- FROM, as in the bare-SQL bound, so each row is found through the primary key; a shared
-- CTE would be materialized with a poor estimate and hash-join all running jobs.
-- The count guard is an uncorrelated subquery, i.e. a one-time filter: when every write
-- applied (the usual case) the rejected branch never runs.
WITH applied AS (
    UPDATE {schema}.jobs j SET lease_expires_at = now() + make_interval(secs => %(ttl)s)
    FROM unnest(%(ids)s::bigint[], %(epochs)s::bigint[]) AS d(id, epoch)
    WHERE j.id = d.id AND j.lease_epoch = d.epoch AND j.state = 'running'
    RETURNING j.id, j.state, j.cancel_requested_at IS NOT NULL AS cancel_requested
), rejected AS (
    INSERT INTO {schema}.job_events (job_id, event, epoch, worker_id, detail)
    SELECT d.id, 'stale_write_rejected', d.epoch, %(worker_id)s,
           jsonb_build_object('write', 'heartbeat', 'state', j.state, 'lease_epoch', j.lease_epoch)
    FROM unnest(%(ids)s::bigint[], %(epochs)s::bigint[]) AS d(id, epoch)
    JOIN {schema}.jobs j ON j.id = d.id
    WHERE (SELECT count(*) FROM applied) < cardinality(%(ids)s::bigint[])
      AND NOT EXISTS (SELECT 1 FROM applied a WHERE a.id = d.id)
)
SELECT id, state, cancel_requested FROM applied;

-- name: job_heartbeat_unwritten
-- Extends the leases whose handler has finished and whose outcome is still on its way:
-- the write can wait behind a prune batch or the reaper on the worker's shared connection
-- for longer than the lease TTL. It never waits itself: a row locked at this moment (by
-- that very write, or by anyone) is passed over for this beat, and nothing is recorded or
-- reported, because the write's own answer says whether the lease held.
UPDATE {schema}.jobs j SET lease_expires_at = now() + make_interval(secs => %(ttl)s)
FROM (
    SELECT k.id FROM {schema}.jobs k
    JOIN unnest(%(ids)s::bigint[], %(epochs)s::bigint[]) AS d(id, epoch)
      ON k.id = d.id AND k.lease_epoch = d.epoch
    WHERE k.state = 'running'
    FOR NO KEY UPDATE OF k SKIP LOCKED
) held
WHERE j.id = held.id
RETURNING j.id;

-- name: job_finish_many
-- Every way a lease holder ends its attempt, in one fenced statement: `outcome` per row is
-- NULL for a completion, else fail, cancel, release or snooze (broker.lease.completed/
-- failed/cancel_acked/released/snoozed). finish_state() decides the next state once for
-- the rest (a requested cancel wins over a retry, a release or a snooze; a failure
-- retries while attempts remain and it is retryable; a snooze requeues while the job has
-- snoozed fewer than its `cap` times, else fails it; a failure's `cap` is its task's
-- max_attempts). Results arrive as JSON texts
-- ('null' for none) so they unnest with the ids.
-- Completions are most rows, so they cost least: broker.lease.finish sends the other rows
-- first and the outcome columns cover only those; unnest() pads the shorter arrays with
-- NULL, and each CASE tests for the NULL outcome first (decision 010 has the figures).
-- A release or a requeued snooze does not count its attempt.
-- The fence has the heartbeat's shape (see there): unnest() directly in UPDATE ... FROM.
WITH applied AS (
    UPDATE {schema}.jobs j
    SET state = CASE WHEN d.outcome IS NULL THEN 'succeeded'
                     ELSE {schema}.finish_state(d.outcome, coalesce(d.retryable, j.snoozes < d.cap),
                                                j.cancel_requested_at IS NOT NULL,
                                                j.attempts, j.max_attempts) END,
        result = CASE WHEN d.outcome IS NULL THEN nullif(d.result::jsonb, 'null'::jsonb)
                      ELSE j.result END,
        last_error = CASE WHEN d.outcome IN ('fail', 'cancel') THEN d.error
                          WHEN d.outcome = 'snooze' AND j.snoozes >= d.cap
                               AND j.cancel_requested_at IS NULL THEN d.error
                          ELSE j.last_error END,
        attempts = CASE WHEN d.outcome IS NULL THEN j.attempts
                        WHEN d.outcome = 'release' OR (d.outcome = 'snooze' AND j.snoozes < d.cap)
                          THEN greatest(j.attempts - 1, 0)
                        ELSE j.attempts END,
        -- A failure's cap is its task's max_attempts (broker.lease.Failure): the job keeps
        -- the lower of the two, the one that decides when it stops.
        max_attempts = CASE WHEN d.outcome IS NULL THEN j.max_attempts
                            WHEN d.outcome = 'fail' AND d.cap < j.max_attempts THEN d.cap
                            ELSE j.max_attempts END,
        snoozes = CASE WHEN d.outcome IS NULL THEN j.snoozes
                       WHEN d.outcome = 'snooze' AND j.snoozes < d.cap THEN j.snoozes + 1
                       ELSE j.snoozes END,
        run_at = CASE WHEN d.outcome IS NULL THEN j.run_at
                      WHEN d.outcome = 'release' THEN now()
                      WHEN {schema}.finish_state(d.outcome, coalesce(d.retryable, j.snoozes < d.cap),
                                                 j.cancel_requested_at IS NOT NULL,
                                                 j.attempts, j.max_attempts) <> 'queued'
                        THEN j.run_at
                      ELSE now() + coalesce(make_interval(secs => d.delay),
                                            {schema}.retry_backoff(j.attempts)) END,
        finished_at = CASE WHEN d.outcome IS NULL THEN now()
                           WHEN {schema}.finish_state(d.outcome, coalesce(d.retryable, j.snoozes < d.cap),
                                                      j.cancel_requested_at IS NOT NULL,
                                                      j.attempts, j.max_attempts) <> 'queued'
                           THEN now() END,
        lease_expires_at = NULL
    FROM unnest(%(ids)s::bigint[], %(epochs)s::bigint[], %(results)s::text[],
                %(outcomes)s::text[], %(errors)s::text[], %(retryable)s::bool[],
                %(delays)s::float8[], %(caps)s::integer[])
         AS d(id, epoch, result, outcome, error, retryable, delay, cap)
    WHERE j.id = d.id AND j.lease_epoch = d.epoch AND j.state = 'running'
    RETURNING j.id, j.lease_epoch, j.state, j.queue, j.attempts, j.run_at, d.outcome, d.error,
              j.snoozes, d.delay, j.concurrency_key
), ev AS (
    INSERT INTO {schema}.job_events (job_id, event, epoch, worker_id, detail)
    SELECT id,
           CASE WHEN outcome IS NULL OR state <> 'queued' THEN state
                WHEN outcome = 'fail' THEN 'attempt_failed'
                WHEN outcome = 'snooze' THEN 'snoozed' ELSE 'released' END,
           lease_epoch, %(worker_id)s,
           CASE WHEN outcome = 'fail' THEN
             jsonb_build_object('error', error, 'attempt', attempts)
             || CASE WHEN state = 'queued' THEN jsonb_build_object('retry_at', run_at)
                     ELSE '{{}}'::jsonb END
                WHEN outcome = 'snooze' AND state = 'queued' THEN
             jsonb_build_object('delay', delay, 'snoozes', snoozes, 'run_at', run_at)
                WHEN outcome = 'snooze' AND state = 'failed' THEN
             jsonb_build_object('error', error, 'snoozes', snoozes)
           END
    FROM applied
), rejected AS (
    INSERT INTO {schema}.job_events (job_id, event, epoch, worker_id, detail)
    SELECT d.id, 'stale_write_rejected', d.epoch, %(worker_id)s,
           jsonb_build_object('write', coalesce(d.outcome, 'complete'), 'state', j.state,
                              'lease_epoch', j.lease_epoch)
    FROM unnest(%(ids)s::bigint[], %(epochs)s::bigint[], %(outcomes)s::text[])
         AS d(id, epoch, outcome)
    JOIN {schema}.jobs j ON j.id = d.id
    WHERE (SELECT count(*) FROM applied) < cardinality(%(ids)s::bigint[])
      AND NOT EXISTS (SELECT 1 FROM applied a WHERE a.id = d.id)
), notified AS (
    -- Wake workers for jobs runnable at once: released ones, retries without a delay, and
    -- those an ended job held back: the next of its concurrency_key, or of its queue's
    -- concurrency_limit (driven from the few limited queues, so a batch of unlimited
    -- queues reads no more than an empty scan of broker.queues).
    SELECT count({schema}._wake_queue(%(channel)s, q.queue)) AS n
    FROM (SELECT DISTINCT queue FROM applied
          WHERE (state = 'queued' AND run_at <= now()) OR concurrency_key IS NOT NULL
          UNION
          SELECT c.name FROM {schema}.queues c
          WHERE c.concurrency_limit IS NOT NULL
            AND EXISTS (SELECT 1 FROM applied a WHERE a.queue = c.name)) q
)
-- `notified` is a plain SELECT: it runs only because it is referenced here.
SELECT id, state FROM applied CROSS JOIN notified;

-- name: job_reap
-- Return expired leases, judged by the database clock alone. SKIP LOCKED and the state
-- re-check make it safe to run in every worker at once.
WITH expired AS (
    SELECT id FROM {schema}.jobs
    WHERE state = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
), reaped AS (
    UPDATE {schema}.jobs j
    SET state = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                     WHEN j.attempts >= j.max_attempts THEN 'failed'
                     ELSE 'queued' END,
        run_at = CASE WHEN j.cancel_requested_at IS NOT NULL OR j.attempts >= j.max_attempts
                      THEN j.run_at ELSE now() + {schema}.retry_backoff(j.attempts) END,
        finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL
                                OR j.attempts >= j.max_attempts THEN now() END,
        lease_expires_at = NULL, last_error = 'lease expired'
    FROM expired WHERE j.id = expired.id
    RETURNING j.id, j.lease_epoch, j.worker_id, j.state
), ev AS (
    INSERT INTO {schema}.job_events (job_id, event, epoch, worker_id, detail)
    SELECT x.id, x.event, x.lease_epoch, x.worker_id, x.detail FROM (
        SELECT id, 'lease_expired' AS event, lease_epoch, worker_id,
               jsonb_build_object('next_state', state) AS detail, 0 AS step FROM reaped
        UNION ALL
        SELECT id, state, lease_epoch, worker_id, NULL, 1 FROM reaped WHERE state <> 'queued'
    ) x ORDER BY x.id, x.step
)
SELECT id, state FROM reaped ORDER BY id;

-- name: job_expire
-- Cancel queued and waiting jobs whose deadline passed (database clock), with event
-- `expired`; the claim never starts them meanwhile. Walks jobs_deadline_idx, which holds
-- only jobs with a deadline that have not started; SKIP LOCKED and the state re-check make
-- it safe to run in every worker at once.
WITH due AS (
    SELECT id FROM {schema}.jobs
    WHERE deadline IS NOT NULL AND state IN ('queued', 'waiting') AND deadline <= now()
    ORDER BY deadline
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
), expired AS (
    UPDATE {schema}.jobs j
    SET state = 'cancelled', finished_at = now(), last_error = 'deadline passed'
    FROM due WHERE j.id = due.id AND j.state IN ('queued', 'waiting')
    RETURNING j.id, j.state, j.deadline
), ev AS (
    INSERT INTO {schema}.job_events (job_id, event, detail)
    SELECT id, 'expired', jsonb_build_object('deadline', deadline) FROM expired
)
SELECT id, state FROM expired ORDER BY id;

-- name: job_cancel
SELECT id, state FROM {schema}.cancel_job(%(id)s);

-- name: job_retry
SELECT id, state FROM {schema}.retry_job(%(id)s);

-- name: job_cancel_many
-- A bulk cancel is cancel_job per row, so it behaves exactly like that many single cancels
-- (waiting dependents of a cancelled job end cancelled too), in one statement. The ids are
-- the set an operator confirmed; the state is checked again under the row lock, and a row
-- another transaction holds is skipped rather than waited for (no lock queue, no deadlock
-- with claims or finishes). MATERIALIZED: the rows are locked before any cancel runs.
WITH picked AS MATERIALIZED (
  SELECT id FROM {schema}.jobs
  WHERE id = ANY(%(ids)s::bigint[]) AND state IN ('queued', 'waiting', 'running')
  ORDER BY id
  LIMIT %(limit)s
  FOR NO KEY UPDATE SKIP LOCKED
)
SELECT c.id, c.state FROM picked p CROSS JOIN LATERAL {schema}.cancel_job(p.id) c
ORDER BY c.id;

-- name: job_retry_many
-- A bulk retry is retry_job per row, as job_cancel_many is for cancels. Jobs whose
-- dependency is failed or cancelled are left out here, since retry_job refuses them and one
-- refusal would undo the whole statement; a dependency ending meanwhile still can, and then
-- nothing changed (the caller sees the refusal).
WITH picked AS MATERIALIZED (
  SELECT j.id FROM {schema}.jobs j
  WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state IN ('failed', 'cancelled')
    AND NOT EXISTS (
      SELECT 1 FROM {schema}.job_dependencies d JOIN {schema}.jobs p ON p.id = d.depends_on
      WHERE d.job_id = j.id AND p.state IN ('failed', 'cancelled'))
  ORDER BY j.id
  LIMIT %(limit)s
  FOR NO KEY UPDATE OF j SKIP LOCKED
)
SELECT r.id, r.state FROM picked p CROSS JOIN LATERAL {schema}.retry_job(p.id) r
ORDER BY r.id;

-- name: db_clock
SELECT now() AS now, clock_timestamp() AS clock;

-- name: job_copy_reserve
-- The COPY enqueue path: reserve ids (so the events rows can name their jobs) and read
-- the transaction's now(), the same instant a column default would use.
SELECT now(), nextval('{schema}.jobs_id_seq') FROM generate_series(1, %(n)s);

-- name: job_copy_jobs
COPY {schema}.jobs (id, queue, kind, args, priority, run_at, max_attempts, timeout, tags,
                    "group", concurrency_key, deadline, meta)
FROM STDIN (FORMAT BINARY);

-- name: job_copy_events
-- The COPY path's `enqueued` events, one per job it wrote, and its NOTIFY (once per queue
-- with a job runnable now): one statement after the jobs' COPY. The ids go as one array,
-- which costs the client one value where a second COPY cost it a row per job.
WITH ev AS (
    INSERT INTO {schema}.job_events (job_id, event)
    SELECT id, 'enqueued' FROM unnest(%(ids)s::bigint[]) AS id
)
SELECT count({schema}._wake_queue(%(channel)s, q)) FROM unnest(%(queues)s::text[]) AS q;

-- name: job_wait_listen
-- The waiters' channel (<schema>_done, as Settings names it): every transition into a
-- terminal state notifies it with the job ids (broker.jobs' statement trigger, migration
-- 0011); and the probe channel <schema>_probe (worker_listen). Built on the server for
-- the reason worker_listen gives.
DO $$
BEGIN
    EXECUTE 'LISTEN ' || quote_ident((parse_ident('{schema}'))[1] || '_done');
    EXECUTE 'LISTEN ' || quote_ident((parse_ident('{schema}'))[1] || '_probe');
END
$$;

-- name: job_wait_unlisten
UNLISTEN *;

-- name: job_wait_register
-- A waiter's registration (broker.job_waiters, migration 0012), committed before it reads
-- the jobs: the jobs trigger notifies only registered ids. Expired rows (a waiter that
-- died) go at the same time. Returns the registrations' ids, for job_wait_unregister.
WITH expired AS (
    DELETE FROM {schema}.job_waiters WHERE expires_at < now()
)
INSERT INTO {schema}.job_waiters (job_id, expires_at)
SELECT id, now() + make_interval(secs => %(seconds)s)
FROM unnest(%(ids)s::bigint[]) AS u(id)
RETURNING id;

-- name: job_wait_unregister
DELETE FROM {schema}.job_waiters WHERE id = ANY(%(ids)s::bigint[]) RETURNING id;

-- name: job_wait_settled
-- A registered waiter's read of its jobs: (id, exists, locked, ended). A row another
-- transaction has locked for an update (a finish, a heartbeat) reads as locked, not as
-- its last committed state: that update may end the job after the trigger's check missed
-- the registration, so the waiter looks again once the lock is gone (see _count_finished).
SELECT u.id, j.id IS NOT NULL, j.id IS NOT NULL AND s.id IS NULL,
       coalesce(s.state IN ('succeeded', 'failed', 'cancelled'), false)
FROM unnest(%(ids)s::bigint[]) AS u(id)
LEFT JOIN {schema}.jobs j ON j.id = u.id
LEFT JOIN LATERAL (
    SELECT l.id, l.state FROM {schema}.jobs l WHERE l.id = u.id FOR SHARE SKIP LOCKED
) s ON true;

-- name: job_finished_among
-- Which of the waited-for jobs have ended (the waiters' sweep, in case a notification
-- was missed while their connection was down).
SELECT id FROM {schema}.jobs
WHERE id = ANY(%(ids)s::bigint[]) AND state IN ('succeeded', 'failed', 'cancelled');
