"""Dependencies between jobs, and the enqueue fields of scheduling and flow control.

- broker.job_dependencies (job_id, depends_on): a job enqueued with depends_on waits
  (state `waiting`) until every dependency has succeeded, and is queued in the same
  transaction as the last one's completion; when one fails or is cancelled its waiting
  dependents are cancelled, recursively (event dependency_failed). Both are done by the
  statement trigger function that already keeps job_counts (_count_finished), so every
  writer of broker.jobs resolves dependents: the finish statement, the reaper,
  cancel_job(), the cascade itself, an operator's UPDATE or DELETE
  (docs/decisions/013-dependencies.md).
- The enqueue doors take depends_on, group, concurrency_key, and deadline or start_within
  (_parse_specs with the bounds of broker.spec; enqueue() gets the named arguments).
- CHECK constraints hold group and concurrency_key to their bounds (added NOT VALID, then
  validated, so writers are not blocked); jobs_waiting_idx counts waiting jobs per queue
  (queue_stats gains a `waiting` column), jobs_group_idx a group's jobs per state.
- cancel_job() cancels a waiting job; retry_job() sends a job with dependencies back to
  waiting while one has not succeeded, and refuses while one is failed or cancelled.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# broker.spec's bounds at this revision (tests/unit/test_contract.py checks they agree).
GROUP_MAX_LENGTH = 128
KEY_MAX_LENGTH = 200
MAX_DEPENDENCIES = 100
JOB_ID_MAX = 2**53

# Rendered with str.format: `{s}` is the schema, `{jobs_channel}` / `{cancel_channel}` the
# NOTIFY channels; literal braces are doubled. The text is broker/sql/schema.sql's at
# this revision.
FUNCTIONS = r"""
-- Why a job was cancelled for its dependency: last_error of a dependency_failed job.
CREATE FUNCTION {s}._dependency_failed(dependency bigint, state text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT format('dependency %s %s', dependency,
                CASE state WHEN 'failed' THEN 'failed' ELSE 'was ' || state END)
$$;

-- Resolve the dependents of jobs that just ended: those of `ended` (failed, cancelled or
-- deleted, with their `states`) are cancelled if waiting, and so, recursively, are their
-- own waiting dependents (one statement: the chain may be long); those of `succeeded`
-- are queued once every dependency that still exists has succeeded, and their queues
-- notified. Called by the jobs trigger only.
-- The waiting dependents are locked (in id order) before the statement that decides, and
-- that statement takes a new snapshot: of two dependencies of one job ending in
-- concurrent transactions, the second waits for the first to commit and then sees both
-- succeeded, so the job is never left waiting.
CREATE FUNCTION {s}._resolve_dependents(ended bigint[], states text[], succeeded bigint[])
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  notified bigint;
BEGIN
  IF cardinality(ended) > 0 THEN
    WITH RECURSIVE doomed(id, parent, parent_state) AS (
      SELECT d.job_id, e.id, e.state
      FROM unnest(ended, states) AS e(id, state)
      JOIN {s}.job_dependencies d ON d.depends_on = e.id
      JOIN {s}.jobs c ON c.id = d.job_id AND c.state = 'waiting'
      UNION
      SELECT d.job_id, x.id, 'cancelled'
      FROM doomed x
      JOIN {s}.job_dependencies d ON d.depends_on = x.id
      JOIN {s}.jobs c ON c.id = d.job_id AND c.state = 'waiting'
    ), victim AS (
      SELECT DISTINCT ON (id) id, parent, parent_state FROM doomed ORDER BY id, parent
    ), cancelled AS (
      UPDATE {s}.jobs j SET state = 'cancelled', finished_at = now(),
             last_error = {s}._dependency_failed(v.parent, v.parent_state)
      FROM victim v WHERE j.id = v.id AND j.state = 'waiting'
      RETURNING j.id, v.parent, v.parent_state
    )
    INSERT INTO {s}.job_events (job_id, event, detail)
    SELECT id, 'dependency_failed', jsonb_build_object('dependency', parent, 'state', parent_state)
    FROM cancelled ORDER BY id;
  END IF;
  IF cardinality(succeeded) > 0 THEN
    PERFORM 1 FROM {s}.jobs c
    WHERE c.id IN (SELECT d.job_id FROM {s}.job_dependencies d WHERE d.depends_on = ANY(succeeded))
      AND c.state = 'waiting'
    ORDER BY c.id FOR UPDATE;
    WITH released AS (
      UPDATE {s}.jobs c SET state = 'queued', run_at = greatest(c.run_at, now())
      WHERE c.id IN (SELECT d.job_id FROM {s}.job_dependencies d WHERE d.depends_on = ANY(succeeded))
        AND c.state = 'waiting'
        AND NOT EXISTS (SELECT 1 FROM {s}.job_dependencies o JOIN {s}.jobs p ON p.id = o.depends_on
                        WHERE o.job_id = c.id AND p.state <> 'succeeded')
      RETURNING c.queue, c.run_at
    )
    SELECT count(pg_notify('{jobs_channel}', q.queue)) INTO notified
    FROM (SELECT DISTINCT queue FROM released WHERE run_at <= now()) q;
  END IF;
END
$$;

-- At the commit of a transaction that added an edge (a job now waiting for another), the
-- dependency as it stands then: a dependency that ended while that transaction was open
-- could not see the uncommitted job, so it is resolved here. FOR SHARE waits for a
-- completion still in flight (it holds the row) and, taken, makes one that starts later
-- wait for this commit, after which the jobs trigger sees the edge. Held for the commit
-- only, so an enqueue in a long transaction never holds up the dependency's heartbeats.
CREATE FUNCTION {s}._dependency_added() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  ended text;
BEGIN
  SELECT state INTO ended FROM {s}.jobs WHERE id = NEW.depends_on FOR SHARE;
  IF ended IN ('succeeded', 'failed', 'cancelled')
     AND EXISTS (SELECT 1 FROM {s}.jobs WHERE id = NEW.job_id AND state = 'waiting') THEN
    IF ended = 'succeeded' THEN
      PERFORM {s}._resolve_dependents('{{}}', '{{}}', ARRAY[NEW.depends_on]);
    ELSE
      PERFORM {s}._resolve_dependents(ARRAY[NEW.depends_on], ARRAY[ended], '{{}}');
    END IF;
  END IF;
  RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER job_dependencies_added AFTER INSERT ON {s}.job_dependencies
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {s}._dependency_added();

-- Parse a JSON array of job specs, applying defaults, and hold each to the job contract
-- (broker/spec.py: the same bounds at every door; docs/decisions/008-job-contract.md).
-- Rules that are CHECK constraints on the jobs table (kind, queue and group names, args
-- an object, max_attempts >= 1, timeout > 0, the concurrency key) are left to them, so
-- every path in (this function, COPY, a plain INSERT) obeys those. A spec's
-- idempotency_scope namespaces its key: stored as scope:key, bounded as the key alone.
-- Each spec's first broken rule is its `problem`, computed once per spec (OFFSET 0 keeps
-- the subquery from being folded into every column that reads it) and raised by the `ord`
-- column; columns that could fail on a bad value themselves (casts, intervals) are
-- computed only when there is none. The jsonpath finds a container at nesting level 64,
-- i.e. 65 deep counting args (level 0). depends_on comes out sorted without repeats, NULL
-- when empty; start_within becomes a deadline on the database clock.
-- The fingerprint is the sha256 of the canonical jsonb text of the normalized request
-- (jsonb orders object keys), so key order and whitespace in the request never matter;
-- the fields added with dependencies (migration 0009) join it only when given, so a
-- request fingerprinted before them still matches its replay.
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

