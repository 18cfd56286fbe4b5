"""The claim's gate (keyed queues) and the waiters' registry (no NOTIFY without waiters).

Every claim called _claim_flow(), which looks each asked-for queue up in broker.queues and
probes jobs_keyed_idx for queued jobs with a concurrency_key: about 6% of a claim of 100
from an unlimited queue (bench/flow_micro.py). Now job_claim calls it only when one of its
queues is paused or limited (broker.queues) or has ever held a keyed job
(broker.keyed_queues, new here): one lookup in each small table, in the claim's own
snapshot. The jobs trigger function (_count_finished) lists a queue in keyed_queues in
the statement that writes its first keyed job, so a claim that can see a keyed job can
see its queue listed. Rows are never removed: clearing one safely would have to exclude an
uncommitted keyed insert, and a listed queue without keyed jobs costs only the function
call it always cost (decision 014).

The worker's claim connection now asks for generic plans (broker/worker/_conn.py);
_claim_flow() keeps plan_cache_mode=auto for its own statements, whose LIMIT and queue
are plpgsql variables that a generic plan would guess at.

The done NOTIFY (migration 0011) was sent by every statement that ended jobs, and
PostgreSQL serializes the commits of notifying transactions (one queue lock per
database), so every worker's every finish did. Now waiters register the jobs they wait
for in broker.job_waiters (unlogged: a restart ends every wait anyway; rows expire) before
they read them; the trigger notifies only registered ids, and nothing while the table is
empty (decision 015).

The trigger function also reads its new rows once to learn whether any job ended or is
keyed, so a claim or a heartbeat runs two small scans instead of five statements.

Jobs gain meta (jsonb, default '{}', a JSON object: jobs_meta_check): carrier data for a
job's run, such as the W3C trace context broker.tracing writes at enqueue and the worker
reads to make its run span a child of the enqueue's. Every enqueue door takes it (the
bounds of broker.spec in _parse_specs; enqueue() gets a `meta` argument, enqueue_many()
stores it) and the claim returns it (job_claim, and _claim_flow(), recreated for its new
result; its plan_cache_mode is now in its definition). It is not part of the request an
idempotency key stands for: a replay carries another trace context (decision 021).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# The trigger function as 0011 left it (the downgrade).
BEFORE = r"""
CREATE OR REPLACE FUNCTION {s}._count_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  lo bigint;
  hi bigint;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {s}.job_counts;
    DELETE FROM {s}.job_dependencies;
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, count(*) FROM new_rows WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, -count(*) FROM old_rows WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2;
    DELETE FROM {s}.job_dependencies d USING old_rows o WHERE d.job_id = o.id;
    IF EXISTS (SELECT 1 FROM old_rows o WHERE o.state <> 'succeeded'
               AND EXISTS (SELECT 1 FROM {s}.job_dependencies d WHERE d.depends_on = o.id)) THEN
      PERFORM {s}._resolve_dependents(
        ARRAY(SELECT id FROM old_rows WHERE state <> 'succeeded'),
        ARRAY(SELECT 'deleted'::text FROM old_rows WHERE state <> 'succeeded'), '{{}}');
    END IF;
  ELSE
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, sum(d) FROM (
      SELECT queue, state, 1 AS d FROM new_rows WHERE state IN ('succeeded', 'failed', 'cancelled')
      UNION ALL
      SELECT queue, state, -1 FROM old_rows WHERE state IN ('succeeded', 'failed', 'cancelled')
    ) x GROUP BY 1, 2 HAVING sum(d) <> 0;
    -- One range probe first: no edge names a job between the lowest and highest id that
    -- ended here (always so for a claim or heartbeat, whose rows did not end, and for
    -- anyone not using dependencies); only then one probe per job that ended.
    SELECT min(id), max(id) INTO lo, hi FROM new_rows
    WHERE state IN ('succeeded', 'failed', 'cancelled');
    IF lo IS NOT NULL THEN
      -- Waiters (broker.waiting) hear which jobs ended: their ids, 300 per payload (the
      -- limit is 8,000 bytes), one notification per statement (migration 0011).
      PERFORM pg_notify('{done_channel}', string_agg(id::text, ','))
      FROM (SELECT id, (row_number() OVER () - 1) / 300 AS chunk FROM new_rows
            WHERE state IN ('succeeded', 'failed', 'cancelled')) ended
      GROUP BY chunk;
    END IF;
    IF EXISTS (SELECT 1 FROM {s}.job_dependencies d WHERE d.depends_on BETWEEN lo AND hi)
       AND EXISTS (SELECT 1 FROM new_rows n WHERE n.state IN ('succeeded', 'failed', 'cancelled')
                   AND EXISTS (SELECT 1 FROM {s}.job_dependencies d WHERE d.depends_on = n.id)) THEN
      PERFORM {s}._resolve_dependents(
        ARRAY(SELECT n.id FROM new_rows n JOIN old_rows o USING (id)
              WHERE n.state IN ('failed', 'cancelled') AND o.state <> n.state ORDER BY 1),
        ARRAY(SELECT n.state FROM new_rows n JOIN old_rows o USING (id)
              WHERE n.state IN ('failed', 'cancelled') AND o.state <> n.state ORDER BY n.id),
        ARRAY(SELECT n.id FROM new_rows n JOIN old_rows o USING (id)
              WHERE n.state = 'succeeded' AND o.state <> 'succeeded'));
    END IF;
  END IF;
  RETURN NULL;
END
$$;
"""

# The trigger function after: it lists keyed queues, notifies only registered waiters,
# and gives a claim or a heartbeat (nothing ended, nothing keyed) two scans in all.
AFTER = r"""
CREATE OR REPLACE FUNCTION {s}._count_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  lo bigint;
  hi bigint;
  keyed boolean;
  old_ended boolean;
  waited boolean;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {s}.job_counts;
    DELETE FROM {s}.job_dependencies;
    RETURN NULL;
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, count(*) FROM new_rows WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2;
    SELECT coalesce(bool_or(concurrency_key IS NOT NULL), false) INTO keyed FROM new_rows;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, -count(*) FROM old_rows WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2;
    DELETE FROM {s}.job_dependencies d USING old_rows o WHERE d.job_id = o.id;
    IF EXISTS (SELECT 1 FROM old_rows o WHERE o.state <> 'succeeded'
               AND EXISTS (SELECT 1 FROM {s}.job_dependencies d WHERE d.depends_on = o.id)) THEN
      PERFORM {s}._resolve_dependents(
        ARRAY(SELECT id FROM old_rows WHERE state <> 'succeeded'),
        ARRAY(SELECT 'deleted'::text FROM old_rows WHERE state <> 'succeeded'), '{{}}');
    END IF;
    RETURN NULL;
  ELSE
    -- One statement says what else there is to do (each statement a plpgsql function runs
    -- costs more than these scans of the transition tables): what ended (lo, hi), whether
    -- a key was written, whether a finished job changed state and whether anybody waits. A
    -- claim or a heartbeat stops there. Its snapshot is taken after every row of the statement was written,
    -- which the waiters' registration relies on (see below).
    SELECT min(n.id) FILTER (WHERE n.state IN ('succeeded', 'failed', 'cancelled')),
           max(n.id) FILTER (WHERE n.state IN ('succeeded', 'failed', 'cancelled')),
           coalesce(bool_or(n.concurrency_key IS NOT NULL), false),
           EXISTS (SELECT 1 FROM old_rows o WHERE o.state IN ('succeeded', 'failed', 'cancelled')),
           EXISTS (SELECT 1 FROM {s}.job_waiters)
    INTO lo, hi, keyed, old_ended, waited FROM new_rows n;
    IF lo IS NOT NULL OR old_ended THEN
      INSERT INTO {s}.job_counts (queue, state, n)
      SELECT queue, state, sum(d) FROM (
        SELECT queue, state, 1 AS d FROM new_rows WHERE state IN ('succeeded', 'failed', 'cancelled')
        UNION ALL
        SELECT queue, state, -1 FROM old_rows WHERE state IN ('succeeded', 'failed', 'cancelled')
      ) x GROUP BY 1, 2 HAVING sum(d) <> 0;
    END IF;
    IF lo IS NOT NULL THEN
      -- Waiters (broker.waiting) hear which of the jobs they wait for ended: their ids,
      -- 300 per payload (the limit is 8,000 bytes), one notification per statement, and
      -- none while nobody waits (a NOTIFY serializes committing transactions; migration
      -- 0012). A waiter registers in job_waiters before it reads the job, and this check
      -- takes a snapshot of its own after every row of the statement is written, so a
      -- registration it misses was committed after those rows were locked: the waiter's
      -- read (job_wait_settled, FOR SHARE SKIP LOCKED) finds them locked and looks again.
      IF waited THEN
        PERFORM pg_notify('{done_channel}', string_agg(id::text, ','))
        FROM (SELECT n.id, (row_number() OVER () - 1) / 300 AS chunk FROM new_rows n
              WHERE n.state IN ('succeeded', 'failed', 'cancelled')
                AND EXISTS (SELECT 1 FROM {s}.job_waiters w WHERE w.job_id = n.id)) ended
        GROUP BY chunk;
      END IF;
      -- One range probe first: no edge names a job between the lowest and highest id
      -- that ended here (always so for anyone not using dependencies); only then one
      -- probe per job that ended.
      IF EXISTS (SELECT 1 FROM {s}.job_dependencies d WHERE d.depends_on BETWEEN lo AND hi)
         AND EXISTS (SELECT 1 FROM new_rows n WHERE n.state IN ('succeeded', 'failed', 'cancelled')
                     AND EXISTS (SELECT 1 FROM {s}.job_dependencies d WHERE d.depends_on = n.id)) THEN
        PERFORM {s}._resolve_dependents(
          ARRAY(SELECT n.id FROM new_rows n JOIN old_rows o USING (id)
                WHERE n.state IN ('failed', 'cancelled') AND o.state <> n.state ORDER BY 1),
          ARRAY(SELECT n.state FROM new_rows n JOIN old_rows o USING (id)
                WHERE n.state IN ('failed', 'cancelled') AND o.state <> n.state ORDER BY n.id),
          ARRAY(SELECT n.id FROM new_rows n JOIN old_rows o USING (id)
                WHERE n.state = 'succeeded' AND o.state <> 'succeeded'));
      END IF;
    END IF;
  END IF;
  -- The claim's gate (job_claim): a queue that has held a job with a concurrency_key is
  -- listed once, by the statement that wrote the key (an enqueue, or an UPDATE by hand),
  -- so no claim can see a keyed job and miss its queue. Once listed, a keyed write only
  -- reads the list (no lock).
  IF keyed THEN
    IF EXISTS (SELECT 1 FROM new_rows n WHERE n.concurrency_key IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM {s}.keyed_queues k WHERE k.name = n.queue)) THEN
      INSERT INTO {s}.keyed_queues (name)
      SELECT DISTINCT queue FROM new_rows WHERE concurrency_key IS NOT NULL
      ON CONFLICT DO NOTHING;
    END IF;
  END IF;
  RETURN NULL;
