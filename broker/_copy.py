"""The COPY enqueue path: large plain batches as a binary COPY of jobs rows.

Batches at least COPY_MIN_BATCH big, with no idempotency or subject keys and no
dependencies, skip the enqueue_many() SQL function: about 1.5x the rows per second, at
the price of three round trips (docs/decisions/003-enqueue-function.md). The sequence
(reserve ids and read the database's now(), COPY the jobs, then one statement for their
`enqueued` events and the NOTIFY of the queues with a job runnable now) is written once,
as a generator of steps that broker._executor runs on a sync or an async connection. A
start_within becomes a deadline on that same now().
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from broker import spec as contract
from broker._executor import Copy, Steps
from broker.lease import Row, Statement
from broker.spec import DEFAULT_MAX_ATTEMPTS, JobSpec
from broker.types import Enqueued

COPY_MIN_BATCH = 500
# Binary COPY hands each field's bytes to the column type's receive function, whatever
# the client calls them: a jsonb field is a version byte (1) and the JSON text, which the
# rows carry ready-made as bytes (args come encoded from check()), so no value is
# wrapped or dumped per row.
JSONB_BINARY = b"\x01"
COPY_JOB_TYPES = [
    "int8",
    "text",
    "text",
    "bytea",  # args: jsonb in binary, see JSONB_BINARY
    "int4",
    "timestamptz",
    "int4",
    "interval",
    "text[]",
    "text",
    "text",
    "timestamptz",
    "bytea",  # meta: jsonb in binary
]


def copy_eligible(specs: Sequence[JobSpec]) -> bool:
    """Whether the COPY path may enqueue `specs` (it skips idempotency and supersede, and
    leaves dependencies to enqueue_many(), which locks and checks them)."""
    return len(specs) >= COPY_MIN_BATCH and all(contract.plain(s) for s in specs)


@dataclass(frozen=True, slots=True)
class CopyPlan:
    """Rows for the COPY enqueue path, and the queues whose workers to wake."""

    job_rows: list[tuple[Any, ...]]
    notify_queues: list[str]


def copy_plan(specs: Sequence[JobSpec], ids: Sequence[int], db_now: datetime) -> CopyPlan:
    """Lay out `specs` as jobs rows with reserved `ids`. Delays are added to the database's
    now() (`db_now`), never to the host clock."""
    no_meta = JSONB_BINARY + b"{}"
    job_rows: list[tuple[Any, ...]] = []
    runnable: set[str] = set()
    for spec, job_id in zip(specs, ids, strict=True):
        args = contract.check(spec)  # the same checks as the enqueue_many() path
        delay = contract.seconds(spec.delay, "delay")
        run_at = spec.run_at or (db_now + timedelta(seconds=delay) if delay else db_now)
        if run_at <= db_now:
            runnable.add(spec.queue)
        timeout = contract.seconds(spec.timeout, "timeout")
        start_within = contract.seconds(spec.start_within, "start_within")
        deadline = (
            contract.utc(spec.deadline, "deadline")
            if spec.deadline is not None
            else db_now + timedelta(seconds=start_within)
            if start_within is not None
            else None
        )
        job_rows.append(
            (
                job_id,
                spec.queue,
                spec.kind,
                JSONB_BINARY + args,
                spec.priority,
                run_at,
                spec.max_attempts if spec.max_attempts is not None else DEFAULT_MAX_ATTEMPTS,
                timedelta(seconds=timeout) if timeout is not None else None,
                list(spec.tags),
                spec.group,
                spec.concurrency_key,
                deadline,
                JSONB_BINARY + msgspec.json.encode(spec.meta) if spec.meta else no_meta,
            )
        )
    return CopyPlan(job_rows, sorted(runnable))


def reserve(n: int) -> Statement[tuple[datetime, list[int]]]:
    """Reserve `n` job ids (so the events rows can name their jobs) and read the
    transaction's now(), the instant a column default would use. `copy_enqueue` does it
    first, unless given ids reserved earlier (broker.django reserves at enqueue and copies
    at a Django commit, so the id is known before the job exists)."""

    def decode(rows: list[Row]) -> tuple[datetime, list[int]]:
        return rows[0][0], [int(r[1]) for r in rows]

    return Statement("job_copy_reserve", {"n": n}, decode)


def _events(ids: list[int], channel: str, queues: list[str]) -> Statement[None]:
    params = {"ids": ids, "channel": channel, "queues": queues}
    return Statement("job_copy_events", params, lambda rows: None)


def copy_enqueue(
    specs: Sequence[JobSpec],
    channel: str,
    reserved: tuple[datetime, Sequence[int]] | None = None,
) -> Steps[list[Enqueued]]:
    """The COPY enqueue of `specs`, step by step; run it inside one transaction. `reserved`
    is (now, ids) from an earlier `reserve`, else ids are reserved first. Raises
    InvalidJobError (from the spec checks) before anything is written."""
    db_now, ids = reserved if reserved is not None else (yield reserve(len(specs)))
    plan = copy_plan(specs, ids, db_now)
    yield Copy("job_copy_jobs", COPY_JOB_TYPES, plan.job_rows)
    yield _events(list(ids), channel, plan.notify_queues)
    return [Enqueued(i, True) for i in ids]
