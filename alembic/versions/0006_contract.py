"""One enqueue contract: _parse_specs enforces the bounds of broker.spec at the SQL door.

Every bound a job spec has at the Python, REST and CLI doors (broker/spec.py) now holds
for SQL callers of broker.enqueue() / enqueue_many() too: priority within the integer
range, max_attempts at most 1000, idempotency and subject keys of 1-200 printable ASCII
characters, at most 32 tags of 1-64 characters without control characters, args nested
at most 64 deep, and run_at a day inside the calendar's ends (it stopped at 9999-12-31
00:00 before). A spec may carry an idempotency_scope, which namespaces its key (stored as
scope || ':' || key; the REST API scopes keys per token), so the key bound is the same
for every caller. The rules the table's CHECK constraints hold (names, args an object,
max_attempts >= 1, timeout > 0) are left to them, so a hand-written INSERT meets them too.

The values below are this revision's; tests/unit/test_contract.py checks they equal
broker.spec's, and tests/integration/test_five_doors.py that every door agrees.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DEFAULT_MAX_ATTEMPTS = 20
MAX_ATTEMPTS_LIMIT = 1000
MAX_DURATION_SECONDS = 3_155_760_000
KEY_MAX_LENGTH = 200
SCOPE_MAX_LENGTH = 64
TAG_MAX_LENGTH = 64
MAX_TAGS = 32
MAX_JSON_DEPTH = 64
RUN_AT_MIN = "0001-01-02T00:00:00+00:00"
RUN_AT_MAX = "9999-12-30T23:59:59.999999+00:00"

# Rendered with str.format: `{s}` is the schema, literal braces are doubled.
#
# Each spec's first broken rule becomes `problem`, computed once per spec (OFFSET 0 keeps
# the subquery from being folded into every column that reads it), and the `ord` column
# raises it; every column that could itself fail on a bad value (casts, intervals) is
# computed only when there is no problem. The jsonpath finds a container at nesting level
# MAX_JSON_DEPTH, i.e. MAX_JSON_DEPTH + 1 deep counting args itself (level 0).
PARSE_SPECS = r"""
CREATE OR REPLACE FUNCTION {s}._parse_specs(specs jsonb)
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
              THEN coalesce(v.max_attempts, {default_max_attempts})::integer END,
         CASE WHEN v.problem IS NULL THEN make_interval(secs => v.timeout) END,
         CASE WHEN v.idempotency_scope IS NOT NULL
                THEN v.idempotency_scope || ':' || v.idempotency_key
              ELSE v.idempotency_key END,
         CASE WHEN v.problem IS NULL AND v.idempotency_key IS NOT NULL THEN
           encode(sha256(convert_to(jsonb_build_object(
             'kind', v.kind, 'args', coalesce(v.args, '{{}}'), 'queue', coalesce(v.queue, 'default'),
             'priority', coalesce(v.priority, 0)::integer,
             'run_at', extract(epoch FROM v.run_at), 'delay', v.delay,
             'max_attempts', coalesce(v.max_attempts, {default_max_attempts})::integer,
             'timeout', v.timeout, 'subject_key', v.subject_key,
             'tags', to_jsonb(coalesce(v.tags, '{{}}'::text[])))::text, 'UTF8')), 'hex')
         END,
         v.subject_key,
         coalesce(v.tags, '{{}}'::text[])
  FROM (
    SELECT r.*, CASE
        WHEN r.run_at IS NOT NULL AND r.delay IS NOT NULL THEN 'give run_at or delay, not both'
        WHEN r.delay < 0 THEN 'delay must not be negative'
        WHEN NOT (r.delay <= {max_seconds})
          THEN 'delay must be at most {max_seconds} seconds (100 years)'
        WHEN NOT isfinite(r.run_at) OR r.run_at < '{run_at_min}' OR r.run_at > '{run_at_max}'
          THEN 'run_at must be between {run_at_min} and {run_at_max}'
        WHEN NOT (r.timeout <= {max_seconds})
          THEN 'timeout must be at most {max_seconds} seconds (100 years)'
        WHEN r.priority <> trunc(r.priority) THEN 'priority must be an integer'
        WHEN r.priority NOT BETWEEN -2147483648 AND 2147483647
          THEN 'priority must be between -2147483648 and 2147483647'
        WHEN r.max_attempts <> trunc(r.max_attempts) THEN 'max_attempts must be an integer'
        -- Below 1 (down to the integer range) is the jobs_max_attempts_check constraint's.
        WHEN r.max_attempts NOT BETWEEN -2147483648 AND {max_attempts}
          THEN 'max_attempts must be between 1 and {max_attempts}'
        WHEN length(r.idempotency_key) NOT BETWEEN 1 AND {key_max}
             OR r.idempotency_key ~ '[^\x21-\x7e]'
          THEN 'idempotency_key must be 1-{key_max} printable ASCII characters without spaces'
        WHEN r.idempotency_scope IS NOT NULL
             AND (length(r.idempotency_scope) NOT BETWEEN 1 AND {scope_max}
                  OR r.idempotency_scope ~ '[^A-Za-z0-9_.-]')
          THEN 'idempotency_scope must be 1-{scope_max} letters, digits, _ . -'
        WHEN length(r.subject_key) NOT BETWEEN 1 AND {key_max} OR r.subject_key ~ '[^\x21-\x7e]'
          THEN 'subject_key must be 1-{key_max} printable ASCII characters without spaces'
        WHEN cardinality(r.tags) > {max_tags} THEN 'tags must be at most {max_tags}'
        WHEN cardinality(r.tags) > 0 AND EXISTS (
               SELECT 1 FROM unnest(r.tags) t
               WHERE t IS NULL OR length(t) NOT BETWEEN 1 AND {tag_max} OR t ~ '[\x01-\x1f\x7f]')
          THEN 'each tag must be 1-{tag_max} characters without control characters'
        WHEN jsonb_path_exists(r.args,
               'strict $.**{{{depth}}} ? (@.type() == "object" || @.type() == "array")')
          THEN 'args must nest at most {depth} deep'
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
"""

# 0001's definition, restored on downgrade.
OLD_PARSE_SPECS = r"""
CREATE OR REPLACE FUNCTION {s}._parse_specs(specs jsonb)
RETURNS TABLE (ord bigint, queue text, kind text, args jsonb, priority integer,
               run_at timestamptz, max_attempts integer, timeout interval,
               idempotency_key text, fingerprint text, subject_key text, tags text[])
LANGUAGE sql VOLATILE AS $$
  SELECT r.ord,
         coalesce(r.queue, 'default'),
         r.kind,
         coalesce(r.args, '{{}}'::jsonb),
         coalesce(r.priority, 0),
         CASE WHEN r.run_at IS NOT NULL AND r.delay IS NOT NULL
                THEN {s}._reject(format('job %s: give run_at or delay, not both', r.ord))::timestamptz
              WHEN r.delay < 0 THEN {s}._reject(format('job %s: delay must not be negative', r.ord))::timestamptz
              WHEN NOT (r.delay <= {max_seconds})
                THEN {s}._reject(format('job %s: delay must be at most {max_seconds} seconds (100 years)', r.ord))::timestamptz
              WHEN NOT isfinite(r.run_at) OR r.run_at NOT BETWEEN '0001-01-01' AND '9999-12-31'
                THEN {s}._reject(format('job %s: run_at must be a date between years 1 and 9999', r.ord))::timestamptz
              WHEN r.delay IS NOT NULL THEN now() + make_interval(secs => r.delay)
              ELSE coalesce(r.run_at, now()) END,
         coalesce(r.max_attempts, {default_max_attempts}),
         CASE WHEN r.timeout IS NULL OR r.timeout <= {max_seconds} THEN make_interval(secs => r.timeout)
              ELSE {s}._reject(format('job %s: timeout must be at most {max_seconds} seconds', r.ord))::interval END,
         r.idempotency_key,
         CASE WHEN r.idempotency_key IS NOT NULL THEN
           encode(sha256(convert_to(jsonb_build_object(
             'kind', r.kind, 'args', coalesce(r.args, '{{}}'), 'queue', coalesce(r.queue, 'default'),
             'priority', coalesce(r.priority, 0),
             'run_at', extract(epoch FROM r.run_at), 'delay', r.delay,
             'max_attempts', coalesce(r.max_attempts, {default_max_attempts}),
             'timeout', r.timeout, 'subject_key', r.subject_key,
             'tags', to_jsonb(coalesce(r.tags, '{{}}'::text[])))::text, 'UTF8')), 'hex')
         END,
         r.subject_key,
         coalesce(r.tags, '{{}}'::text[])
  FROM ROWS FROM (jsonb_to_recordset(specs) AS (
         queue text, kind text, args jsonb, priority integer, run_at timestamptz,
         delay double precision, max_attempts integer, timeout double precision,
         idempotency_key text, subject_key text, tags text[]))
       WITH ORDINALITY AS r(queue, kind, args, priority, run_at, delay, max_attempts, timeout,
                            idempotency_key, subject_key, tags, ord)
$$;
"""


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def upgrade() -> None:
    op.execute(
        PARSE_SPECS.format(
            s=_schema(),
            default_max_attempts=DEFAULT_MAX_ATTEMPTS,
            max_attempts=MAX_ATTEMPTS_LIMIT,
            max_seconds=MAX_DURATION_SECONDS,
            key_max=KEY_MAX_LENGTH,
            scope_max=SCOPE_MAX_LENGTH,
            tag_max=TAG_MAX_LENGTH,
            max_tags=MAX_TAGS,
            depth=MAX_JSON_DEPTH,
            run_at_min=RUN_AT_MIN,
            run_at_max=RUN_AT_MAX,
        )
    )


def downgrade() -> None:
    op.execute(
        OLD_PARSE_SPECS.format(
            s=_schema(),
            default_max_attempts=DEFAULT_MAX_ATTEMPTS,
            max_seconds=MAX_DURATION_SECONDS,
        )
    )