END
$$;
"""

# broker.spec's bounds of meta at this revision (tests/unit/test_contract.py checks them).
MAX_META_DEPTH = 8
MAX_META_BYTES = 8192

# The enqueue contract gains meta (carrier data such as trace context; broker.tracing
# writes it) and the claim returns it. Texts as 0009 left them (the downgrade) and after,
# as in broker/sql/schema.sql; rendered by _render.
OLD_ENQUEUE_FUNCTIONS = r"""
CREATE FUNCTION {s}._parse_specs(specs jsonb)
RETURNS TABLE (ord bigint, queue text, kind text, args jsonb, priority integer,
               run_at timestamptz, max_attempts integer, timeout interval,
               idempotency_key text, fingerprint text, subject_key text, tags text[],
               depends_on bigint[], "group" text, concurrency_key text,
               deadline timestamptz)
LANGUAGE sql VOLATILE AS $$
  SELECT CASE WHEN v.problem IS NOT NULL
                THEN {s}._reject(format('job %s: %s', v.ord, v.problem))::bigint
              ELSE v.ord END,
         coalesce(v.queue, 'default'),
         v.kind,
         coalesce(v.args, '{{}}'::jsonb),
         CASE WHEN v.problem IS NULL THEN coalesce(v.priority, 0)::integer END,
         CASE WHEN v.problem IS NOT NULL THEN NULL
              WHEN v.delay IS NOT NULL THEN now() + make_interval(secs => v.delay)
              ELSE coalesce(v.run_at, now()) END,
         CASE WHEN v.problem IS NULL
              THEN coalesce(v.max_attempts, 20)::integer END,
         CASE WHEN v.problem IS NULL THEN make_interval(secs => v.timeout) END,
         CASE WHEN v.idempotency_scope IS NOT NULL
                THEN v.idempotency_scope || ':' || v.idempotency_key
              ELSE v.idempotency_key END,
         CASE WHEN v.problem IS NULL AND v.idempotency_key IS NOT NULL THEN
           encode(sha256(convert_to((jsonb_build_object(
             'kind', v.kind, 'args', coalesce(v.args, '{{}}'), 'queue', coalesce(v.queue, 'default'),
             'priority', coalesce(v.priority, 0)::integer,
             'run_at', extract(epoch FROM v.run_at), 'delay', v.delay,
             'max_attempts', coalesce(v.max_attempts, 20)::integer,
             'timeout', v.timeout, 'subject_key', v.subject_key,
             'tags', to_jsonb(coalesce(v.tags, '{{}}'::text[])))
             || jsonb_strip_nulls(jsonb_build_object(
             'depends_on', to_jsonb(v.parents), 'group', v."group",
             'concurrency_key', v.concurrency_key,
             'deadline', extract(epoch FROM v.deadline), 'start_within', v.start_within))
             )::text, 'UTF8')), 'hex')
         END,
         v.subject_key,
         coalesce(v.tags, '{{}}'::text[]),
         v.parents,
         v."group",
         v.concurrency_key,
         CASE WHEN v.problem IS NOT NULL THEN NULL
              WHEN v.start_within IS NOT NULL THEN now() + make_interval(secs => v.start_within)
              ELSE v.deadline END
  FROM (
    SELECT r.*, CASE
        WHEN r.run_at IS NOT NULL AND r.delay IS NOT NULL THEN 'give run_at or delay, not both'
        WHEN r.delay < 0 THEN 'delay must not be negative'
        WHEN NOT (r.delay <= 3155760000)
          THEN 'delay must be at most 3155760000 seconds (100 years)'
        WHEN NOT isfinite(r.run_at) OR r.run_at < '0001-01-02T00:00:00+00:00' OR r.run_at > '9999-12-30T23:59:59.999999+00:00'
          THEN 'run_at must be between 0001-01-02T00:00:00+00:00 and 9999-12-30T23:59:59.999999+00:00'
        WHEN NOT (r.timeout <= 3155760000)
          THEN 'timeout must be at most 3155760000 seconds (100 years)'
        WHEN r.priority <> trunc(r.priority) THEN 'priority must be an integer'
        WHEN r.priority NOT BETWEEN -2147483648 AND 2147483647
          THEN 'priority must be between -2147483648 and 2147483647'
        WHEN r.max_attempts <> trunc(r.max_attempts) THEN 'max_attempts must be an integer'
        -- Below 1 (down to the integer range) is the jobs_max_attempts_check constraint's.
        WHEN r.max_attempts NOT BETWEEN -2147483648 AND 1000
          THEN 'max_attempts must be between 1 and 1000'
        WHEN length(r.idempotency_key) NOT BETWEEN 1 AND 200
             OR r.idempotency_key ~ '[^\x21-\x7e]'
          THEN 'idempotency_key must be 1-200 printable ASCII characters without spaces'
        WHEN r.idempotency_scope IS NOT NULL
             AND (length(r.idempotency_scope) NOT BETWEEN 1 AND 64
                  OR r.idempotency_scope ~ '[^A-Za-z0-9_.-]')
          THEN 'idempotency_scope must be 1-64 letters, digits, _ . -'
        WHEN length(r.subject_key) NOT BETWEEN 1 AND 200 OR r.subject_key ~ '[^\x21-\x7e]'
          THEN 'subject_key must be 1-200 printable ASCII characters without spaces'
        WHEN cardinality(r.tags) > 32 THEN 'tags must be at most 32'
        WHEN cardinality(r.tags) > 0 AND EXISTS (
               SELECT 1 FROM unnest(r.tags) t
               WHERE t IS NULL OR length(t) NOT BETWEEN 1 AND 64 OR t ~ '[\x01-\x1f\x7f]')
          THEN 'each tag must be 1-64 characters without control characters'
        WHEN jsonb_path_exists(r.args,
               'strict $.**{{64}} ? (@.type() == "object" || @.type() == "array")')
          THEN 'args must nest at most 64 deep'
        WHEN cardinality(r.depends_on) > 100 OR (cardinality(r.depends_on) > 0 AND EXISTS (
               SELECT 1 FROM unnest(r.depends_on) d
               WHERE d IS NULL OR d <> trunc(d) OR d NOT BETWEEN 1 AND 9007199254740992))
          THEN 'depends_on must be at most 100 job ids (integers from 1 to 9007199254740992)'
        WHEN r.deadline IS NOT NULL AND r.start_within IS NOT NULL
          THEN 'give deadline or start_within, not both'
        WHEN r.start_within < 0 THEN 'start_within must not be negative'
        WHEN NOT (r.start_within <= 3155760000)
          THEN 'start_within must be at most 3155760000 seconds (100 years)'
        WHEN NOT isfinite(r.deadline) OR r.deadline < '0001-01-02T00:00:00+00:00' OR r.deadline > '9999-12-30T23:59:59.999999+00:00'
          THEN 'deadline must be between 0001-01-02T00:00:00+00:00 and 9999-12-30T23:59:59.999999+00:00'
      END AS problem,
      CASE WHEN cardinality(r.depends_on) BETWEEN 1 AND 100 THEN
        ARRAY(SELECT DISTINCT d::bigint FROM unnest(r.depends_on) d
              WHERE d = trunc(d) AND d BETWEEN 1 AND 9007199254740992 ORDER BY 1)
      END AS parents
    FROM ROWS FROM (jsonb_to_recordset(specs) AS (
           queue text, kind text, args jsonb, priority numeric, run_at timestamptz,
           delay double precision, max_attempts numeric, timeout double precision,
           idempotency_key text, idempotency_scope text, subject_key text, tags text[],
           depends_on numeric[], "group" text, concurrency_key text, deadline timestamptz,
           start_within double precision))
         WITH ORDINALITY AS r(queue, kind, args, priority, run_at, delay, max_attempts,
                              timeout, idempotency_key, idempotency_scope, subject_key,
                              tags, depends_on, "group", concurrency_key, deadline,
                              start_within, ord)
    OFFSET 0
  ) v