-- Enqueue a JSON array of job specs in one statement. Returns one row per spec, in order:
-- the job id and whether it was created (false: an earlier job with the same
-- idempotency key and the same request). The NOTIFY for runnable jobs is sent in the
-- caller's transaction, once per queue.
-- A spec with depends_on is born waiting (a dependency not yet succeeded), queued (all
-- succeeded) or cancelled (one failed or was cancelled: event dependency_failed). Its
-- dependencies are locked FOR KEY SHARE (they cannot be deleted or pruned before we
-- commit, but workers still heartbeat and finish them) and read in the next statement.
-- One that ends while this transaction is open cannot see our uncommitted job: the
-- deferred trigger on job_dependencies settles that at our commit. Every id must name an
-- existing job; the batch's own jobs have no ids yet, so a batch cannot refer to itself
-- and no cycle can be built.
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

-- Enqueue one job from SQL (psql, triggers, an application's own transaction).
-- Returns the job id (the existing one for a repeated idempotency key).
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

-- Cancel a job: queued or waiting -> cancelled at once; running -> cancel requested, and
-- the worker holding it is told with NOTIFY (it acknowledges with a fenced write);
-- finished -> error.
CREATE FUNCTION {s}.cancel_job(job_id bigint) RETURNS SETOF {s}.jobs
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  j {s}.jobs;
BEGIN
  -- Lock first and branch on the locked row: a transition committing between separate
  -- UPDATEs (a retrying fail, a release, the reaper) would otherwise lose the cancel.
  -- NO KEY UPDATE, as the updates themselves take: an open enqueue of a dependent holds
  -- the row FOR KEY SHARE, which must not hold up a cancel.
  SELECT * INTO j FROM {s}.jobs WHERE id = job_id FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB003', MESSAGE = format('job %s not found', job_id),
      HINT = job_id::text;
  END IF;
  IF j.state IN ('queued', 'waiting') THEN
    UPDATE {s}.jobs SET state = 'cancelled', finished_at = now()
    WHERE id = job_id RETURNING * INTO j;
    INSERT INTO {s}.job_events (job_id, event) VALUES (j.id, 'cancelled');
  ELSIF j.state = 'running' THEN
    UPDATE {s}.jobs SET cancel_requested_at = coalesce(cancel_requested_at, now())
    WHERE id = job_id RETURNING * INTO j;
    INSERT INTO {s}.job_events (job_id, event, epoch, worker_id)
    VALUES (j.id, 'cancel_requested', j.lease_epoch, j.worker_id);
    PERFORM pg_notify('{cancel_channel}', j.id::text);
  ELSE
    RAISE EXCEPTION USING ERRCODE = 'PB004',
      MESSAGE = format('cannot cancel job %s: it is %s', job_id, j.state),
      DETAIL = j.state, HINT = job_id::text;
  END IF;
  RETURN NEXT j;
END
$$;

-- Put a failed or cancelled job back in the queue, runnable now, with at least one
-- attempt left. A job with dependencies goes back to waiting while one of them has not
-- succeeded yet (a dependency that no longer exists was pruned, so counts as met); while
-- one is failed or cancelled it is refused: retry that one first.
CREATE FUNCTION {s}.retry_job(job_id bigint) RETURNS SETOF {s}.jobs
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  j {s}.jobs;
  blocker record;
  v_state text := 'queued';
BEGIN
  SELECT * INTO j FROM {s}.jobs WHERE id = job_id FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB003', MESSAGE = format('job %s not found', job_id),
      HINT = job_id::text;
  END IF;
  IF j.state NOT IN ('failed', 'cancelled') THEN
    RAISE EXCEPTION USING ERRCODE = 'PB004',
      MESSAGE = format('cannot retry job %s: it is %s', job_id, j.state),
      DETAIL = j.state, HINT = job_id::text;
  END IF;
  IF EXISTS (SELECT 1 FROM {s}.job_dependencies d WHERE d.job_id = retry_job.job_id) THEN
    -- Locked as enqueue locks them, so a dependency ending meanwhile sees this job waiting.
    PERFORM 1 FROM {s}.jobs p
    WHERE p.id IN (SELECT d.depends_on FROM {s}.job_dependencies d
                   WHERE d.job_id = retry_job.job_id)
    ORDER BY p.id FOR SHARE;
    SELECT p.id, p.state INTO blocker
    FROM {s}.job_dependencies d JOIN {s}.jobs p ON p.id = d.depends_on
    WHERE d.job_id = retry_job.job_id AND p.state <> 'succeeded'
    ORDER BY p.state IN ('failed', 'cancelled') DESC, p.id LIMIT 1;
    IF FOUND AND blocker.state IN ('failed', 'cancelled') THEN
      RAISE EXCEPTION USING ERRCODE = 'PB004',
        MESSAGE = format('cannot retry job %s: its dependency %s is %s (retry that one first)',
                         job_id, blocker.id, blocker.state),
        DETAIL = j.state, HINT = job_id::text;
    ELSIF FOUND THEN
      v_state := 'waiting';
    END IF;
  END IF;
  UPDATE {s}.jobs
  SET state = v_state, run_at = now(), finished_at = NULL, cancel_requested_at = NULL,
      lease_expires_at = NULL, result = NULL, max_attempts = greatest(max_attempts, attempts + 1)
  WHERE id = job_id RETURNING * INTO j;
  INSERT INTO {s}.job_events (job_id, event, epoch) VALUES (j.id, 'retried', j.lease_epoch);
  IF v_state = 'queued' THEN
    PERFORM pg_notify('{jobs_channel}', j.queue);
  END IF;
  RETURN NEXT j;
END
$$;

-- Live states from their partial indexes (jobs_claim_idx, jobs_lease_idx,
-- jobs_waiting_idx: only live rows), finished states from the rollup: none reads the
-- retained history.
CREATE VIEW {s}.queue_stats AS
WITH live AS (
  SELECT queue,
         count(*) AS queued,
         count(*) FILTER (WHERE run_at <= now()) AS available,
         count(*) FILTER (WHERE run_at > now()) AS scheduled,
         min(run_at) FILTER (WHERE run_at <= now()) AS oldest_available
  FROM {s}.jobs WHERE state = 'queued' GROUP BY queue
), waiting AS (
  SELECT queue, count(*) AS waiting FROM {s}.jobs WHERE state = 'waiting' GROUP BY queue
), running AS (
  SELECT queue, count(*) AS running FROM {s}.jobs
  WHERE lease_expires_at IS NOT NULL AND state = 'running' GROUP BY queue
), finished AS (
  SELECT queue,
         coalesce(sum(n) FILTER (WHERE state = 'succeeded'), 0)::bigint AS succeeded,
         coalesce(sum(n) FILTER (WHERE state = 'failed'), 0)::bigint AS failed,
         coalesce(sum(n) FILTER (WHERE state = 'cancelled'), 0)::bigint AS cancelled
  FROM {s}.job_counts GROUP BY queue
), q AS (
  SELECT queue FROM live UNION SELECT queue FROM waiting UNION SELECT queue FROM running
  UNION SELECT queue FROM finished WHERE succeeded + failed + cancelled > 0
)
SELECT q.queue,
       coalesce(l.queued, 0) AS queued,
       coalesce(l.available, 0) AS available,
       coalesce(l.scheduled, 0) AS scheduled,
       coalesce(r.running, 0) AS running,
       coalesce(f.succeeded, 0) AS succeeded,
       coalesce(f.failed, 0) AS failed,
       coalesce(f.cancelled, 0) AS cancelled,
       coalesce(extract(epoch FROM now() - l.oldest_available), 0)::double precision
         AS oldest_available_age_seconds,
       EXISTS (SELECT 1 FROM {s}.queue_pauses p WHERE p.queue = q.queue) AS paused,
       coalesce(w.waiting, 0) AS waiting
FROM q LEFT JOIN live l USING (queue) LEFT JOIN running r USING (queue)
LEFT JOIN finished f USING (queue) LEFT JOIN waiting w USING (queue);

-- Append the change in finished jobs per (queue, state) made by one statement, and
-- resolve the dependents of jobs that ended (migration 0009): the one trigger function
-- every writer of broker.jobs goes through (the finish statement, the reaper,
-- cancel_job(), the dependency cascade itself, an operator's own SQL). Transition
-- tables hold the rows the statement touched; a claim or heartbeat touches no finished
-- row and appends nothing. Dependents are looked for only among the rows that are
-- finished now, in job_dependencies_parent_idx: one range probe for the statement, then
-- (only if an edge falls in that range) one probe per row; a statement none of whose
-- jobs has dependents does nothing more (decision 013 has the figures).
-- A deleted job takes its own edges with it; one deleted unfinished or unsucceeded
-- (an operator's DELETE: pruning deletes finished jobs only) cancels its waiting
-- dependents. Edges to a deleted job that had succeeded stay, and count as met.
CREATE FUNCTION {s}._count_finished() RETURNS trigger
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

# The definitions this revision replaces (0007's), restored on downgrade.
OLD_FUNCTIONS = r"""
-- Parse a JSON array of job specs, applying defaults, and hold each to the job contract
-- (broker/spec.py: the same bounds at every door; docs/decisions/008-job-contract.md).
-- Rules that are CHECK constraints on the jobs table (kind and queue names, args an
-- object, max_attempts >= 1, timeout > 0) are left to them, so every path in (this
-- function, COPY, a plain INSERT) obeys those. A spec's idempotency_scope namespaces its
-- key: stored as scope:key, bounded as the key alone. Each spec's first broken rule is its
-- `problem`, computed once per spec (OFFSET 0 keeps the subquery from being folded into
-- every column that reads it) and raised by the `ord` column; columns that could fail on
-- a bad value themselves (casts, intervals) are computed only when there is none. The
-- jsonpath finds a container at nesting level 64, i.e. 65 deep counting args (level 0).
-- The fingerprint is the sha256 of the canonical jsonb text of the normalized request
-- (jsonb orders object keys), so key order and whitespace in the request never matter.
CREATE FUNCTION {s}._parse_specs(specs jsonb)
RETURNS TABLE (ord bigint, queue text, kind text, args jsonb, priority integer,
               run_at timestamptz, max_attempts integer, timeout interval,
               idempotency_key text, fingerprint text, subject_key text, tags text[])
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
           encode(sha256(convert_to(jsonb_build_object(
             'kind', v.kind, 'args', coalesce(v.args, '{{}}'), 'queue', coalesce(v.queue, 'default'),
             'priority', coalesce(v.priority, 0)::integer,
             'run_at', extract(epoch FROM v.run_at), 'delay', v.delay,
             'max_attempts', coalesce(v.max_attempts, 20)::integer,
             'timeout', v.timeout, 'subject_key', v.subject_key,
             'tags', to_jsonb(coalesce(v.tags, '{{}}'::text[])))::text, 'UTF8')), 'hex')
         END,
         v.subject_key,
         coalesce(v.tags, '{{}}'::text[])
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
      END AS problem
    FROM ROWS FROM (jsonb_to_recordset(specs) AS (
           queue text, kind text, args jsonb, priority numeric, run_at timestamptz,
           delay double precision, max_attempts numeric, timeout double precision,
           idempotency_key text, idempotency_scope text, subject_key text, tags text[]))
         WITH ORDINALITY AS r(queue, kind, args, priority, run_at, delay, max_attempts,
                              timeout, idempotency_key, idempotency_scope, subject_key,
                              tags, ord)
    OFFSET 0
  ) v
$$;

-- Enqueue a JSON array of job specs in one statement. Returns one row per spec, in order:
-- the job id and whether it was created (false: an earlier job with the same
-- idempotency key and the same request). The NOTIFY for runnable jobs is sent in the
-- caller's transaction, once per queue.
CREATE FUNCTION {s}.enqueue_many(specs jsonb)
RETURNS TABLE (ord bigint, job_id bigint, created boolean)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
  v_ords bigint[];
  v_ids bigint[];
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

  WITH src AS (
    SELECT p.*, nextval('{s}.jobs_id_seq') AS id FROM {s}._parse_specs(specs) p
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
                          state, finished_at, last_error)
    SELECT src.id, src.queue, src.kind, src.args, src.priority, src.run_at, src.max_attempts,
           src.timeout, src.idempotency_key, src.fingerprint, src.subject_key, src.tags,
           CASE WHEN n.newest_id <> src.id THEN 'cancelled' ELSE 'queued' END,
           CASE WHEN n.newest_id <> src.id THEN now() END,
           CASE WHEN n.newest_id <> src.id THEN 'superseded' END
    FROM src LEFT JOIN newest_in_batch n USING (kind, subject_key) ORDER BY src.ord
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, queue, kind, subject_key, run_at, state
  ), ev AS (
    INSERT INTO {s}.job_events (job_id, event, detail)
    SELECT x.job_id, x.event, x.detail FROM (
      SELECT id AS job_id, 'enqueued' AS event, NULL::jsonb AS detail, 0 AS step FROM ins
      UNION ALL
      SELECT ins.id, 'superseded', jsonb_build_object('superseded_by', n.newest_id), 1
      FROM ins JOIN newest_in_batch n USING (kind, subject_key) WHERE ins.state = 'cancelled'
    ) x ORDER BY x.job_id, x.step
  ), newest AS (
    SELECT id, kind, subject_key FROM ins WHERE subject_key IS NOT NULL AND state = 'queued'
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

-- Enqueue one job from SQL (psql, triggers, an application's own transaction).
-- Returns the job id (the existing one for a repeated idempotency key).
CREATE FUNCTION {s}.enqueue(
  kind text, args jsonb DEFAULT '{{}}', queue text DEFAULT 'default', priority integer DEFAULT 0,
  run_at timestamptz DEFAULT NULL, delay interval DEFAULT NULL,
  max_attempts integer DEFAULT 20, timeout interval DEFAULT NULL,
  idempotency_key text DEFAULT NULL, subject_key text DEFAULT NULL, tags text[] DEFAULT '{{}}'
) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
  -- A JSON null reads exactly like an absent key in _parse_specs, so nothing is stripped
  -- (jsonb_strip_nulls would also strip nulls nested inside args).
  SELECT e.job_id FROM {s}.enqueue_many(jsonb_build_array(jsonb_build_object(
    'kind', kind, 'args', args, 'queue', queue, 'priority', priority,
    'run_at', run_at, 'delay', extract(epoch FROM delay), 'max_attempts', max_attempts,
    'timeout', extract(epoch FROM timeout), 'idempotency_key', idempotency_key,
    'subject_key', subject_key, 'tags', to_jsonb(tags)))) e
$$;

-- Cancel a job: queued -> cancelled at once; running -> cancel requested, and the worker
-- holding it is told with NOTIFY (it acknowledges with a fenced write); finished -> error.
CREATE FUNCTION {s}.cancel_job(job_id bigint) RETURNS SETOF {s}.jobs
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  j {s}.jobs;
BEGIN
  -- Lock first and branch on the locked row: a transition committing between separate
  -- UPDATEs (a retrying fail, a release, the reaper) would otherwise lose the cancel.
  SELECT * INTO j FROM {s}.jobs WHERE id = job_id FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB003', MESSAGE = format('job %s not found', job_id),
      HINT = job_id::text;
  END IF;
  IF j.state = 'queued' THEN
    UPDATE {s}.jobs SET state = 'cancelled', finished_at = now()
    WHERE id = job_id RETURNING * INTO j;
    INSERT INTO {s}.job_events (job_id, event) VALUES (j.id, 'cancelled');
  ELSIF j.state = 'running' THEN
    UPDATE {s}.jobs SET cancel_requested_at = coalesce(cancel_requested_at, now())
    WHERE id = job_id RETURNING * INTO j;
    INSERT INTO {s}.job_events (job_id, event, epoch, worker_id)
    VALUES (j.id, 'cancel_requested', j.lease_epoch, j.worker_id);
    PERFORM pg_notify('{cancel_channel}', j.id::text);
  ELSE
    RAISE EXCEPTION USING ERRCODE = 'PB004',
      MESSAGE = format('cannot cancel job %s: it is %s', job_id, j.state),
      DETAIL = j.state, HINT = job_id::text;
  END IF;
  RETURN NEXT j;
END
$$;

-- Put a failed or cancelled job back in the queue, runnable now, with at least one
-- attempt left.
CREATE FUNCTION {s}.retry_job(job_id bigint) RETURNS SETOF {s}.jobs
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  j {s}.jobs;
BEGIN
  UPDATE {s}.jobs
  SET state = 'queued', run_at = now(), finished_at = NULL, cancel_requested_at = NULL,
      lease_expires_at = NULL, result = NULL, max_attempts = greatest(max_attempts, attempts + 1)
  WHERE id = job_id AND state IN ('failed', 'cancelled') RETURNING * INTO j;
  IF FOUND THEN
    INSERT INTO {s}.job_events (job_id, event, epoch) VALUES (j.id, 'retried', j.lease_epoch);
    PERFORM pg_notify('{jobs_channel}', j.queue);
    RETURN NEXT j;
    RETURN;
  END IF;
  SELECT * INTO j FROM {s}.jobs WHERE id = job_id;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB003', MESSAGE = format('job %s not found', job_id),
      HINT = job_id::text;
  END IF;
  RAISE EXCEPTION USING ERRCODE = 'PB004', MESSAGE = format('cannot retry job %s: it is %s', job_id, j.state),
    DETAIL = j.state, HINT = job_id::text;
END
$$;

-- Live states from their partial indexes (jobs_claim_idx, jobs_lease_idx: only live rows),
-- finished states from the rollup: neither reads the retained history.
CREATE VIEW {s}.queue_stats AS
WITH live AS (
  SELECT queue,
         count(*) AS queued,
         count(*) FILTER (WHERE run_at <= now()) AS available,
         count(*) FILTER (WHERE run_at > now()) AS scheduled,
         min(run_at) FILTER (WHERE run_at <= now()) AS oldest_available
  FROM {s}.jobs WHERE state = 'queued' GROUP BY queue
), running AS (
  SELECT queue, count(*) AS running FROM {s}.jobs
  WHERE lease_expires_at IS NOT NULL AND state = 'running' GROUP BY queue
), finished AS (
  SELECT queue,
         coalesce(sum(n) FILTER (WHERE state = 'succeeded'), 0)::bigint AS succeeded,
         coalesce(sum(n) FILTER (WHERE state = 'failed'), 0)::bigint AS failed,
         coalesce(sum(n) FILTER (WHERE state = 'cancelled'), 0)::bigint AS cancelled
  FROM {s}.job_counts GROUP BY queue
), q AS (
  SELECT queue FROM live UNION SELECT queue FROM running
  UNION SELECT queue FROM finished WHERE succeeded + failed + cancelled > 0
)
SELECT q.queue,
       coalesce(l.queued, 0) AS queued,
       coalesce(l.available, 0) AS available,
       coalesce(l.scheduled, 0) AS scheduled,
       coalesce(r.running, 0) AS running,
       coalesce(f.succeeded, 0) AS succeeded,
       coalesce(f.failed, 0) AS failed,
       coalesce(f.cancelled, 0) AS cancelled,
       coalesce(extract(epoch FROM now() - l.oldest_available), 0)::double precision
         AS oldest_available_age_seconds,
       EXISTS (SELECT 1 FROM {s}.queue_pauses p WHERE p.queue = q.queue) AS paused
FROM q LEFT JOIN live l USING (queue) LEFT JOIN running r USING (queue)
LEFT JOIN finished f USING (queue);

-- Append the change in finished jobs per (queue, state) made by one statement. Transition
-- tables hold the rows the statement touched; a claim or heartbeat touches no finished
-- row and appends nothing.
CREATE FUNCTION {s}._count_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {s}.job_counts;
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, count(*) FROM new_rows WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, -count(*) FROM old_rows WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2;
  ELSE
    INSERT INTO {s}.job_counts (queue, state, n)
    SELECT queue, state, sum(d) FROM (
      SELECT queue, state, 1 AS d FROM new_rows WHERE state IN ('succeeded', 'failed', 'cancelled')
      UNION ALL
      SELECT queue, state, -1 FROM old_rows WHERE state IN ('succeeded', 'failed', 'cancelled')
    ) x GROUP BY 1, 2 HAVING sum(d) <> 0;
  END IF;
  RETURN NULL;
END
$$;
"""

OLD_ENQUEUE = (
    "enqueue(text, jsonb, text, integer, timestamptz, interval, integer, interval, text,"
    " text, text[])"
)
NEW_ENQUEUE = (
    "enqueue(text, jsonb, text, integer, timestamptz, interval, integer, interval, text,"
    " text, text[], bigint[], text, text, timestamptz, interval)"
)


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def _render(text: str, s: str) -> str:
    """`text` for schema `s`, replacing what exists (grants on the functions survive)."""
    text = text.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    text = text.replace("CREATE VIEW", "CREATE OR REPLACE VIEW")
    return text.format(s=s, jobs_channel=f"{s}_jobs", cancel_channel=f"{s}_cancel")


def upgrade() -> None:
    s = _schema()
    op.execute(
        f"CREATE TABLE {s}.job_dependencies ("
        " job_id bigint NOT NULL, depends_on bigint NOT NULL,"
        " CONSTRAINT job_dependencies_pkey PRIMARY KEY (job_id, depends_on),"
        " CONSTRAINT job_dependencies_self_check CHECK (job_id <> depends_on))"
    )
    op.execute(
        f"CREATE INDEX job_dependencies_parent_idx ON {s}.job_dependencies (depends_on, job_id)"
    )
    op.execute(
        f"ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_group_check"
        f' CHECK (length("group") BETWEEN 1 AND {GROUP_MAX_LENGTH}'
        " AND \"group\" !~ '[^A-Za-z0-9_.:-]') NOT VALID,"
        " ADD CONSTRAINT jobs_concurrency_key_check"
        f" CHECK (length(concurrency_key) BETWEEN 1 AND {KEY_MAX_LENGTH}"
        r" AND concurrency_key !~ '[^\x21-\x7e]') NOT VALID"
    )
    op.execute(f"ALTER TABLE {s}.jobs VALIDATE CONSTRAINT jobs_group_check")
    op.execute(f"ALTER TABLE {s}.jobs VALIDATE CONSTRAINT jobs_concurrency_key_check")
    op.execute(f"CREATE INDEX jobs_waiting_idx ON {s}.jobs (queue) WHERE state = 'waiting'")
    op.execute(
        f'CREATE INDEX jobs_group_idx ON {s}.jobs ("group", state) WHERE "group" IS NOT NULL'
    )
    # Two signatures change: those go first (a new argument list would be an overload, a
    # new result type is refused). queue_stats gains a last column, which REPLACE allows.
    op.execute(f"DROP FUNCTION {s}.{OLD_ENQUEUE}")
    op.execute(f"DROP FUNCTION {s}._parse_specs(jsonb)")
    op.execute(_render(FUNCTIONS, s))


def downgrade() -> None:
    s = _schema()
    op.execute(f"DROP FUNCTION {s}.{NEW_ENQUEUE}")
    op.execute(f"DROP FUNCTION {s}._parse_specs(jsonb)")
    op.execute(f"DROP VIEW {s}.queue_stats")
    op.execute(_render(OLD_FUNCTIONS, s))
    op.execute(f"DROP TRIGGER job_dependencies_added ON {s}.job_dependencies")
    op.execute(f"DROP FUNCTION {s}._dependency_added()")
    op.execute(f"DROP FUNCTION {s}._resolve_dependents(bigint[], text[], bigint[])")
    op.execute(f"DROP FUNCTION {s}._dependency_failed(bigint, text)")
    # Jobs waiting for a dependency cannot be expressed without one: they run now.
    op.execute(f"UPDATE {s}.jobs SET state = 'queued' WHERE state = 'waiting'")
    op.execute(f"DROP INDEX {s}.jobs_group_idx")
    op.execute(f"DROP INDEX {s}.jobs_waiting_idx")
    op.execute(
        f"ALTER TABLE {s}.jobs DROP CONSTRAINT jobs_group_check,"
        " DROP CONSTRAINT jobs_concurrency_key_check"
    )
    op.execute(f"DROP TABLE {s}.job_dependencies")
