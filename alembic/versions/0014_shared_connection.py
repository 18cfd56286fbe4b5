"""prune_jobs() plans its statements with its values again, whatever the session asks for.

A worker process now runs its claims, outcome writes, reaper and pruner on one shared
connection (broker/worker/_conn.py, decision 0XX), and that connection asks for generic
plans for the prepared claim (plan_cache_mode = force_generic_plan, decision 014). Every
plpgsql function run there inherits the setting. For prune_jobs() a generic plan cannot
know the batch LIMIT, guesses a tenth of the table and reads broker.jobs whole (a
sequential or full primary-key scan, tests/integration/test_plans.py) where the plan with
its values walks jobs_finished_idx; so the function carries plan_cache_mode = auto, as
_claim_flow() does, and runs as it did on the reaper's own connection before. The other
functions the shared connection reaches (the jobs trigger, _resolve_dependents(),
enqueue_many()) plan no differently under generic plans; the same test checks that.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

PRUNE_JOBS = "prune_jobs(text, interval, integer)"


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def upgrade() -> None:
    op.execute(f"ALTER FUNCTION {_schema()}.{PRUNE_JOBS} SET plan_cache_mode = auto")


def downgrade() -> None:
    op.execute(f"ALTER FUNCTION {_schema()}.{PRUNE_JOBS} RESET plan_cache_mode")