$$;

CREATE FUNCTION {s}.enqueue_many(specs jsonb)
RETURNS TABLE (ord bigint, job_id bigint, created boolean)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
  v_ords bigint[];
  v_ids bigint[];
  v_parents bigint[];
  v_missing bigint;
  rec record;
BEGIN
  IF jsonb_typeof(specs) IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION USING ERRCODE = 'PB002', MESSAGE = 'enqueue expects a JSON array of job objects';
  END IF;
  -- Serialize enqueues that supersede by subject, so two concurrent ones cannot both
  -- miss each other's job. The lock is taken before the insert's snapshot.
  IF jsonb_path_exists(specs, '$[*] ? (exists (@.subject_key))') THEN
    -- Under REPEATABLE READ the snapshot predates the lock, so a job committed while we
    -- waited would be invisible and never superseded. (SERIALIZABLE detects it itself.)
    IF current_setting('transaction_isolation') = 'repeatable read' THEN
      RAISE EXCEPTION USING ERRCODE = 'PB002',
        MESSAGE = 'subject_key needs READ COMMITTED or SERIALIZABLE isolation, not REPEATABLE READ';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(s.kind || '/' || s.subject_key, 0))
    FROM (SELECT DISTINCT p.kind, p.subject_key
          FROM jsonb_to_recordset(specs) AS p(kind text, subject_key text)
          WHERE p.subject_key IS NOT NULL ORDER BY 1, 2) s;
  END IF;
  IF jsonb_path_exists(specs, '$[*].depends_on[*]') THEN
    SELECT array_agg(DISTINCT d ORDER BY d) INTO v_parents
    FROM {s}._parse_specs(specs) p CROSS JOIN LATERAL unnest(p.depends_on) d;
    PERFORM 1 FROM {s}.jobs j WHERE j.id = ANY(v_parents) ORDER BY j.id FOR KEY SHARE;
    SELECT min(d) INTO v_missing FROM unnest(v_parents) d
    WHERE NOT EXISTS (SELECT 1 FROM {s}.jobs j WHERE j.id = d);
    IF v_missing IS NOT NULL THEN
      SELECT min(p.ord) INTO rec FROM {s}._parse_specs(specs) p WHERE v_missing = ANY(p.depends_on);
      RAISE EXCEPTION USING ERRCODE = 'PB002',
        MESSAGE = format('job %s: depends_on names job %s, which does not exist', rec.min, v_missing);
    END IF;
  END IF;

  WITH src AS (
    SELECT p.*, nextval('{s}.jobs_id_seq') AS id FROM {s}._parse_specs(specs) p
  ), dep AS (
    -- Where each spec with dependencies starts, and the first dependency that failed.
    SELECT s.id,
           CASE WHEN bool_or(p.state IN ('failed', 'cancelled')) THEN 'cancelled'
                WHEN bool_and(p.state = 'succeeded') THEN 'queued'
                ELSE 'waiting' END AS state,
           (array_agg(p.id ORDER BY p.id)
              FILTER (WHERE p.state IN ('failed', 'cancelled')))[1] AS parent,
           (array_agg(p.state ORDER BY p.id)
              FILTER (WHERE p.state IN ('failed', 'cancelled')))[1] AS parent_state
    FROM src s JOIN {s}.jobs p ON p.id = ANY(s.depends_on)
    WHERE s.depends_on IS NOT NULL
    GROUP BY s.id
  ), newest_in_batch AS (
    -- Within one batch the last spec for a (kind, subject_key) wins; earlier ones are
    -- born superseded.
    -- A spec replaying an idempotency key (one already stored, or one used earlier in
    -- this batch: the insert runs in ord order, so the first use wins) creates nothing,
    -- so it cannot win.
    SELECT DISTINCT ON (kind, subject_key) kind, subject_key, id AS newest_id FROM src
    WHERE subject_key IS NOT NULL
      AND (idempotency_key IS NULL OR (
            NOT EXISTS (SELECT 1 FROM {s}.jobs e WHERE e.idempotency_key = src.idempotency_key)
            AND NOT EXISTS (SELECT 1 FROM src d
                            WHERE d.idempotency_key = src.idempotency_key AND d.ord < src.ord)))
    ORDER BY kind, subject_key, ord DESC
  ), ins AS (
    INSERT INTO {s}.jobs (id, queue, kind, args, priority, run_at, max_attempts, timeout,
                          idempotency_key, idempotency_fingerprint, subject_key, tags,
                          "group", concurrency_key, deadline, state, finished_at, last_error)
    SELECT src.id, src.queue, src.kind, src.args, src.priority, src.run_at, src.max_attempts,
           src.timeout, src.idempotency_key, src.fingerprint, src.subject_key, src.tags,
           src."group", src.concurrency_key, src.deadline,
           CASE WHEN n.newest_id <> src.id THEN 'cancelled' ELSE coalesce(dep.state, 'queued') END,
           CASE WHEN n.newest_id <> src.id OR dep.state = 'cancelled' THEN now() END,
           CASE WHEN n.newest_id <> src.id THEN 'superseded'
                WHEN dep.state = 'cancelled'
                  THEN {s}._dependency_failed(dep.parent, dep.parent_state) END
    FROM src LEFT JOIN newest_in_batch n USING (kind, subject_key)
    LEFT JOIN dep ON dep.id = src.id
    ORDER BY src.ord
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, queue, kind, subject_key, run_at, state, last_error
  ), edges AS (
    INSERT INTO {s}.job_dependencies (job_id, depends_on)
    SELECT ins.id, d FROM ins JOIN src USING (id) CROSS JOIN LATERAL unnest(src.depends_on) d
    WHERE src.depends_on IS NOT NULL
  ), ev AS (
    INSERT INTO {s}.job_events (job_id, event, detail)
    SELECT x.job_id, x.event, x.detail FROM (
      SELECT ins.id AS job_id, 'enqueued' AS event,
             CASE WHEN src.depends_on IS NOT NULL
                  THEN jsonb_build_object('depends_on', src.depends_on) END AS detail,
             0 AS step
      FROM ins JOIN src USING (id)
      UNION ALL
      SELECT ins.id, 'superseded', jsonb_build_object('superseded_by', n.newest_id), 1
      FROM ins JOIN newest_in_batch n USING (kind, subject_key)
      WHERE ins.state = 'cancelled' AND ins.last_error = 'superseded'
      UNION ALL
      SELECT ins.id, 'dependency_failed',
             jsonb_build_object('dependency', dep.parent, 'state', dep.parent_state), 1
      FROM ins JOIN dep USING (id)
      WHERE ins.state = 'cancelled' AND dep.state = 'cancelled'
        AND ins.last_error IS DISTINCT FROM 'superseded'
    ) x ORDER BY x.job_id, x.step
  ), newest AS (
    SELECT id, kind, subject_key FROM ins
    WHERE subject_key IS NOT NULL AND state IN ('queued', 'waiting')
  ), sup AS (
    -- Driven from the (usually empty) newest rows through jobs_subject_idx, behind a
    -- one-time EXISTS gate: with statistics saying jobs was empty, the planner once
    -- scanned every job per inserted row here (7.5 s for a 10,000-job batch, measured).
    UPDATE {s}.jobs j SET state = 'cancelled', finished_at = now(), last_error = 'superseded'
    FROM (SELECT o.id, n.id AS by_id FROM newest n
          CROSS JOIN LATERAL (
            SELECT q.id FROM {s}.jobs q
            WHERE q.kind = n.kind AND q.subject_key = n.subject_key AND q.state = 'queued'
          ) o) older
    WHERE j.id = older.id AND j.state = 'queued' AND EXISTS (SELECT 1 FROM newest)
    RETURNING j.id, older.by_id
  ), sup_ev AS (
    INSERT INTO {s}.job_events (job_id, event, detail)
    SELECT id, 'superseded', jsonb_build_object('superseded_by', by_id) FROM sup
  ), notified AS (
    SELECT count(pg_notify('{jobs_channel}', q.queue)) AS n
    FROM (SELECT DISTINCT queue FROM ins WHERE state = 'queued' AND run_at <= now()) q
  )
  -- `notified` is a plain SELECT: it runs only because it is referenced here.
  SELECT array_agg(src.ord), array_agg(src.id)
  INTO v_ords, v_ids
  FROM src JOIN ins USING (id) CROSS JOIN notified;

  RETURN QUERY SELECT o, i, true FROM unnest(v_ords, v_ids) AS u(o, i);
  IF coalesce(array_length(v_ords, 1), 0) = jsonb_array_length(specs) THEN
    RETURN;
  END IF;

  -- Specs that were not inserted lost an idempotency race or repeat a key: this is a
  -- new statement, so it sees jobs committed by concurrent enqueues.
  FOR rec IN
    SELECT p.ord AS o, p.idempotency_key AS key, p.fingerprint AS fp,
           j.id AS existing_id, j.idempotency_fingerprint AS existing_fp
    FROM {s}._parse_specs(specs) p
    LEFT JOIN {s}.jobs j ON j.idempotency_key = p.idempotency_key
    WHERE p.idempotency_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM unnest(v_ords) AS c(o) WHERE c.o = p.ord)
    ORDER BY p.ord
  LOOP
    IF rec.existing_id IS NULL THEN
      RAISE EXCEPTION USING ERRCODE = '40001',
        MESSAGE = format('job with idempotency key %L vanished during enqueue; retry', rec.key);
    END IF;
    IF rec.existing_fp IS DISTINCT FROM rec.fp THEN
      RAISE EXCEPTION USING ERRCODE = 'PB001',
        MESSAGE = format('idempotency key %L was already used for a different request', rec.key),
        DETAIL = rec.key, HINT = rec.existing_id::text;
    END IF;
    ord := rec.o; job_id := rec.existing_id; created := false;
    RETURN NEXT;
  END LOOP;
