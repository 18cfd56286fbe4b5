"""History-proof plans: running jobs are indexed by lease expiry, never by a state predicate.

jobs_running_idx `(id) WHERE state = 'running'` let the planner read "every running job"
from a small partial index and hash-join the fenced writes' unnest() against it. Once the
index fills with dead entries (every job passes through running), that scan costs more
with every finished job kept: 5 million retained jobs made the drain 10-18x slower
(docs/decisions/009-history-proof-plans.md). The replacement is keyed and filtered on
lease_expires_at, which no fenced write mentions, so those writes can only find their rows
through the primary key; the reaper gets an ordered range scan of expired leases.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The views that counted running jobs by `state = 'running'` read them through the lease
# index instead (a running job always holds a lease: jobs_lease_check).
VIEWS = r"""
CREATE OR REPLACE VIEW {s}.worker_status AS
SELECT w.worker_id, w.host_id, w.hostname, w.pid, w.seq, w.queues, w.concurrency,
       (SELECT count(*) FROM {s}.jobs j
        WHERE j.lease_expires_at IS NOT NULL AND j.state = 'running'
          AND j.worker_id = w.worker_id) AS running_jobs,
       w.started_at, w.last_seen,
       extract(epoch FROM now() - w.last_seen)::double precision AS seconds_since_seen,
       w.clock_skew_seconds,
       CASE WHEN w.stopped_at IS NOT NULL THEN 'stopped'
            WHEN w.last_seen >= now() - interval '{gone_after}' THEN 'alive'
            ELSE 'gone' END AS status
FROM {s}.workers w;

CREATE OR REPLACE VIEW {s}.stuck_jobs AS
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
"""

# 0002's definitions, restored on downgrade.
OLD_VIEWS = r"""
CREATE OR REPLACE VIEW {s}.worker_status AS
SELECT w.worker_id, w.host_id, w.hostname, w.pid, w.seq, w.queues, w.concurrency,
       (SELECT count(*) FROM {s}.jobs j
        WHERE j.state = 'running' AND j.worker_id = w.worker_id) AS running_jobs,
       w.started_at, w.last_seen,
       extract(epoch FROM now() - w.last_seen)::double precision AS seconds_since_seen,
       w.clock_skew_seconds,
       CASE WHEN w.stopped_at IS NOT NULL THEN 'stopped'
            WHEN w.last_seen >= now() - interval '{gone_after}' THEN 'alive'
            ELSE 'gone' END AS status
FROM {s}.workers w;

CREATE OR REPLACE VIEW {s}.stuck_jobs AS
SELECT id, queue, kind, state, 'lease_expired' AS reason, lease_expires_at AS since,
       worker_id, attempts
FROM {s}.jobs WHERE state = 'running' AND lease_expires_at < now() - interval '10 seconds'
UNION ALL
SELECT id, queue, kind, state, 'cancel_unacknowledged', cancel_requested_at, worker_id, attempts
FROM {s}.jobs WHERE state = 'running' AND cancel_requested_at < now() - interval '60 seconds'
UNION ALL
SELECT id, queue, kind, state, 'waiting', run_at, worker_id, attempts
FROM {s}.jobs WHERE state = 'queued' AND run_at < now() - interval '10 minutes';
"""

WORKER_GONE_AFTER = "30 seconds"  # as in 0002


def _schema() -> str:
    schema = op.get_context().version_table_schema
    assert schema, "env.py always sets version_table_schema"
    return schema


def upgrade() -> None:
    s = _schema()
    # A running job holds a lease and nothing else does; the lease index relies on it.
    # NOT VALID, then VALIDATE: the check of existing rows does not block writers.
    op.execute(
        f"ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_lease_check"
        " CHECK ((state = 'running') = (lease_expires_at IS NOT NULL)) NOT VALID"
    )
    op.execute(f"ALTER TABLE {s}.jobs VALIDATE CONSTRAINT jobs_lease_check")
    op.execute(VIEWS.format(s=s, gone_after=WORKER_GONE_AFTER))
    # CONCURRENTLY: building the index reads the whole table (the history too); a plain
    # CREATE INDEX would block every enqueue and claim for that long.
    with op.get_context().autocommit_block():
        op.create_index(
            "jobs_lease_idx",
            "jobs",
            ["lease_expires_at"],
            schema=s,
            postgresql_where="lease_expires_at IS NOT NULL",
            postgresql_concurrently=True,
        )
        op.drop_index("jobs_running_idx", "jobs", schema=s, postgresql_concurrently=True)


def downgrade() -> None:
    s = _schema()
    op.create_index(
        "jobs_running_idx", "jobs", ["id"], schema=s, postgresql_where="state = 'running'"
    )
    op.execute(OLD_VIEWS.format(s=s, gone_after=WORKER_GONE_AFTER))
    op.drop_index("jobs_lease_idx", "jobs", schema=s)
    op.execute(f"ALTER TABLE {s}.jobs DROP CONSTRAINT jobs_lease_check")
