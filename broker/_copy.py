"""The COPY enqueue path: large plain batches as binary COPY of jobs and events rows.

Batches at least COPY_MIN_BATCH big, with no idempotency or subject keys and no
dependencies, skip the enqueue_many() SQL function: about 1.5x the rows per second, at
the price of four round trips (docs/decisions/003-enqueue-function.md). The sequence
(reserve ids and read the database's now(), COPY the jobs, COPY their `enqueued` events,
NOTIFY the queues with a job runnable now) is written once, as a generator of steps that
broker._executor runs on a sync or an async connection. A start_within becomes a deadline
on that same now().
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
COPY_JOB_TYPES = [
    "int8",
    "text",
    "text",
    "jsonb",
    "int4",
    "timestamptz",
    "int4",
    "interval",
    "text[]",
    "text",
    "text",
    "timestamptz",
    "jsonb",
]
COPY_EVENT_TYPES = ["int8", "text"]


def copy_eligible(specs: Sequence[JobSpec]) -> bool:
    """Whether the COPY path may enqueue `specs` (it skips idempotency and supersede, and
    leaves dependencies to enqueue_many(), which locks and checks them)."""
    return len(specs) >= COPY_MIN_BATCH and all(contract.plain(s) for s in specs)


@dataclass(frozen=True, slots=True)
class CopyPlan:
    """Rows for the COPY enqueue path, and the queues whose workers to wake."""

    job_rows: list[tuple[Any, ...]]
    event_rows: list[tuple[int, str]]
    notify_queues: list[str]


def copy_plan(specs: Sequence[JobSpec], ids: Sequence[int], db_now: datetime) -> CopyPlan:
    """Lay out `specs` as jobs rows with reserved `ids`. Delays are added to the database's
    now() (`db_now`), never to the host clock."""
    from psycopg.types.json import Jsonb

    no_meta = Jsonb(b"{}", dumps=_encoded)
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
                Jsonb(args, dumps=_encoded),
                spec.priority,
                run_at,
                spec.max_attempts if spec.max_attempts is not None else DEFAULT_MAX_ATTEMPTS,
                timedelta(seconds=timeout) if timeout is not None else None,
                list(spec.tags),
                spec.group,
                spec.concurrency_key,
                deadline,
                Jsonb(msgspec.json.encode(spec.meta), dumps=_encoded) if spec.meta else no_meta,
            )
        )
    return CopyPlan(job_rows, [(i, "enqueued") for i in ids], sorted(runnable))


def _encoded(data: bytes) -> bytes:
    """A Jsonb dumps() for JSON already encoded (args by check(), meta here)."""
    return data


def reserve(n: int) -> Statement[tuple[datetime, list[int]]]:
    """Reserve `n` job ids (so the events rows can name their jobs) and read the
    transaction's now(), the instant a column default would use. `copy_enqueue` does it
    first, unless given ids reserved earlier (broker.django reserves at enqueue and copies
    at a Django commit, so the id is known before the job exists)."""

    def decode(rows: list[Row]) -> tuple[datetime, list[int]]:
        return rows[0][0], [int(r[1]) for r in rows]

    return Statement("job_copy_reserve", {"n": n}, decode)


def _notify(channel: str, queues: list[str]) -> Statement[None]:
    return Statement("job_notify_queues", {"channel": channel, "queues": queues}, lambda rows: None)


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
    yield Copy("job_copy_events", COPY_EVENT_TYPES, plan.event_rows)
    if plan.notify_queues:
        yield _notify(channel, plan.notify_queues)
    return [Enqueued(i, True) for i in ids]