END
$$;

CREATE FUNCTION {s}.enqueue(
  kind text, args jsonb DEFAULT '{{}}', queue text DEFAULT 'default', priority integer DEFAULT 0,
  run_at timestamptz DEFAULT NULL, delay interval DEFAULT NULL,
  max_attempts integer DEFAULT 20, timeout interval DEFAULT NULL,
  idempotency_key text DEFAULT NULL, subject_key text DEFAULT NULL, tags text[] DEFAULT '{{}}',
  depends_on bigint[] DEFAULT NULL, "group" text DEFAULT NULL,
  concurrency_key text DEFAULT NULL, deadline timestamptz DEFAULT NULL,
  start_within interval DEFAULT NULL
) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
  -- A JSON null reads exactly like an absent key in _parse_specs, so nothing is stripped
  -- (jsonb_strip_nulls would also strip nulls nested inside args).
  SELECT e.job_id FROM {s}.enqueue_many(jsonb_build_array(jsonb_build_object(
    'kind', kind, 'args', args, 'queue', queue, 'priority', priority,
    'run_at', run_at, 'delay', extract(epoch FROM delay), 'max_attempts', max_attempts,
    'timeout', extract(epoch FROM timeout), 'idempotency_key', idempotency_key,
    'subject_key', subject_key, 'tags', to_jsonb(tags), 'depends_on', to_jsonb(depends_on),
    'group', "group", 'concurrency_key', concurrency_key, 'deadline', deadline,
    'start_within', extract(epoch FROM start_within)))) e
$$;
"""

NEW_ENQUEUE_FUNCTIONS = r"""
CREATE FUNCTION {s}._parse_specs(specs jsonb)
RETURNS TABLE (ord bigint, queue text, kind text, args jsonb, priority integer,
               run_at timestamptz, max_attempts integer, timeout interval,
               idempotency_key text, fingerprint text, subject_key text, tags text[],
               depends_on bigint[], "group" text, concurrency_key text,
               deadline timestamptz, meta jsonb)
