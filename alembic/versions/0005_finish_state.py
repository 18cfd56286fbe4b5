"""finish_state(): the one rule for where a lease holder's outcome sends its job.

The fenced finish statement (job_finish_many in broker/sql/jobs.sql) ends every attempt:
complete, fail, cancel acknowledgement and release. Its SET clauses need the next state
in three places (state, run_at, finished_at) and an UPDATE cannot name its target from a
LATERAL item, so the decision is this inlinable function instead of three copies of one
CASE (docs/decisions/010-finish-statement.md).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FUNCTIONS = r"""
-- Where an attempt's outcome sends the job: completion wins over a pending cancel; a
-- requested cancel wins over a retry or a release; a failure retries while attempts
-- remain and it is retryable. NULL for an unknown outcome (the NOT NULL state refuses it).
CREATE FUNCTION {s}.finish_state(outcome text, retryable boolean, cancel_requested boolean,
                                 attempts integer, max_attempts integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN outcome = 'complete' THEN 'succeeded'
    WHEN outcome NOT IN ('fail', 'cancel', 'release') THEN NULL
    WHEN outcome = 'cancel' OR cancel_requested THEN 'cancelled'
    WHEN outcome = 'release' THEN 'queued'
    WHEN retryable AND attempts < max_attempts THEN 'queued'
    ELSE 'failed'
  END
$$;
"""


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def upgrade() -> None:
    op.execute(FUNCTIONS.format(s=_schema()))


def downgrade() -> None:
    op.execute(
        f"DROP FUNCTION {_schema()}.finish_state(text, boolean, boolean, integer, integer)"
    )
