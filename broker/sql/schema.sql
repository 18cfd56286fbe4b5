-- The current definition of every SQL function, view and trigger of the broker schema:
-- the one place to read them. Tables (and their indexes and constraints) are defined in
-- broker/schema.py (SQLAlchemy Core). Alembic migrations (alembic/versions) are the
-- deltas that bring a database here; tests/migrations/test_schema_sql.py builds one
-- database from broker/schema.py plus this file and one by migrating from empty, and
-- asserts the two are the same. Change a definition here and in a new migration together.
--
-- Rendered with str.format: `{s}` is the schema (a validated plain identifier),
-- `{jobs_channel}` / `{cancel_channel}` / `{done_channel}` the NOTIFY channels; literal braces
-- are doubled.
-- This file is not a named-query file: broker._queries skips it.

-- Exponential backoff with 0-25% jitter, capped at one hour: 1 s, 2 s, 4 s, ...
-- Operators may replace this function to change the retry curve for everyone.
CREATE FUNCTION {s}.retry_backoff(attempt integer) RETURNS interval
LANGUAGE sql VOLATILE AS $$
  SELECT make_interval(secs => least(3600, power(2, greatest(attempt, 1) - 1))
                               * (1 + 0.25 * random()))
$$;

CREATE FUNCTION {s}._reject(message text) RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'PB002', MESSAGE = message;
END
$$;