LANGUAGE sql VOLATILE AS $$
  SELECT CASE WHEN v.problem IS NOT NULL
                THEN {s}._reject(format('job %s: %s', v.ord, v.problem))::bigint
              ELSE v.ord END,
         coalesce(v.queue, 'default'),
         v.kind,
         coalesce(v.args, '{{}}'::jsonb),
         CASE WHEN v.problem IS NULL THEN coalesce(v.priority, 0)::integer END,
         CASE WHEN v.problem IS NOT NULL THEN NULL
              WHEN v.delay IS NOT NULL THEN now() + make_interval(secs => v.delay)
              ELSE coalesce(v.run_at, now()) END,
         CASE WHEN v.problem IS NULL
              THEN coalesce(v.max_attempts, 20)::integer END,
         CASE WHEN v.problem IS NULL THEN make_interval(secs => v.timeout) END,
         CASE WHEN v.idempotency_scope IS NOT NULL
                THEN v.idempotency_scope || ':' || v.idempotency_key
              ELSE v.idempotency_key END,
         CASE WHEN v.problem IS NULL AND v.idempotency_key IS NOT NULL THEN
           encode(sha256(convert_to((jsonb_build_object(
             'kind', v.kind, 'args', coalesce(v.args, '{{}}'), 'queue', coalesce(v.queue, 'default'),
             'priority', coalesce(v.priority, 0)::integer,
             'run_at', extract(epoch FROM v.run_at), 'delay', v.delay,
             'max_attempts', coalesce(v.max_attempts, 20)::integer,
             'timeout', v.timeout, 'subject_key', v.subject_key,
             'tags', to_jsonb(coalesce(v.tags, '{{}}'::text[])))
             || jsonb_strip_nulls(jsonb_build_object(
             'depends_on', to_jsonb(v.parents), 'group', v."group",
             'concurrency_key', v.concurrency_key,
             'deadline', extract(epoch FROM v.deadline), 'start_within', v.start_within))
             )::text, 'UTF8')), 'hex')
         END,
         v.subject_key,
         coalesce(v.tags, '{{}}'::text[]),
         v.parents,
         v."group",
         v.concurrency_key,
         CASE WHEN v.problem IS NOT NULL THEN NULL
              WHEN v.start_within IS NOT NULL THEN now() + make_interval(secs => v.start_within)
              ELSE v.deadline END,
         coalesce(v.meta, '{{}}'::jsonb)
  FROM (
    SELECT r.*, CASE
        WHEN r.run_at IS NOT NULL AND r.delay IS NOT NULL THEN 'give run_at or delay, not both'
        WHEN r.delay < 0 THEN 'delay must not be negative'
        WHEN NOT (r.delay <= 3155760000)
          THEN 'delay must be at most 3155760000 seconds (100 years)'
        WHEN NOT isfinite(r.run_at) OR r.run_at < '0001-01-02T00:00:00+00:00' OR r.run_at > '9999-12-30T23:59:59.999999+00:00'
          THEN 'run_at must be between 0001-01-02T00:00:00+00:00 and 9999-12-30T23:59:59.999999+00:00'
        WHEN NOT (r.timeout <= 3155760000)
          THEN 'timeout must be at most 3155760000 seconds (100 years)'
        WHEN r.priority <> trunc(r.priority) THEN 'priority must be an integer'
        WHEN r.priority NOT BETWEEN -2147483648 AND 2147483647
          THEN 'priority must be between -2147483648 and 2147483647'
        WHEN r.max_attempts <> trunc(r.max_attempts) THEN 'max_attempts must be an integer'
        -- Below 1 (down to the integer range) is the jobs_max_attempts_check constraint's.
        WHEN r.max_attempts NOT BETWEEN -2147483648 AND 1000
          THEN 'max_attempts must be between 1 and 1000'
        WHEN length(r.idempotency_key) NOT BETWEEN 1 AND 200
             OR r.idempotency_key ~ '[^\x21-\x7e]'
          THEN 'idempotency_key must be 1-200 printable ASCII characters without spaces'
        WHEN r.idempotency_scope IS NOT NULL
             AND (length(r.idempotency_scope) NOT BETWEEN 1 AND 64
                  OR r.idempotency_scope ~ '[^A-Za-z0-9_.-]')
          THEN 'idempotency_scope must be 1-64 letters, digits, _ . -'
        WHEN length(r.subject_key) NOT BETWEEN 1 AND 200 OR r.subject_key ~ '[^\x21-\x7e]'
          THEN 'subject_key must be 1-200 printable ASCII characters without spaces'
        WHEN cardinality(r.tags) > 32 THEN 'tags must be at most 32'
        WHEN cardinality(r.tags) > 0 AND EXISTS (
               SELECT 1 FROM unnest(r.tags) t
               WHERE t IS NULL OR length(t) NOT BETWEEN 1 AND 64 OR t ~ '[\x01-\x1f\x7f]')
          THEN 'each tag must be 1-64 characters without control characters'
        WHEN jsonb_path_exists(r.args,
               'strict $.**{{64}} ? (@.type() == "object" || @.type() == "array")')
          THEN 'args must nest at most 64 deep'
        WHEN cardinality(r.depends_on) > 100 OR (cardinality(r.depends_on) > 0 AND EXISTS (
               SELECT 1 FROM unnest(r.depends_on) d
               WHERE d IS NULL OR d <> trunc(d) OR d NOT BETWEEN 1 AND 9007199254740992))
          THEN 'depends_on must be at most 100 job ids (integers from 1 to 9007199254740992)'
        WHEN r.deadline IS NOT NULL AND r.start_within IS NOT NULL
          THEN 'give deadline or start_within, not both'
        WHEN r.start_within < 0 THEN 'start_within must not be negative'
        WHEN NOT (r.start_within <= 3155760000)
          THEN 'start_within must be at most 3155760000 seconds (100 years)'
        WHEN NOT isfinite(r.deadline) OR r.deadline < '0001-01-02T00:00:00+00:00' OR r.deadline > '9999-12-30T23:59:59.999999+00:00'
          THEN 'deadline must be between 0001-01-02T00:00:00+00:00 and 9999-12-30T23:59:59.999999+00:00'
        WHEN jsonb_typeof(r.meta) <> 'object' THEN 'meta must be a JSON object'
        WHEN jsonb_path_exists(r.meta,
               'strict $.** ? (@.type() != "object" && @.type() != "string")')
          THEN 'meta must be a JSON object whose values are strings or objects'
        WHEN jsonb_path_exists(r.meta, 'strict $.**{{8}} ? (@.type() == "object")')
          THEN 'meta must nest at most 8 deep'
        WHEN octet_length(r.meta::text) > 8192 THEN 'meta must be at most 8192 bytes as JSON'
      END AS problem,
      CASE WHEN cardinality(r.depends_on) BETWEEN 1 AND 100 THEN
        ARRAY(SELECT DISTINCT d::bigint FROM unnest(r.depends_on) d
              WHERE d = trunc(d) AND d BETWEEN 1 AND 9007199254740992 ORDER BY 1)
      END AS parents
    FROM ROWS FROM (jsonb_to_recordset(specs) AS (
           queue text, kind text, args jsonb, priority numeric, run_at timestamptz,
           delay double precision, max_attempts numeric, timeout double precision,
           idempotency_key text, idempotency_scope text, subject_key text, tags text[],
           depends_on numeric[], "group" text, concurrency_key text, deadline timestamptz,
           start_within double precision, meta jsonb))
         WITH ORDINALITY AS r(queue, kind, args, priority, run_at, delay, max_attempts,
                              timeout, idempotency_key, idempotency_scope, subject_key,
                              tags, depends_on, "group", concurrency_key, deadline,
                              start_within, meta, ord)
    OFFSET 0
  ) v
$$;

CREATE FUNCTION {s}.enqueue_many(specs jsonb)
RETURNS TABLE (ord bigint, job_id bigint, created boolean)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
  v_ords bigint[];
  v_ids bigint[];
  v_parents bigint[];
  v_missing bigint;
  rec record;
