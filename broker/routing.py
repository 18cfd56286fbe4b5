"""Where a job goes when its enqueuer names no queue, and the warnings when nobody would
run it: one rule for every door (decision 023).

Precedence, first that applies:

1. the queue the enqueuer names (`queue=`, `--queue`, the body's `"queue"`);
2. the queue the task declares (`@task(queue=...)`), if this process imported the task
   (`declared_queue`; only Python callers can, the CLI and the REST API import no task
   code);
3. the queue live workers declare for the kind in the registry (each worker records its
   tasks' queues in broker.workers.meta at start): the one most live workers declare, ties
   broken by name, with a warning when they disagree;
4. `default`.

Step 3 runs inside the enqueue statement (`job_enqueue_routed`), so routing costs no
extra round trip and reads the registry as it is at that moment (nothing is cached). The
same statement says whether a live worker serves the queue each job lands in, and
`placement_warnings` turns that into one line per problem. SQL's `broker.enqueue()` does
not route (changing it needs a migration): SQL callers name the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from broker import spec as contract
from broker.lease import Row, Statement, enqueue_many, enqueue_payload
from broker.spec import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, JobSpec
from broker.task import get_task
from broker.types import Enqueued

log = logging.getLogger("broker.routing")


def declared_queue(kind: str) -> str | None:
    """The queue `kind`'s task declares, if this process registered the task (step 2)."""
    declared = get_task(kind)
    return declared.queue if declared is not None else None


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one job went and what the live workers in the registry say about it."""

    kind: str
    queue: str
    # The enqueuer named no queue (the registry chose, or `default`).
    routed: bool
    # Queues live workers declare for the kind, most declared first.
    declared: tuple[str, ...]
    # A live worker serves the queue / one that runs the kind does.
    queue_served: bool
    kind_served: bool
    # Queues on which live workers run the kind.
    served_on: tuple[str, ...]


def _names(queues: Sequence[str]) -> str:
    return ", ".join(f"'{q}'" for q in queues)


def placement_warnings(p: Placement) -> tuple[str, ...]:
    """One line per reason the job may wait unseen: nobody serves its queue, nobody there
    runs its kind, live workers disagree on the kind's queue."""
    found: list[str] = []
    elsewhere = [q for q in p.served_on if q != p.queue]
    if not p.kind_served:
        where = f" (kind '{p.kind}' is served on {_names(elsewhere)})" if elsewhere else ""
        if not p.queue_served:
            found.append(f"no live worker serves queue '{p.queue}'{where}")
        else:
            found.append(f"no live worker on queue '{p.queue}' runs kind '{p.kind}'{where}")
    if p.routed and len(p.declared) > 1:
        found.append(
            f"live workers declare kind '{p.kind}' on different queues "
            f"({_names(p.declared)}); it went to '{p.queue}'"
        )
    return tuple(found)


def _placement(row: Row) -> Placement:
    return Placement(
        kind=row[3],
        queue=row[4],
        routed=not row[5],
        declared=tuple(row[6]),
        queue_served=bool(row[7]),
        kind_served=bool(row[8]),
        served_on=tuple(row[9]),
    )


def enqueue_routed(
    specs: Sequence[JobSpec],
    unnamed: Sequence[bool],
    idempotency_scope: str | None = None,
) -> Statement[list[Enqueued]]:
    """Enqueue `specs` in one statement (as lease.enqueue_many), choosing the queue of
    each spec flagged in `unnamed` by the live workers' declarations (step 3, else
    `default`); each result carries the placement's warnings. Raises InvalidJobError."""

    def decode(rows: list[Row]) -> list[Enqueued]:
        return [Enqueued(int(r[1]), bool(r[2]), placement_warnings(_placement(r))) for r in rows]

    return Statement(
        "job_enqueue_routed",
        {"specs": enqueue_payload(specs, idempotency_scope, unnamed)},
        decode,
    )


# The parameters of job_enqueue_one.
_ONE_FIELDS = (
    "queue",
    "kind",
    "args",
    "priority",
    "run_at",
    "delay",
    "max_attempts",
    "timeout",
    "tags",
    "group",
    "concurrency_key",
    "deadline",
    "start_within",
    "meta",
    "channel",
)


def enqueue_one(spec: JobSpec, unnamed: bool, channel: str) -> Statement[Enqueued]:
    """Enqueue one job: a plain spec (broker.spec.plain) in the lean job_enqueue_one
    statement, any other through enqueue_many() (routed by the registry when `unnamed`).
    `channel` is the jobs NOTIFY channel. Raises InvalidJobError."""
    if not contract.plain(spec):
        if unnamed:
            return _first(enqueue_routed([spec], [True]))
        return _first(enqueue_many([spec]))
    args = contract.check(spec)
    # The normalised fields as every path sends them (contract.wire), each the statement
    # reads present, None where the spec leaves it out.
    params: dict[str, object] = dict.fromkeys(_ONE_FIELDS)
    params.update(contract.wire(spec))
    params.update(
        queue=spec.queue,
        args=args.decode(),
        max_attempts=DEFAULT_MAX_ATTEMPTS if spec.max_attempts is None else spec.max_attempts,
        meta=msgspec.json.encode(spec.meta).decode() if spec.meta else None,
        channel=channel,
    )

    if not unnamed:
        return Statement("job_enqueue_one", params, lambda rows: Enqueued(int(rows[0][0]), True))

    def decode(rows: list[Row]) -> Enqueued:
        row = rows[0]
        return Enqueued(int(row[1]), True, placement_warnings(_placement(row)))

    return Statement("job_enqueue_one_routed", params, decode)


def _first(stmt: Statement[list[Enqueued]]) -> Statement[Enqueued]:
    return Statement(stmt.query, stmt.params, lambda rows: stmt.decode(rows)[0], stmt.prepare)


def resolve(kind: str, queue: str | None) -> str | None:
    """Steps 1 and 2: the queue named or imported, or None for the registry to choose."""
    return queue if queue is not None else declared_queue(kind)


def fallback(queue: str | None) -> str:
    """The queue a spec carries while the registry has not chosen (`default`)."""
    return DEFAULT_QUEUE if queue is None else queue


def report(enqueued: Sequence[Enqueued]) -> None:
    """Log each routed job's warnings (Python callers see them in their log)."""
    for e in enqueued:
        for line in e.warnings:
            log.warning("job %s: %s", e.id, line)
