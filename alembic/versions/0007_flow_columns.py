"""The jobs columns scheduling and flow control need, and the `waiting` state.

Added in one step, before the features that use them, so each of those (dependencies,
queue limits, deadlines, snooze) changes functions only:
- "group" (text): names a set of jobs (GET /v1/groups/{group}).
- concurrency_key (text): at most one running job per (queue, concurrency_key).
- deadline (timestamptz): a job not started by then ends cancelled (event `expired`).
- snoozes (integer): how many times a handler snoozed the job (capped).
- state `waiting`: a job whose dependencies have not all succeeded.

Adding nullable columns and a column with a constant default rewrites nothing (PG 11+).
The state check is replaced NOT VALID, then validated, so the check of existing rows does
not block writers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

STATES = "'waiting', 'queued', 'running', 'succeeded', 'failed', 'cancelled'"
OLD_STATES = "'queued', 'running', 'succeeded', 'failed', 'cancelled'"


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def _state_check(s: str, states: str) -> None:
    op.execute(f"ALTER TABLE {s}.jobs DROP CONSTRAINT jobs_state_check")
    op.execute(
        f"ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_state_check CHECK (state in ({states}))"
        " NOT VALID"
    )
    op.execute(f"ALTER TABLE {s}.jobs VALIDATE CONSTRAINT jobs_state_check")


def upgrade() -> None:
    s = _schema()
    op.execute(
        f'ALTER TABLE {s}.jobs ADD COLUMN "group" text, ADD COLUMN concurrency_key text,'
        " ADD COLUMN deadline timestamptz,"
        " ADD COLUMN snoozes integer NOT NULL DEFAULT 0"
        " CONSTRAINT jobs_snoozes_check CHECK (snoozes >= 0)"
    )
    _state_check(s, STATES)


def downgrade() -> None:
    s = _schema()
    _state_check(s, OLD_STATES)
    op.execute(
        f'ALTER TABLE {s}.jobs DROP COLUMN "group", DROP COLUMN concurrency_key,'
        " DROP COLUMN deadline, DROP COLUMN snoozes"
    )