BEGIN
  IF jsonb_typeof(specs) IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION USING ERRCODE = 'PB002', MESSAGE = 'enqueue expects a JSON array of job objects';
  END IF;
  -- Serialize enqueues that supersede by subject, so two concurrent ones cannot both
  -- miss each other's job. The lock is taken before the insert's snapshot.
  IF jsonb_path_exists(specs, '$[*] ? (exists (@.subject_key))') THEN
    -- Under REPEATABLE READ the snapshot predates the lock, so a job committed while we
    -- waited would be invisible and never superseded. (SERIALIZABLE detects it itself.)
    IF current_setting('transaction_isolation') = 'repeatable read' THEN
      RAISE EXCEPTION USING ERRCODE = 'PB002',
        MESSAGE = 'subject_key needs READ COMMITTED or SERIALIZABLE isolation, not REPEATABLE READ';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(s.kind || '/' || s.subject_key, 0))
    FROM (SELECT DISTINCT p.kind, p.subject_key
          FROM jsonb_to_recordset(specs) AS p(kind text, subject_key text)
          WHERE p.subject_key IS NOT NULL ORDER BY 1, 2) s;
  END IF;
  IF jsonb_path_exists(specs, '$[*].depends_on[*]') THEN
    SELECT array_agg(DISTINCT d ORDER BY d) INTO v_parents
    FROM {s}._parse_specs(specs) p CROSS JOIN LATERAL unnest(p.depends_on) d;
    PERFORM 1 FROM {s}.jobs j WHERE j.id = ANY(v_parents) ORDER BY j.id FOR KEY SHARE;
    SELECT min(d) INTO v_missing FROM unnest(v_parents) d
    WHERE NOT EXISTS (SELECT 1 FROM {s}.jobs j WHERE j.id = d);
    IF v_missing IS NOT NULL THEN
      SELECT min(p.ord) INTO rec FROM {s}._parse_specs(specs) p WHERE v_missing = ANY(p.depends_on);
      RAISE EXCEPTION USING ERRCODE = 'PB002',
        MESSAGE = format('job %s: depends_on names job %s, which does not exist', rec.min, v_missing);
    END IF;
  END IF;

  WITH src AS (
    SELECT p.*, nextval('{s}.jobs_id_seq') AS id FROM {s}._parse_specs(specs) p
  ), dep AS (
    -- Where each spec with dependencies starts, and the first dependency that failed.
    SELECT s.id,
           CASE WHEN bool_or(p.state IN ('failed', 'cancelled')) THEN 'cancelled'
                WHEN bool_and(p.state = 'succeeded') THEN 'queued'
                ELSE 'waiting' END AS state,
           (array_agg(p.id ORDER BY p.id)
              FILTER (WHERE p.state IN ('failed', 'cancelled')))[1] AS parent,
           (array_agg(p.state ORDER BY p.id)
              FILTER (WHERE p.state IN ('failed', 'cancelled')))[1] AS parent_state
    FROM src s JOIN {s}.jobs p ON p.id = ANY(s.depends_on)
    WHERE s.depends_on IS NOT NULL
    GROUP BY s.id
  ), newest_in_batch AS (
    -- Within one batch the last spec for a (kind, subject_key) wins; earlier ones are
    -- born superseded.
    -- A spec replaying an idempotency key (one already stored, or one used earlier in
    -- this batch: the insert runs in ord order, so the first use wins) creates nothing,
    -- so it cannot win.
    SELECT DISTINCT ON (kind, subject_key) kind, subject_key, id AS newest_id FROM src
    WHERE subject_key IS NOT NULL
      AND (idempotency_key IS NULL OR (
            NOT EXISTS (SELECT 1 FROM {s}.jobs e WHERE e.idempotency_key = src.idempotency_key)
            AND NOT EXISTS (SELECT 1 FROM src d
                            WHERE d.idempotency_key = src.idempotency_key AND d.ord < src.ord)))
    ORDER BY kind, subject_key, ord DESC
  ), ins AS (
    INSERT INTO {s}.jobs (id, queue, kind, args, priority, run_at, max_attempts, timeout,
                          idempotency_key, idempotency_fingerprint, subject_key, tags,
                          "group", concurrency_key, deadline, meta, state, finished_at,
                          last_error)
    SELECT src.id, src.queue, src.kind, src.args, src.priority, src.run_at, src.max_attempts,
           src.timeout, src.idempotency_key, src.fingerprint, src.subject_key, src.tags,
           src."group", src.concurrency_key, src.deadline, src.meta,
           CASE WHEN n.newest_id <> src.id THEN 'cancelled' ELSE coalesce(dep.state, 'queued') END,
           CASE WHEN n.newest_id <> src.id OR dep.state = 'cancelled' THEN now() END,
           CASE WHEN n.newest_id <> src.id THEN 'superseded'
                WHEN dep.state = 'cancelled'
                  THEN {s}._dependency_failed(dep.parent, dep.parent_state) END
    FROM src LEFT JOIN newest_in_batch n USING (kind, subject_key)
    LEFT JOIN dep ON dep.id = src.id
    ORDER BY src.ord
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, queue, kind, subject_key, run_at, state, last_error
  ), edges AS (
    INSERT INTO {s}.job_dependencies (job_id, depends_on)
    SELECT ins.id, d FROM ins JOIN src USING (id) CROSS JOIN LATERAL unnest(src.depends_on) d
    WHERE src.depends_on IS NOT NULL
  ), ev AS (
    INSERT INTO {s}.job_events (job_id, event, detail)
    SELECT x.job_id, x.event, x.detail FROM (
      SELECT ins.id AS job_id, 'enqueued' AS event,
             CASE WHEN src.depends_on IS NOT NULL
                  THEN jsonb_build_object('depends_on', src.depends_on) END AS detail,
             0 AS step
      FROM ins JOIN src USING (id)
      UNION ALL
      SELECT ins.id, 'superseded', jsonb_build_object('superseded_by', n.newest_id), 1
      FROM ins JOIN newest_in_batch n USING (kind, subject_key)
      WHERE ins.state = 'cancelled' AND ins.last_error = 'superseded'
      UNION ALL
      SELECT ins.id, 'dependency_failed',
             jsonb_build_object('dependency', dep.parent, 'state', dep.parent_state), 1
      FROM ins JOIN dep USING (id)
      WHERE ins.state = 'cancelled' AND dep.state = 'cancelled'
        AND ins.last_error IS DISTINCT FROM 'superseded'
    ) x ORDER BY x.job_id, x.step
  ), newest AS (
    SELECT id, kind, subject_key FROM ins
    WHERE subject_key IS NOT NULL AND state IN ('queued', 'waiting')
  ), sup AS (
    -- Driven from the (usually empty) newest rows through jobs_subject_idx, behind a
    -- one-time EXISTS gate: with statistics saying jobs was empty, the planner once
    -- scanned every job per inserted row here (7.5 s for a 10,000-job batch, measured).
    UPDATE {s}.jobs j SET state = 'cancelled', finished_at = now(), last_error = 'superseded'
    FROM (SELECT o.id, n.id AS by_id FROM newest n
          CROSS JOIN LATERAL (
            SELECT q.id FROM {s}.jobs q
            WHERE q.kind = n.kind AND q.subject_key = n.subject_key AND q.state = 'queued'
          ) o) older
    WHERE j.id = older.id AND j.state = 'queued' AND EXISTS (SELECT 1 FROM newest)
    RETURNING j.id, older.by_id
  ), sup_ev AS (
    INSERT INTO {s}.job_events (job_id, event, detail)
    SELECT id, 'superseded', jsonb_build_object('superseded_by', by_id) FROM sup
  ), notified AS (
    SELECT count(pg_notify('{jobs_channel}', q.queue)) AS n
    FROM (SELECT DISTINCT queue FROM ins WHERE state = 'queued' AND run_at <= now()) q
  )
  -- `notified` is a plain SELECT: it runs only because it is referenced here.
  SELECT array_agg(src.ord), array_agg(src.id)
  INTO v_ords, v_ids
  FROM src JOIN ins USING (id) CROSS JOIN notified;

  RETURN QUERY SELECT o, i, true FROM unnest(v_ords, v_ids) AS u(o, i);
  IF coalesce(array_length(v_ords, 1), 0) = jsonb_array_length(specs) THEN
    RETURN;
  END IF;

  -- Specs that were not inserted lost an idempotency race or repeat a key: this is a
  -- new statement, so it sees jobs committed by concurrent enqueues.
  FOR rec IN
    SELECT p.ord AS o, p.idempotency_key AS key, p.fingerprint AS fp,
           j.id AS existing_id, j.idempotency_fingerprint AS existing_fp
    FROM {s}._parse_specs(specs) p
    LEFT JOIN {s}.jobs j ON j.idempotency_key = p.idempotency_key
    WHERE p.idempotency_key IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM unnest(v_ords) AS c(o) WHERE c.o = p.ord)
    ORDER BY p.ord
  LOOP
    IF rec.existing_id IS NULL THEN
      RAISE EXCEPTION USING ERRCODE = '40001',
        MESSAGE = format('job with idempotency key %L vanished during enqueue; retry', rec.key);
    END IF;
    IF rec.existing_fp IS DISTINCT FROM rec.fp THEN
      RAISE EXCEPTION USING ERRCODE = 'PB001',
        MESSAGE = format('idempotency key %L was already used for a different request', rec.key),
        DETAIL = rec.key, HINT = rec.existing_id::text;
    END IF;
    ord := rec.o; job_id := rec.existing_id; created := false;
    RETURN NEXT;
  END LOOP;
END
$$;

CREATE FUNCTION {s}.enqueue(
  kind text, args jsonb DEFAULT '{{}}', queue text DEFAULT 'default', priority integer DEFAULT 0,
  run_at timestamptz DEFAULT NULL, delay interval DEFAULT NULL,
  max_attempts integer DEFAULT 20, timeout interval DEFAULT NULL,
  idempotency_key text DEFAULT NULL, subject_key text DEFAULT NULL, tags text[] DEFAULT '{{}}',
  depends_on bigint[] DEFAULT NULL, "group" text DEFAULT NULL,
  concurrency_key text DEFAULT NULL, deadline timestamptz DEFAULT NULL,
  start_within interval DEFAULT NULL, meta jsonb DEFAULT '{{}}'
) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
  -- A JSON null reads exactly like an absent key in _parse_specs, so nothing is stripped
  -- (jsonb_strip_nulls would also strip nulls nested inside args).
  SELECT e.job_id FROM {s}.enqueue_many(jsonb_build_array(jsonb_build_object(
    'kind', kind, 'args', args, 'queue', queue, 'priority', priority,
    'run_at', run_at, 'delay', extract(epoch FROM delay), 'max_attempts', max_attempts,
    'timeout', extract(epoch FROM timeout), 'idempotency_key', idempotency_key,
    'subject_key', subject_key, 'tags', to_jsonb(tags), 'depends_on', to_jsonb(depends_on),
    'group', "group", 'concurrency_key', concurrency_key, 'deadline', deadline,
    'start_within', extract(epoch FROM start_within), 'meta', meta))) e