-- Wake the workers of `queue` for a job runnable now, only if one sleeps on it (decision
-- 028): a NOTIFY makes committing transactions take turns, so an enqueue into a queue no
-- worker waits on sends none. A worker whose claim came back empty registers in
-- claim_waiters, then claims again only once _claim_waiters_settled() found no enqueue
-- holding this queue's lock. So an enqueue either holds the lock before that check (the
-- check fails; the worker claims after the enqueue has committed) or takes it after the
-- registration committed and, reading with a snapshot taken after the lock, sees it.
-- A transaction that reads with an older snapshot (REPEATABLE READ, SERIALIZABLE) might
-- not see a fresh registration, so it always notifies.
CREATE FUNCTION {s}._wake_queue(channel text, queue text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared(hashtext('{s}.claim_waiters'), hashtext(queue));
  IF current_setting('transaction_isolation') <> 'read committed'
     OR EXISTS (SELECT 1 FROM {s}.claim_waiters w
                WHERE w.queue = _wake_queue.queue AND w.expires_at > now()) THEN
    PERFORM pg_notify(channel, queue);
    RETURN true;
  END IF;
  RETURN false;
END
$$;

-- Whether no enqueue into `queues` is in flight (decision 028): each queue's lock tried
-- exclusively for a moment. A try never waits, so it never queues ahead of an enqueue
-- (which takes the lock shared and waits only behind such a moment); on false the worker
-- claims again a little later instead of sleeping on LISTEN.
CREATE FUNCTION {s}._claim_waiters_settled(queues text[]) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
  SELECT coalesce(bool_and(pg_try_advisory_xact_lock(hashtext('{s}.claim_waiters'),
                                                     hashtext(q))), true)
  FROM unnest(queues) AS q
$$;

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
-- when empty; start_within becomes a deadline on the database clock. meta (carrier data
-- such as trace context) is a tree of objects with string leaves, at most 8 deep and 8192
-- bytes as jsonb prints it; it is not part of the request an idempotency key stands for
-- (migration 0012).
-- The fingerprint is the sha256 of the canonical jsonb text of the normalized request
-- (jsonb orders object keys), so key order and whitespace in the request never matter;
-- the fields added with dependencies (migration 0009) join it only when given, so a
-- request fingerprinted before them still matches its replay.
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
    SELECT count({s}._wake_queue('{jobs_channel}', q.queue)) AS n
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
       EXISTS (SELECT 1 FROM {s}.queues p WHERE p.name = q.queue AND p.paused) AS paused,
       coalesce(w.waiting, 0) AS waiting
FROM q LEFT JOIN live l USING (queue) LEFT JOIN running r USING (queue)
LEFT JOIN finished f USING (queue) LEFT JOIN waiting w USING (queue);

-- Pause a queue: workers stop claiming from it (running jobs finish); enqueues still land.
CREATE FUNCTION {s}.pause_queue(queue text, reason text DEFAULT NULL) RETURNS void
LANGUAGE sql VOLATILE AS $$
  INSERT INTO {s}.queues AS q (name, paused, paused_at, pause_reason)
  VALUES (queue, true, now(), reason)
  ON CONFLICT (name) DO UPDATE
  SET paused = true, paused_at = coalesce(q.paused_at, now()), pause_reason = EXCLUDED.pause_reason
$$;

-- Resume a paused queue and wake its workers; returns false when it was not paused.
CREATE FUNCTION {s}.resume_queue(queue text) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
  WITH resumed AS (
    UPDATE {s}.queues q SET paused = false, paused_at = NULL, pause_reason = NULL
    WHERE q.name = resume_queue.queue AND q.paused RETURNING q.name)
  SELECT count(pg_notify('{jobs_channel}', r.name)) > 0 FROM resumed r
$$;

-- Set a queue's limits (NULL: unlimited): at most concurrency_limit of its jobs running at
-- once, at most rate_limit started per rate_period. Every setting is given (a NULL clears
-- it); the pause is kept. Takes effect for claims that start after the commit. Wakes the
-- queue's workers, since a raised limit frees capacity. Returns the queue's row.
CREATE FUNCTION {s}.configure_queue(queue text, concurrency_limit integer DEFAULT NULL,
                                    rate_limit integer DEFAULT NULL,
                                    rate_period interval DEFAULT NULL)
RETURNS {s}.queues
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  r {s}.queues;
BEGIN
  IF queue IS NULL OR length(queue) NOT BETWEEN 1 AND 128 OR queue ~ '[^A-Za-z0-9_.:-]' THEN
    RAISE EXCEPTION USING ERRCODE = 'PB010',
      MESSAGE = 'queue must be 1-128 characters: letters, digits, _ . : -';
  END IF;
  IF configure_queue.concurrency_limit < 1 THEN
    RAISE EXCEPTION USING ERRCODE = 'PB010',
      MESSAGE = 'concurrency_limit must be at least 1 (or null: unlimited)';
  END IF;
  IF configure_queue.rate_limit < 1 THEN
    RAISE EXCEPTION USING ERRCODE = 'PB010',
      MESSAGE = 'rate_limit must be at least 1 (or null: unlimited)';
  END IF;
  IF configure_queue.rate_period <= interval '0' THEN
    RAISE EXCEPTION USING ERRCODE = 'PB010', MESSAGE = 'rate_period must be positive';
  END IF;
  IF configure_queue.rate_limit IS NOT NULL AND configure_queue.rate_period IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'PB010', MESSAGE = 'rate_limit needs a rate_period';
  END IF;
  INSERT INTO {s}.queues AS q (name, concurrency_limit, rate_limit, rate_period)
  VALUES (queue, configure_queue.concurrency_limit, configure_queue.rate_limit,
          configure_queue.rate_period)
  ON CONFLICT (name) DO UPDATE
  SET concurrency_limit = EXCLUDED.concurrency_limit, rate_limit = EXCLUDED.rate_limit,
      rate_period = EXCLUDED.rate_period, updated_at = now()
  RETURNING * INTO r;
  PERFORM pg_notify('{jobs_channel}', queue);
  RETURN r;
END
$$;

-- The claim for queues that need flow control: limited ones (broker.queues), and those
-- holding queued jobs with a concurrency_key. Called by every job_claim (broker/sql/
-- jobs.sql) with the queues it asks for; returns one row with a NULL id for every queue it
-- owns (paused, or needing flow control), which the plain claim then leaves alone, and the
-- jobs it claimed, at most `lim` in all, the worker's queue order first. Each owned queue's
-- claimers take turns on a transaction-level advisory lock (taken for all of them first,
-- in name order, so two claimers never wait on each other crosswise), and every statement
-- after it takes a new snapshot (READ COMMITTED), so it counts the jobs the previous holder
-- claimed: the running count, the starts in the rate window and the running keys are
-- exact. At most one job per key is taken, its key's first in claim order, and none of a
-- key already running (jobs_key_running_idx would refuse a second). Keys are found with a
-- loose scan of jobs_keyed_idx: one probe per distinct key, not one per queued job.
-- The keyed probe ends in OFFSET 0 so it stays one index lookup per queue (as a join or a
-- hashed subplan it would read all of jobs_keyed_idx).
CREATE FUNCTION {s}._claim_flow(p_queues text[], lim integer, worker text, ttl double precision)
RETURNS TABLE (id bigint, lease_epoch bigint, queue text, kind text, args jsonb,
               priority integer, attempts integer, max_attempts integer,
               timeout double precision, meta jsonb)
-- Its statements are planned for their parameters whatever the caller's session asks
-- (the worker's shared connection asks for generic plans: migration 0012, decision 025).
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

-- Planned with its values (plan_cache_mode = auto, migration 0014) even on the worker's
-- shared connection, which asks for generic plans: a generic plan guesses at the batch
-- LIMIT and reads all of broker.jobs instead of walking jobs_finished_idx.
CREATE FUNCTION {s}.prune_jobs(state text, older_than interval, batch integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = auto AS $$
DECLARE
  pruned integer;
BEGIN
  IF state NOT IN ('succeeded', 'failed', 'cancelled') THEN
    RAISE EXCEPTION USING ERRCODE = 'PB002',
      MESSAGE = format('only finished jobs are pruned (succeeded, failed, cancelled), not %L', state);
  END IF;
  IF older_than IS NULL OR older_than < interval '0' OR batch IS NULL OR batch < 1 THEN
    RAISE EXCEPTION USING ERRCODE = 'PB002',
      MESSAGE = 'older_than must not be negative and batch must be at least 1';
  END IF;
  WITH doomed AS (
    SELECT j.id FROM {s}.jobs j
    WHERE j.state = prune_jobs.state AND j.finished_at < now() - older_than
    ORDER BY j.finished_at
    LIMIT batch
    FOR UPDATE SKIP LOCKED
  ), gone AS (
    DELETE FROM {s}.jobs j USING doomed d WHERE j.id = d.id RETURNING j.id
  ), events AS (
    DELETE FROM {s}.job_events e USING gone g WHERE e.job_id = g.id
  ), logs AS (
    DELETE FROM {s}.job_logs l USING gone g WHERE l.job_id = g.id
  )
  SELECT count(*) INTO pruned FROM gone;
  -- Whoever prunes keeps the rollup short (workers every BROKER_PRUNE_INTERVAL, or cron).
  PERFORM {s}.fold_job_counts();
  RETURN pruned;
END
$$;

CREATE VIEW {s}.worker_status AS
SELECT w.worker_id, w.host_id, w.hostname, w.pid, w.seq, w.queues, w.concurrency,
       (SELECT count(*) FROM {s}.jobs j
        WHERE j.lease_expires_at IS NOT NULL AND j.state = 'running'
          AND j.worker_id = w.worker_id) AS running_jobs,
       w.started_at, w.last_seen,
       extract(epoch FROM now() - w.last_seen)::double precision AS seconds_since_seen,
       w.clock_skew_seconds,
       CASE WHEN w.stopped_at IS NOT NULL THEN 'stopped'
            WHEN w.last_seen >= now() - interval '30 seconds' THEN 'alive'
            ELSE 'gone' END AS status
FROM {s}.workers w;

CREATE VIEW {s}.stuck_jobs AS
SELECT id, queue, kind, state, 'lease_expired' AS reason, lease_expires_at AS since,
       worker_id, attempts
FROM {s}.jobs WHERE state = 'running' AND lease_expires_at < now() - interval '10 seconds'
UNION ALL
SELECT id, queue, kind, state, 'cancel_unacknowledged', cancel_requested_at, worker_id, attempts
FROM {s}.jobs
WHERE lease_expires_at IS NOT NULL AND state = 'running'
  AND cancel_requested_at < now() - interval '60 seconds'
UNION ALL
SELECT id, queue, kind, state, 'waiting', run_at, worker_id, attempts
FROM {s}.jobs WHERE state = 'queued' AND run_at < now() - interval '10 minutes';

-- Append the change in finished jobs per (queue, state) made by one statement, and
-- resolve the dependents of jobs that ended (migration 0009): the one trigger function
-- every UPDATE, DELETE and TRUNCATE of broker.jobs goes through (the finish statement,
-- the reaper, cancel_job(), the dependency cascade itself, an operator's own SQL);
-- inserts go through _job_inserted (below), which needs no transition table. Transition
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
  keyed boolean;
  old_ended boolean;
  waited boolean;
  parents boolean;
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    DELETE FROM {s}.job_counts;
    DELETE FROM {s}.job_dependencies;
    RETURN NULL;
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
    -- a key was written, whether a finished job changed state, whether anybody waits, and
    -- whether an edge names a job between the lowest and highest id that ended here (the
    -- range probe for dependents: never so for anyone not using dependencies). A claim or
    -- a heartbeat stops there. Its snapshot is taken after every row of the statement was
    -- written, which the waiters' registration relies on (see below).
    SELECT x.lo, x.hi, x.keyed, x.old_ended, x.waited,
           x.lo IS NOT NULL AND EXISTS (SELECT 1 FROM {s}.job_dependencies d
                                        WHERE d.depends_on BETWEEN x.lo AND x.hi)
    INTO lo, hi, keyed, old_ended, waited, parents
    FROM (SELECT min(n.id) FILTER (WHERE n.state IN ('succeeded', 'failed', 'cancelled')) AS lo,
                 max(n.id) FILTER (WHERE n.state IN ('succeeded', 'failed', 'cancelled')) AS hi,
                 coalesce(bool_or(n.concurrency_key IS NOT NULL), false) AS keyed,
                 EXISTS (SELECT 1 FROM old_rows o
                         WHERE o.state IN ('succeeded', 'failed', 'cancelled')) AS old_ended,
                 EXISTS (SELECT 1 FROM {s}.job_waiters) AS waited
          FROM new_rows n) x;
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
      -- Only when the range probe found an edge: one probe per job that ended.
      IF parents
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
  -- listed once, by the statement that wrote the key (an UPDATE by hand here, an enqueue
  -- in _job_inserted), so no claim can see a keyed job and miss its queue. Once listed, a
  -- keyed write only reads the list (no lock).
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

-- A new job needs the rollup only when it is born finished (superseded, or cancelled for
-- a dependency that failed), and the claim's gate only when it is keyed. A row trigger
-- whose WHEN says so costs a plain insert nothing (the condition is tested as the row is
-- written and queues no trigger event); the statement trigger it replaced ran two queries
-- on every insert, about 15% of a one-job enqueue (migration 0013, decision 024).
CREATE FUNCTION {s}._job_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.state IN ('succeeded', 'failed', 'cancelled') THEN
    INSERT INTO {s}.job_counts (queue, state, n) VALUES (NEW.queue, NEW.state, 1);
  END IF;
  -- Listed by the statement that writes the key, as for an UPDATE (see _count_finished).
  IF NEW.concurrency_key IS NOT NULL
     AND NOT EXISTS (SELECT 1 FROM {s}.keyed_queues k WHERE k.name = NEW.queue) THEN
    INSERT INTO {s}.keyed_queues (name) VALUES (NEW.queue) ON CONFLICT DO NOTHING;
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_insert AFTER INSERT ON {s}.jobs FOR EACH ROW
  WHEN (NEW.state IN ('succeeded', 'failed', 'cancelled') OR NEW.concurrency_key IS NOT NULL)
  EXECUTE FUNCTION {s}._job_inserted();

CREATE TRIGGER jobs_count_update AFTER UPDATE ON {s}.jobs
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION {s}._count_finished();

CREATE TRIGGER jobs_count_delete AFTER DELETE ON {s}.jobs
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {s}._count_finished();

CREATE TRIGGER jobs_count_truncate AFTER TRUNCATE ON {s}.jobs
  FOR EACH STATEMENT EXECUTE FUNCTION {s}._count_finished();


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

-- Fold the delta rows into one per (queue, state). Each delta is deleted by exactly one
-- fold (a concurrent fold skips rows already deleted), so sums stay exact.
CREATE FUNCTION {s}.fold_job_counts() RETURNS void
LANGUAGE sql VOLATILE AS $$
  WITH d AS (DELETE FROM {s}.job_counts RETURNING queue, state, n)
  INSERT INTO {s}.job_counts (queue, state, n)
  SELECT queue, state, sum(n) FROM d GROUP BY 1, 2 HAVING sum(n) <> 0
$$;

-- Rebuild the rollup from the jobs themselves (after TRUNCATE, or to check it): reads
-- every finished job once.
CREATE FUNCTION {s}.recount_jobs() RETURNS void
LANGUAGE sql VOLATILE AS $$
  LOCK TABLE {s}.job_counts IN EXCLUSIVE MODE;
  DELETE FROM {s}.job_counts;
  INSERT INTO {s}.job_counts (queue, state, n)
  SELECT queue, state, count(*) FROM {s}.jobs WHERE state IN ('succeeded', 'failed', 'cancelled') GROUP BY 1, 2;
$$;

-- Where an attempt's outcome sends the job: completion wins over a pending cancel; a
-- requested cancel wins over a retry, a release or a snooze; a failure retries while
-- attempts remain and it is retryable; a snooze requeues while the job may still snooze
-- (`retryable` says so), else fails it. NULL for an unknown outcome (the NOT NULL state
-- refuses it).
CREATE FUNCTION {s}.finish_state(outcome text, retryable boolean,
                                            cancel_requested boolean, attempts integer,
                                            max_attempts integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN outcome = 'complete' THEN 'succeeded'
    WHEN outcome NOT IN ('fail', 'cancel', 'release', 'snooze') THEN NULL
    WHEN outcome = 'cancel' OR cancel_requested THEN 'cancelled'
    WHEN outcome = 'release' THEN 'queued'
    WHEN outcome = 'snooze' THEN CASE WHEN retryable THEN 'queued' ELSE 'failed' END
    WHEN retryable AND attempts < max_attempts THEN 'queued'
    ELSE 'failed'
  END
$$;

-- === Periodic jobs (migration 0008): broker.schedules ===

-- Whether no live worker declares `kind` (workers record the kinds they run in
-- broker.workers.meta->'kinds' at start; live as the worker_status view judges it). The
-- scheduler skips an orphaned schedule's ticks instead of enqueuing jobs nobody runs.
CREATE FUNCTION {s}._schedule_orphaned(kind text) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT NOT EXISTS (
    SELECT 1 FROM {s}.worker_status ws JOIN {s}.workers w ON w.worker_id = ws.worker_id
    WHERE ws.status = 'alive' AND w.meta -> 'kinds' ? kind)
$$;

-- Create or replace a schedule: the one upsert every door goes through. Python doors pass
-- next_run_at (the first tick after database now(), computed with the cron library); SQL
-- callers leave it NULL and the next scheduler pass computes it. A replacement never
-- changes `paused`, keeps next_run_at unless the timing (cron, every, timezone) changed,
-- and clears `error`. A cron expression is only checked for its five fields here; the
-- scheduler parses it and sets `error` on a schedule it cannot run.
CREATE FUNCTION {s}._put_schedule(
  name text, kind text, args jsonb, queue text, priority integer, cron text,
  every double precision, timezone text, backfill integer, paused boolean,
  next_run_at timestamptz, declared_by text
) RETURNS SETOF {s}.schedules
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_variable
DECLARE
  problem text;
BEGIN
  problem := CASE
    WHEN name IS NULL OR length(name) NOT BETWEEN 1 AND 128 OR name ~ '[^A-Za-z0-9_.:-]'
      THEN 'schedule name must be 1-128 characters of letters, digits, _ . : -'
    WHEN kind IS NULL OR length(kind) NOT BETWEEN 1 AND 200 OR kind ~ '[^A-Za-z0-9_.:-]'
      THEN 'kind must be 1-200 characters of letters, digits, _ . : -'
    WHEN queue IS NULL OR length(queue) NOT BETWEEN 1 AND 128 OR queue ~ '[^A-Za-z0-9_.:-]'
      THEN 'queue must be 1-128 characters of letters, digits, _ . : -'
    WHEN args IS NULL OR jsonb_typeof(args) <> 'object' THEN 'args must be a JSON object'
    WHEN priority IS NULL THEN 'priority must be an integer'
    WHEN (cron IS NULL) = (every IS NULL) THEN 'a schedule needs exactly one of cron or every'
    WHEN cron !~ '^\s*\S+(\s+\S+){{4}}\s*$'
      THEN 'cron must have 5 fields (minute hour day-of-month month day-of-week)'
    WHEN NOT (every BETWEEN 1 AND 3155760000)
      THEN 'every must be between 1 and 3155760000 seconds'
    WHEN timezone IS NULL OR NOT EXISTS (SELECT 1 FROM pg_timezone_names z WHERE z.name = timezone)
      THEN format('unknown time zone %L (use an IANA name)', timezone)
    WHEN backfill IS NULL OR backfill NOT BETWEEN 1 AND 1000
      THEN 'backfill must be between 1 and 1000'
  END;
  IF problem IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'PB002', MESSAGE = problem;
  END IF;
  RETURN QUERY
  INSERT INTO {s}.schedules AS sc
    (name, kind, args, queue, priority, cron, every, timezone, backfill, paused, next_run_at,
     declared_by, declared_at)
  VALUES (name, kind, args, queue, priority, cron, every, timezone, backfill,
          coalesce(paused, false), next_run_at, declared_by,
          CASE WHEN declared_by IS NOT NULL THEN now() END)
  ON CONFLICT ON CONSTRAINT schedules_pkey DO UPDATE
  SET kind = excluded.kind, args = excluded.args, queue = excluded.queue,
      priority = excluded.priority, cron = excluded.cron, every = excluded.every,
      timezone = excluded.timezone, backfill = excluded.backfill,
      next_run_at = CASE
        WHEN (sc.cron, sc.every, sc.timezone)
             IS NOT DISTINCT FROM (excluded.cron, excluded.every, excluded.timezone)
          THEN sc.next_run_at
        ELSE excluded.next_run_at END,
      error = NULL, declared_by = excluded.declared_by, declared_at = excluded.declared_at,
      updated_at = now()
  RETURNING sc.*;
END
$$;

-- Create or replace a schedule from SQL: a five-field cron expression (read in
-- `timezone`) or a period. Its first tick is computed by the next scheduler pass (in a
-- worker), which also parses the expression fully and sets `error` if it cannot.
CREATE FUNCTION {s}.create_schedule(
  name text, kind text, cron text DEFAULT NULL, every interval DEFAULT NULL,
  args jsonb DEFAULT '{{}}', queue text DEFAULT 'default', priority integer DEFAULT 0,
  timezone text DEFAULT 'UTC', backfill integer DEFAULT 1, paused boolean DEFAULT false
) RETURNS SETOF {s}.schedules
LANGUAGE sql VOLATILE AS $$
  SELECT * FROM {s}._put_schedule(name, kind, args, queue, priority, cron,
    extract(epoch FROM every)::double precision, timezone, backfill, paused, NULL, NULL)
$$;

-- Stop enqueuing a schedule's ticks (trigger_schedule still works).
CREATE FUNCTION {s}.pause_schedule(name text) RETURNS SETOF {s}.schedules
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  RETURN QUERY UPDATE {s}.schedules sc SET paused = true, updated_at = now()
  WHERE sc.name = pause_schedule.name RETURNING sc.*;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB005',
      MESSAGE = format('schedule %L not found', pause_schedule.name), HINT = pause_schedule.name;
  END IF;
END
$$;

-- Resume a paused schedule from its next tick after now: ticks missed while it was paused
-- are not enqueued (next_run_at NULL: the next scheduler pass computes it).
CREATE FUNCTION {s}.resume_schedule(name text) RETURNS SETOF {s}.schedules
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  RETURN QUERY UPDATE {s}.schedules sc
  SET paused = false, updated_at = now(),
      next_run_at = CASE WHEN sc.paused AND sc.next_run_at <= now() THEN NULL
                         ELSE sc.next_run_at END
  WHERE sc.name = resume_schedule.name RETURNING sc.*;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB005',
      MESSAGE = format('schedule %L not found', resume_schedule.name), HINT = resume_schedule.name;
  END IF;
END
$$;

-- Enqueue a schedule's job now, outside its timing and whether paused or not, with its
-- own idempotency key (schedule:<name>:manual:<uuid>); returns the job id.
CREATE FUNCTION {s}.trigger_schedule(name text) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  sc {s}.schedules;
  job bigint;
BEGIN
  SELECT * INTO sc FROM {s}.schedules s WHERE s.name = trigger_schedule.name FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB005',
      MESSAGE = format('schedule %L not found', trigger_schedule.name), HINT = trigger_schedule.name;
  END IF;
  job := {s}.enqueue(sc.kind, sc.args, queue => sc.queue, priority => sc.priority,
    idempotency_key => format('schedule:%s:manual:%s', sc.name, gen_random_uuid()));
  UPDATE {s}.schedules s SET last_run_at = now(), last_job_id = job WHERE s.name = sc.name;
  RETURN job;
END
$$;

-- Remove a schedule (its jobs stay). A code-declared one is declared again by the next
-- worker that starts with its task.
CREATE FUNCTION {s}.delete_schedule(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  DELETE FROM {s}.schedules sc WHERE sc.name = delete_schedule.name;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'PB005',
      MESSAGE = format('schedule %L not found', delete_schedule.name), HINT = delete_schedule.name;
  END IF;
  RETURN true;
END
$$;

-- Schedules with whether they are orphaned (no live worker declares their kind).
CREATE VIEW {s}.schedule_status AS
SELECT sc.name, sc.kind, sc.args, sc.queue, sc.priority, sc.cron, sc.every, sc.timezone,
       sc.backfill, sc.paused, sc.next_run_at, sc.last_run_at, sc.last_tick, sc.last_job_id,
       sc.error, sc.declared_by, sc.declared_at, sc.created_at, sc.updated_at,
       {s}._schedule_orphaned(sc.kind) AS orphaned
FROM {s}.schedules sc;
