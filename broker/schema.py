"""SQLAlchemy Core definitions of the broker's tables: the source Alembic migrations must match.

Nothing here runs at request time; runtime SQL lives in broker/sql/*.sql.
"""

from __future__ import annotations

import os

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Double,
    Identity,
    Index,
    Integer,
    Interval,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TIMESTAMP, UUID

from broker.config import DEFAULT_SCHEMA, validate_schema
from broker.spec import DEFAULT_MAX_ATTEMPTS, GROUP_MAX_LENGTH, KEY_MAX_LENGTH
from broker.types import JOB_STATES as JOB_STATES  # its home is broker.types
from broker.types import TERMINAL_STATES as TERMINAL_STATES

EVENT_KINDS = (
    "enqueued",
    "claimed",
    "succeeded",
    "attempt_failed",
    "failed",
    "lease_expired",
    "cancel_requested",
    "cancelled",
    "superseded",
    "retried",
    "stale_write_rejected",
    "released",
    "snoozed",
    "expired",
    "dependency_failed",
)


def _tstz() -> TIMESTAMP:
    return TIMESTAMP(timezone=True)


def _states_check(column: str, values: tuple[str, ...], name: str) -> CheckConstraint:
    listed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} in ({listed})", name=name)


def build_metadata(schema: str = DEFAULT_SCHEMA) -> MetaData:
    """Return fresh table definitions living in `schema`."""
    validate_schema(schema)
    md = MetaData(schema=schema)

    Table(
        "jobs",
        md,
        Column("id", BigInteger, Identity(always=False), primary_key=True),
        Column("queue", Text, nullable=False, server_default=text("'default'")),
        Column("kind", Text, nullable=False),
        Column("args", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        Column("priority", Integer, nullable=False, server_default=text("0")),
        Column("state", Text, nullable=False, server_default=text("'queued'")),
        Column("run_at", _tstz(), nullable=False, server_default=text("now()")),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column(
            "max_attempts",
            Integer,
            nullable=False,
            server_default=text(str(DEFAULT_MAX_ATTEMPTS)),
        ),
        Column("lease_epoch", BigInteger, nullable=False, server_default=text("0")),
        Column("lease_expires_at", _tstz()),
        Column("worker_id", Text),
        Column("idempotency_key", Text),
        Column("idempotency_fingerprint", Text),
        Column("subject_key", Text),
        Column("result", JSONB),
        Column("last_error", Text),
        Column("tags", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
        Column("created_at", _tstz(), nullable=False, server_default=text("now()")),
        Column("started_at", _tstz()),
        Column("finished_at", _tstz()),
        Column("cancel_requested_at", _tstz()),
        Column("timeout", Interval),
        # Scheduling and flow control (migration 0007).
        Column("group", Text),
        Column("concurrency_key", Text),
        Column("deadline", _tstz()),
        Column("snoozes", Integer, nullable=False, server_default=text("0")),
        # Carrier data for the run, such as trace context (migration 0012, broker.tracing).
        Column("meta", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        _states_check("state", JOB_STATES, "jobs_state_check"),
        CheckConstraint("max_attempts >= 1", name="jobs_max_attempts_check"),
        CheckConstraint("attempts >= 0", name="jobs_attempts_check"),
        CheckConstraint("snoozes >= 0", name="jobs_snoozes_check"),
        CheckConstraint(
            "length(kind) BETWEEN 1 AND 200 AND kind !~ '[^A-Za-z0-9_.:-]'",
            name="jobs_kind_check",
        ),
        CheckConstraint(
            "length(queue) BETWEEN 1 AND 128 AND queue !~ '[^A-Za-z0-9_.:-]'",
            name="jobs_queue_check",
        ),
        CheckConstraint("jsonb_typeof(args) = 'object'", name="jobs_args_check"),
        CheckConstraint("jsonb_typeof(meta) = 'object'", name="jobs_meta_check"),
        # The bounds of broker.spec, for every path in (migration 0009).
        CheckConstraint(
            f"""length("group") BETWEEN 1 AND {GROUP_MAX_LENGTH}"""
            """ AND "group" !~ '[^A-Za-z0-9_.:-]'""",
            name="jobs_group_check",
        ),
        CheckConstraint(
            f"length(concurrency_key) BETWEEN 1 AND {KEY_MAX_LENGTH}"
            r" AND concurrency_key !~ '[^\x21-\x7e]'",
            name="jobs_concurrency_key_check",
        ),
        CheckConstraint("timeout > interval '0'", name="jobs_timeout_check"),
        # A running job holds a lease and nothing else does (jobs_lease_idx relies on it).
        CheckConstraint(
            "(state = 'running') = (lease_expires_at IS NOT NULL)", name="jobs_lease_check"
        ),
        # The claim query walks this index in claim order and stops at the LIMIT.
        Index(
            "jobs_claim_idx",
            "queue",
            text("priority DESC"),
            "run_at",
            "id",
            postgresql_where=text("state = 'queued'"),
        ),
        # The reaper walks expired leases in order (migration 0003). Keyed and filtered on
        # lease_expires_at, which no fenced write mentions: an index whose predicate a
        # write's `state = 'running'` implied would let the planner scan all running rows
        # (dead entries included) instead of looking each row up by primary key.
        Index(
            "jobs_lease_idx",
            "lease_expires_at",
            postgresql_where=text("lease_expires_at IS NOT NULL"),
        ),
        Index(
            "jobs_idempotency_key_idx",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # Retention: finished jobs oldest first, per state (migration 0002).
        Index(
            "jobs_finished_idx",
            "state",
            "finished_at",
            postgresql_where=text("state IN ('succeeded', 'failed', 'cancelled')"),
        ),
        Index(
            "jobs_subject_idx",
            "kind",
            "subject_key",
            postgresql_where=text("subject_key IS NOT NULL AND state = 'queued'"),
        ),
        # Counting waiting jobs per queue (queue_stats) reads only waiting rows (0009).
        Index("jobs_waiting_idx", "queue", postgresql_where=text("state = 'waiting'")),
        # A group's counts per state (GET /v1/groups/{group}) without a table scan (0009).
        Index("jobs_group_idx", "group", "state", postgresql_where=text('"group" IS NOT NULL')),
        # Flow control (migration 0010). Keyed queued jobs in claim order per key, for
        # _claim_flow's loose scan of the keys.
        Index(
            "jobs_keyed_idx",
            "queue",
            "concurrency_key",
            text("priority DESC"),
            "run_at",
            "id",
            postgresql_where=text("state = 'queued' AND concurrency_key IS NOT NULL"),
        ),
        # At most one running job per (queue, concurrency_key), whatever races.
        Index(
            "jobs_key_running_idx",
            "queue",
            "concurrency_key",
            unique=True,
            postgresql_where=text("lease_expires_at IS NOT NULL AND concurrency_key IS NOT NULL"),
        ),
        # The reaper expires jobs not started by their deadline.
        Index(
            "jobs_deadline_idx",
            "deadline",
            postgresql_where=text("deadline IS NOT NULL AND state IN ('queued', 'waiting')"),
        ),
    )

    # Which jobs wait for which (migration 0009): one row per (job, dependency), kept for
    # the job's life. No foreign keys, like job_events: an FK would add a check to every
    # delete of a job; the enqueue checks that each dependency exists (and locks it), and
    # the jobs trigger deletes a deleted job's own edges. The parent index is the one the
    # trigger probes for every job that ends.
    Table(
        "job_dependencies",
        md,
        Column("job_id", BigInteger, nullable=False),
        Column("depends_on", BigInteger, nullable=False),
        PrimaryKeyConstraint("job_id", "depends_on", name="job_dependencies_pkey"),
        CheckConstraint("job_id <> depends_on", name="job_dependencies_self_check"),
        Index("job_dependencies_parent_idx", "depends_on", "job_id"),
    )

    Table(
        "job_events",
        md,
        Column("id", BigInteger, Identity(always=False), primary_key=True),
        Column("job_id", BigInteger, nullable=False),
        Column("event", Text, nullable=False),
        Column("epoch", BigInteger),
        Column("worker_id", Text),
        Column("at", _tstz(), nullable=False, server_default=text("now()")),
        Column("detail", JSONB),
        Index("job_events_job_idx", "job_id", "id"),
    )

    Table(
        "job_logs",
        md,
        Column("id", BigInteger, Identity(always=False), primary_key=True),
        Column("job_id", BigInteger, nullable=False),
        Column("epoch", BigInteger, nullable=False),
        Column("at", _tstz(), nullable=False, server_default=text("now()")),
        Column("line", Text, nullable=False),
        Index("job_logs_job_idx", "job_id", "id"),
    )

    # Finished jobs per (queue, state) as delta rows: appended by statement triggers on
    # jobs, folded by prune_jobs() (migration 0004). No key: writers never share a row.
    Table(
        "job_counts",
        md,
        Column("queue", Text, nullable=False),
        Column("state", Text, nullable=False),
        Column("n", BigInteger, nullable=False),
    )

    # Configured queues: limits (NULL: unlimited) and the pause (migration 0010).
    Table(
        "queues",
        md,
        Column("name", Text, primary_key=True),
        Column("concurrency_limit", Integer),
        Column("rate_limit", Integer),
        Column("rate_period", Interval),
        Column("paused", Boolean, nullable=False, server_default=text("false")),
        Column("paused_at", _tstz()),
        Column("pause_reason", Text),
        Column("updated_at", _tstz(), nullable=False, server_default=text("now()")),
        CheckConstraint("concurrency_limit >= 1", name="queues_concurrency_limit_check"),
        CheckConstraint("rate_limit >= 1", name="queues_rate_limit_check"),
        CheckConstraint(
            "rate_period > interval '0' AND (rate_limit IS NULL OR rate_period IS NOT NULL)",
            name="queues_rate_period_check",
        ),
    )

    # Recent starts of rate-limited queues, written and trimmed by the claim under the
    # queue's lock (_claim_flow). No key: rows are only counted and deleted by range.
    Table(
        "queue_starts",
        md,
        Column("queue", Text, nullable=False),
        Column("started_at", _tstz(), nullable=False),
        Index("queue_starts_idx", "queue", "started_at"),
    )

    # Queues that have held a job with a concurrency_key (migration 0012), listed by the
    # jobs trigger in the inserting transaction: with broker.queues, the claim's gate
    # before _claim_flow(). Never trimmed (decision 014).
    Table("keyed_queues", md, Column("name", Text, primary_key=True))

    # Who waits for which job (migration 0012): registered by broker.waiting before it
    # reads the job, so the jobs trigger notifies only these ids, and nothing while nobody
    # waits. Unlogged (a crash ends every wait anyway); a row expires after its wait.
    Table(
        "job_waiters",
        md,
        Column("id", BigInteger, Identity(always=False), primary_key=True),
        Column("job_id", BigInteger, nullable=False),
        Column("expires_at", _tstz(), nullable=False),
        Index("job_waiters_job_idx", "job_id"),
        prefixes=["UNLOGGED"],
    )

    # Workers waiting for jobs of a queue (migration 0015): a worker whose claim came back
    # empty registers here before it sleeps on LISTEN, and an enqueue notifies a queue
    # only while a registration for it is live (_wake_queue(); decision 028). A row lives
    # until expires_at unless its worker refreshes it; a killed worker's rows run out.
    Table(
        "claim_waiters",
        md,
        Column("queue", Text, primary_key=True),
        Column("worker_id", Text, primary_key=True),
        Column("expires_at", _tstz(), nullable=False),
    )

    # Periodic jobs (migration 0008): what to enqueue and when; next_run_at in database
    # time, NULL until a scheduler pass computes it (a schedule created from SQL).
    Table(
        "schedules",
        md,
        Column("name", Text, primary_key=True),
        Column("kind", Text, nullable=False),
        Column("args", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        Column("queue", Text, nullable=False, server_default=text("'default'")),
        Column("priority", Integer, nullable=False, server_default=text("0")),
        Column("cron", Text),
        Column("every", Double),
        Column("timezone", Text, nullable=False, server_default=text("'UTC'")),
        Column("backfill", Integer, nullable=False, server_default=text("1")),
        Column("paused", Boolean, nullable=False, server_default=text("false")),
        Column("next_run_at", _tstz()),
        Column("last_run_at", _tstz()),
        Column("last_tick", _tstz()),
        Column("last_job_id", BigInteger),
        Column("error", Text),
        Column("declared_by", Text),
        Column("declared_at", _tstz()),
        Column("created_at", _tstz(), nullable=False, server_default=text("now()")),
        Column("updated_at", _tstz(), nullable=False, server_default=text("now()")),
        CheckConstraint(
            "length(name) BETWEEN 1 AND 128 AND name !~ '[^A-Za-z0-9_.:-]'",
            name="schedules_name_check",
        ),
        CheckConstraint(
            "length(kind) BETWEEN 1 AND 200 AND kind !~ '[^A-Za-z0-9_.:-]'",
            name="schedules_kind_check",
        ),
        CheckConstraint(
            "length(queue) BETWEEN 1 AND 128 AND queue !~ '[^A-Za-z0-9_.:-]'",
            name="schedules_queue_check",
        ),
        CheckConstraint("jsonb_typeof(args) = 'object'", name="schedules_args_check"),
        CheckConstraint("(cron IS NULL) <> (every IS NULL)", name="schedules_timing_check"),
        CheckConstraint("every >= 1", name="schedules_every_check"),
        CheckConstraint(r"cron ~ '^\s*\S+(\s+\S+){4}\s*$'", name="schedules_cron_check"),
        CheckConstraint("backfill BETWEEN 1 AND 1000", name="schedules_backfill_check"),
        # The scheduler's wake-up reads min(next_run_at) of the schedules that can fire.
        Index(
            "schedules_due_idx",
            "next_run_at",
            postgresql_where=text("NOT paused AND error IS NULL"),
        ),
    )

    Table(
        "workers",
        md,
        Column("worker_id", Text, primary_key=True),
        Column("host_id", UUID(as_uuid=True), nullable=False),
        Column("seq", Integer, nullable=False),
        Column("hostname", Text, nullable=False),
        Column("pid", Integer, nullable=False),
        Column("queues", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
        Column("concurrency", Integer, nullable=False, server_default=text("1")),
        Column("version", Text),
        Column("started_at", _tstz(), nullable=False, server_default=text("now()")),
        Column("last_seen", _tstz(), nullable=False, server_default=text("now()")),
        Column("stopped_at", _tstz()),
        Column("clock_skew_seconds", Double),
        Column("meta", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    )
    return md


metadata = build_metadata(os.environ.get("BROKER_SCHEMA") or DEFAULT_SCHEMA)