$$;
"""

OLD_ENQUEUE = (
    "enqueue(text, jsonb, text, integer, timestamptz, interval, integer, interval, text,"
    " text, text[], bigint[], text, text, timestamptz, interval)"
)
NEW_ENQUEUE = (
    "enqueue(text, jsonb, text, integer, timestamptz, interval, integer, interval, text,"
    " text, text[], bigint[], text, text, timestamptz, interval, jsonb)"
)

# The flow claim as 0010 left it (the downgrade), and after: it returns meta, and its
# statements are planned for their parameters whatever the caller's session asks (the
# worker's claim connection asks for generic plans). A new result type needs DROP first.
OLD_CLAIM_FLOW = r"""
CREATE FUNCTION {s}._claim_flow(p_queues text[], lim integer, worker text, ttl double precision)
RETURNS TABLE (id bigint, lease_epoch bigint, queue text, kind text, args jsonb,
               priority integer, attempts integer, max_attempts integer,
               timeout double precision)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
  owned text[];
  flowing text[];
  qname text;
  cfg {s}.queues;
  budget integer := lim;
  free integer;
  n integer;
  t timestamptz;
BEGIN
  SELECT coalesce(array_agg(u.name ORDER BY u.ord), '{{}}'),
         coalesce(array_agg(u.name ORDER BY u.ord) FILTER (WHERE NOT coalesce(c.paused, false)),
                  '{{}}')
  INTO owned, flowing
  FROM unnest(p_queues) WITH ORDINALITY AS u(name, ord)
  LEFT JOIN {s}.queues c ON c.name = u.name
  WHERE coalesce(c.paused, false) OR c.concurrency_limit IS NOT NULL OR c.rate_limit IS NOT NULL
     OR EXISTS (SELECT 1 FROM {s}.jobs k
                WHERE k.state = 'queued' AND k.queue = u.name AND k.concurrency_key IS NOT NULL
                OFFSET 0);
  IF cardinality(owned) = 0 THEN
    RETURN;
  END IF;
  RETURN QUERY SELECT NULL::bigint, NULL::bigint, o.name, NULL::text, NULL::jsonb,
                      NULL::integer, NULL::integer, NULL::integer, NULL::float8
               FROM unnest(owned) AS o(name);
  IF cardinality(flowing) = 0 THEN
    RETURN;
  END IF;
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION USING ERRCODE = 'PB010',
      MESSAGE = 'claiming from a limited queue or jobs with a concurrency_key needs READ COMMITTED isolation';
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('{s}.queues'), hashtext(x.name))
  FROM (SELECT DISTINCT name FROM unnest(flowing) AS f(name) ORDER BY 1) x;
  FOREACH qname IN ARRAY flowing LOOP
    EXIT WHEN budget <= 0;
    cfg := NULL;
    SELECT * INTO cfg FROM {s}.queues c WHERE c.name = qname;
    CONTINUE WHEN cfg.paused;
    -- The time of this turn, not the statement's start (now()), which may be long before
    -- the lock was ours: starts, leases and the rate window are stamped with it, so a
    -- start is never stamped before the finish that made room for it, and the window log
    -- stays ordered (under the lock the clock only moves forward).
    t := clock_timestamp();
    free := budget;
    IF cfg.concurrency_limit IS NOT NULL THEN
      SELECT count(*) INTO n FROM {s}.jobs j
      WHERE j.lease_expires_at IS NOT NULL AND j.state = 'running' AND j.queue = qname;
      free := least(free, cfg.concurrency_limit - n);
    END IF;
    IF cfg.rate_limit IS NOT NULL THEN
      DELETE FROM {s}.queue_starts s WHERE s.queue = qname AND s.started_at <= t - cfg.rate_period;
      SELECT count(*) INTO n FROM {s}.queue_starts s WHERE s.queue = qname;
      free := least(free, cfg.rate_limit - n);
    END IF;
    CONTINUE WHEN free <= 0;
    RETURN QUERY
    WITH RECURSIVE keys(k) AS (
      (SELECT j.concurrency_key FROM {s}.jobs j
       WHERE j.state = 'queued' AND j.queue = qname AND j.concurrency_key IS NOT NULL
       ORDER BY j.concurrency_key LIMIT 1)
      UNION ALL
      SELECT (SELECT j.concurrency_key FROM {s}.jobs j
              WHERE j.state = 'queued' AND j.queue = qname AND j.concurrency_key > keys.k
              ORDER BY j.concurrency_key LIMIT 1)
      FROM keys WHERE keys.k IS NOT NULL
    ), heads AS (
      SELECT h.id, h.priority, h.run_at FROM keys
      CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at FROM {s}.jobs j
        WHERE j.state = 'queued' AND j.queue = qname AND j.concurrency_key = keys.k
          AND j.run_at <= t AND (j.deadline IS NULL OR j.deadline > t)
        ORDER BY j.priority DESC, j.run_at, j.id LIMIT 1
        FOR NO KEY UPDATE SKIP LOCKED) h
      WHERE keys.k IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM {s}.jobs r
                        WHERE r.lease_expires_at IS NOT NULL AND r.concurrency_key IS NOT NULL
                          AND r.queue = qname AND r.concurrency_key = keys.k)
    ), plain AS (
      SELECT j.id, j.priority, j.run_at FROM {s}.jobs j
      WHERE j.state = 'queued' AND j.queue = qname AND j.run_at <= t
        AND j.concurrency_key IS NULL AND (j.deadline IS NULL OR j.deadline > t)
      ORDER BY j.priority DESC, j.run_at, j.id LIMIT free
      FOR NO KEY UPDATE SKIP LOCKED
    ), pick AS (
      SELECT c.id FROM (SELECT * FROM plain UNION ALL SELECT * FROM heads) c
      ORDER BY c.priority DESC, c.run_at, c.id LIMIT free
    ), claimed AS (
      UPDATE {s}.jobs j
      SET state = 'running', attempts = j.attempts + 1, lease_epoch = j.lease_epoch + 1,
          lease_expires_at = t + make_interval(secs => ttl), worker_id = worker,
          started_at = t
      FROM pick WHERE j.id = pick.id
      RETURNING j.id, j.lease_epoch, j.queue, j.kind, j.args, j.priority, j.attempts,
                j.max_attempts, extract(epoch FROM j.timeout)::float8 AS timeout
    ), ev AS (
      INSERT INTO {s}.job_events (job_id, event, epoch, worker_id)
      SELECT c.id, 'claimed', c.lease_epoch, worker FROM claimed c
    ), starts AS (
      INSERT INTO {s}.queue_starts (queue, started_at)
      SELECT qname, t FROM claimed WHERE cfg.rate_limit IS NOT NULL
    )
    SELECT * FROM claimed;
    GET DIAGNOSTICS n = ROW_COUNT;
    budget := budget - n;
  END LOOP;
END
$$;
"""

NEW_CLAIM_FLOW = r"""
CREATE FUNCTION {s}._claim_flow(p_queues text[], lim integer, worker text, ttl double precision)
RETURNS TABLE (id bigint, lease_epoch bigint, queue text, kind text, args jsonb,
               priority integer, attempts integer, max_attempts integer,
               timeout double precision, meta jsonb)
-- Its statements are planned for their parameters whatever the caller's session asks
-- (the worker's claim connection asks for generic plans: migration 0012).
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = auto AS $$
#variable_conflict use_column
DECLARE
  owned text[];
  flowing text[];
  qname text;
  cfg {s}.queues;
  budget integer := lim;
  free integer;
  n integer;
  t timestamptz;
BEGIN
  SELECT coalesce(array_agg(u.name ORDER BY u.ord), '{{}}'),
         coalesce(array_agg(u.name ORDER BY u.ord) FILTER (WHERE NOT coalesce(c.paused, false)),
                  '{{}}')
  INTO owned, flowing
  FROM unnest(p_queues) WITH ORDINALITY AS u(name, ord)
  LEFT JOIN {s}.queues c ON c.name = u.name
  WHERE coalesce(c.paused, false) OR c.concurrency_limit IS NOT NULL OR c.rate_limit IS NOT NULL
     OR EXISTS (SELECT 1 FROM {s}.jobs k
                WHERE k.state = 'queued' AND k.queue = u.name AND k.concurrency_key IS NOT NULL
                OFFSET 0);
  IF cardinality(owned) = 0 THEN
    RETURN;
  END IF;
  RETURN QUERY SELECT NULL::bigint, NULL::bigint, o.name, NULL::text, NULL::jsonb,
                      NULL::integer, NULL::integer, NULL::integer, NULL::float8, NULL::jsonb
               FROM unnest(owned) AS o(name);
  IF cardinality(flowing) = 0 THEN
    RETURN;
  END IF;
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION USING ERRCODE = 'PB010',
      MESSAGE = 'claiming from a limited queue or jobs with a concurrency_key needs READ COMMITTED isolation';
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('{s}.queues'), hashtext(x.name))
  FROM (SELECT DISTINCT name FROM unnest(flowing) AS f(name) ORDER BY 1) x;
  FOREACH qname IN ARRAY flowing LOOP
    EXIT WHEN budget <= 0;
    cfg := NULL;
    SELECT * INTO cfg FROM {s}.queues c WHERE c.name = qname;
    CONTINUE WHEN cfg.paused;
    -- The time of this turn, not the statement's start (now()), which may be long before
    -- the lock was ours: starts, leases and the rate window are stamped with it, so a
    -- start is never stamped before the finish that made room for it, and the window log
    -- stays ordered (under the lock the clock only moves forward).
    t := clock_timestamp();
    free := budget;
    IF cfg.concurrency_limit IS NOT NULL THEN
      SELECT count(*) INTO n FROM {s}.jobs j
      WHERE j.lease_expires_at IS NOT NULL AND j.state = 'running' AND j.queue = qname;
      free := least(free, cfg.concurrency_limit - n);
    END IF;
    IF cfg.rate_limit IS NOT NULL THEN
      DELETE FROM {s}.queue_starts s WHERE s.queue = qname AND s.started_at <= t - cfg.rate_period;
      SELECT count(*) INTO n FROM {s}.queue_starts s WHERE s.queue = qname;
      free := least(free, cfg.rate_limit - n);
    END IF;
    CONTINUE WHEN free <= 0;
    RETURN QUERY
    WITH RECURSIVE keys(k) AS (
      (SELECT j.concurrency_key FROM {s}.jobs j
       WHERE j.state = 'queued' AND j.queue = qname AND j.concurrency_key IS NOT NULL
       ORDER BY j.concurrency_key LIMIT 1)
      UNION ALL
      SELECT (SELECT j.concurrency_key FROM {s}.jobs j
              WHERE j.state = 'queued' AND j.queue = qname AND j.concurrency_key > keys.k
              ORDER BY j.concurrency_key LIMIT 1)
      FROM keys WHERE keys.k IS NOT NULL
    ), heads AS (
      SELECT h.id, h.priority, h.run_at FROM keys
      CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at FROM {s}.jobs j
        WHERE j.state = 'queued' AND j.queue = qname AND j.concurrency_key = keys.k
          AND j.run_at <= t AND (j.deadline IS NULL OR j.deadline > t)
        ORDER BY j.priority DESC, j.run_at, j.id LIMIT 1
        FOR NO KEY UPDATE SKIP LOCKED) h
      WHERE keys.k IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM {s}.jobs r
                        WHERE r.lease_expires_at IS NOT NULL AND r.concurrency_key IS NOT NULL
                          AND r.queue = qname AND r.concurrency_key = keys.k)
    ), plain AS (
      SELECT j.id, j.priority, j.run_at FROM {s}.jobs j
      WHERE j.state = 'queued' AND j.queue = qname AND j.run_at <= t
        AND j.concurrency_key IS NULL AND (j.deadline IS NULL OR j.deadline > t)
      ORDER BY j.priority DESC, j.run_at, j.id LIMIT free
      FOR NO KEY UPDATE SKIP LOCKED
    ), pick AS (
      SELECT c.id FROM (SELECT * FROM plain UNION ALL SELECT * FROM heads) c
      ORDER BY c.priority DESC, c.run_at, c.id LIMIT free
    ), claimed AS (
      UPDATE {s}.jobs j
      SET state = 'running', attempts = j.attempts + 1, lease_epoch = j.lease_epoch + 1,
          lease_expires_at = t + make_interval(secs => ttl), worker_id = worker,
          started_at = t
      FROM pick WHERE j.id = pick.id
      RETURNING j.id, j.lease_epoch, j.queue, j.kind, j.args, j.priority, j.attempts,
                j.max_attempts, extract(epoch FROM j.timeout)::float8 AS timeout, j.meta
    ), ev AS (
      INSERT INTO {s}.job_events (job_id, event, epoch, worker_id)
      SELECT c.id, 'claimed', c.lease_epoch, worker FROM claimed c
    ), starts AS (
      INSERT INTO {s}.queue_starts (queue, started_at)
      SELECT qname, t FROM claimed WHERE cfg.rate_limit IS NOT NULL
    )
    SELECT * FROM claimed;
    GET DIAGNOSTICS n = ROW_COUNT;
    budget := budget - n;
  END LOOP;
END
$$;
"""

CLAIM_FLOW = "_claim_flow(text[], integer, text, double precision)"


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def _render(text: str, s: str) -> str:
    """`text` for schema `s`, replacing what exists."""
    text = text.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    return text.format(s=s, jobs_channel=f"{s}_jobs", cancel_channel=f"{s}_cancel")


def upgrade() -> None:
    s = _schema()
    op.create_table("keyed_queues", sa.Column("name", sa.Text, primary_key=True), schema=s)
    op.execute(
        f"INSERT INTO {s}.keyed_queues (name) SELECT DISTINCT queue FROM {s}.jobs"
        " WHERE concurrency_key IS NOT NULL"
    )
    op.create_table(
        "job_waiters",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("job_id", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        schema=s,
        prefixes=["UNLOGGED"],
    )
    op.create_index("job_waiters_job_idx", "job_waiters", ["job_id"], schema=s)
    op.execute(AFTER.format(s=s, done_channel=f"{s}_done"))
    # A constant default rewrites nothing (PG 11+); the check is added NOT VALID, then
    # validated, so the check of existing rows does not block writers.
    op.execute(f"ALTER TABLE {s}.jobs ADD COLUMN meta jsonb NOT NULL DEFAULT '{{}}'")
    op.execute(
        f"ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_meta_check"
        " CHECK (jsonb_typeof(meta) = 'object') NOT VALID"
    )
    op.execute(f"ALTER TABLE {s}.jobs VALIDATE CONSTRAINT jobs_meta_check")
    # Two signatures change (enqueue() gains an argument, _parse_specs() a column): those
    # go first, since a new argument list would be an overload and a new result refused.
    op.execute(f"DROP FUNCTION {s}.{OLD_ENQUEUE}")
    op.execute(f"DROP FUNCTION {s}._parse_specs(jsonb)")
    op.execute(_render(NEW_ENQUEUE_FUNCTIONS, s))
    op.execute(f"DROP FUNCTION {s}.{CLAIM_FLOW}")
    op.execute(_render(NEW_CLAIM_FLOW, s))


def downgrade() -> None:
    s = _schema()
    op.execute(f"DROP FUNCTION {s}.{CLAIM_FLOW}")
    op.execute(_render(OLD_CLAIM_FLOW, s))
    op.execute(f"DROP FUNCTION {s}.{NEW_ENQUEUE}")
    op.execute(f"DROP FUNCTION {s}._parse_specs(jsonb)")
    op.execute(_render(OLD_ENQUEUE_FUNCTIONS, s))
    op.execute(f"ALTER TABLE {s}.jobs DROP COLUMN meta")
    op.execute(BEFORE.format(s=s, done_channel=f"{s}_done"))
    op.drop_table("job_waiters", schema=s)
    op.drop_table("keyed_queues", schema=s)
