"""The job lease state machine: every transition as one named, batched, fenced statement.

Each function here builds a `Statement` (query name, parameters, row decoder); the sync
and async clients in broker.client only execute them. Reading this module top to bottom
gives the whole lifecycle (docs/state-machine.md draws it):

    enqueue -> queued --claim--> running --complete--> succeeded
                 ^                  |  \\--fail (retryable, attempts left)--> queued
                 |                  |   \\-fail (final) --> failed
                 +--reap/release----+    \\-cancel ack --> cancelled
                 +--snooze----------+
    queued/waiting --expire (deadline passed)--> cancelled

Every write a worker makes after the claim is fenced by (job id, lease epoch) and
`state = 'running'`; a write that matches nothing is rejected and recorded as
`stale_write_rejected`. All times are the database's now(); callers pass durations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec

from broker import spec as contract
from broker.errors import LeaseLost
from broker.spec import MAX_DURATION_SECONDS, UnreadableJSON
from broker.spec import JobSpec as JobSpec  # its home is broker.spec; imported from here too
from broker.types import (
    Enqueued,
    H,
    HeartbeatOutcome,
    Held,
    Job,
    JobEvent,
    JobState,
    Lease,
    LogLine,
    Reaped,
    WriteOutcome,
)

T = TypeVar("T")
Row = tuple[Any, ...]

DEFAULT_REAP_LIMIT = 1000
# Most jobs one bulk cancel or retry acts on (an operator's filtered set, broker UI).
MAX_BULK_JOBS = 1000
# How many times a job may snooze before its next snooze fails it (`@task(max_snoozes=)`).
DEFAULT_MAX_SNOOZES = 100


@dataclass(frozen=True, slots=True)
class Statement(Generic[T]):
    """A named query from broker/sql, its parameters, and how to turn its rows into T."""

    query: str
    params: Mapping[str, Any]
    decode: Callable[[list[Row]], T]
    # None: psycopg prepares the statement after 5 runs (the hot path; its plans hold under
    # generic planning, tests/integration/test_plans.py). False: planned with its values
    # on every run, for optional filters only a custom plan can serve from an index.
    prepare: bool | None = None


# --- enqueue --------------------------------------------------------------------------


def enqueue_many(
    specs: Iterable[JobSpec], idempotency_scope: str | None = None
) -> Statement[list[Enqueued]]:
    """Insert jobs (one statement), append `enqueued` events and NOTIFY once per queue.

    `idempotency_scope` namespaces the specs' idempotency keys (the REST API uses one per
    token): a key is unique within its scope and checked against the key bounds on its own.
    Raises InvalidJobError for a spec outside the contract."""
    return Statement(
        "job_enqueue_many",
        {"specs": enqueue_payload(specs, idempotency_scope)},
        lambda rows: [Enqueued(int(r[1]), bool(r[2])) for r in rows],
    )


def enqueue_payload(
    specs: Iterable[JobSpec],
    idempotency_scope: str | None = None,
    unnamed: Sequence[bool] = (),
) -> str:
    """The specs as the enqueue_many() SQL function reads them (a JSON array), checked.
    A spec whose flag in `unnamed` is true goes without its queue, for the routed enqueue
    (broker.routing) to choose. Raises InvalidJobError for a spec outside the contract."""
    if idempotency_scope is not None:
        contract.check_scope(idempotency_scope)
    fields: list[dict[str, Any]] = []
    for i, spec in enumerate(specs):
        args = contract.check(spec)
        wire = contract.wire(spec)
        wire["args"] = msgspec.Raw(args)  # encoded once, by the check
        if idempotency_scope is not None and spec.idempotency_key is not None:
            wire["idempotency_scope"] = idempotency_scope
        if i < len(unnamed) and unnamed[i]:
            del wire["queue"]
        fields.append(wire)
    return msgspec.json.encode(fields).decode()


# --- claim ----------------------------------------------------------------------------


def claim(queues: Sequence[str], limit: int, worker_id: str, ttl: float) -> Statement[list[Lease]]:
    """Lease up to `limit` runnable jobs: running, attempts+1, epoch+1, expiry now()+ttl."""
    if limit < 1:
        raise ValueError("claim limit must be at least 1")
    if ttl <= 0:
        raise ValueError("lease ttl must be positive")

    def decode(rows: list[Row]) -> list[Lease]:
        return [
            Lease(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], worker_id, r[9] or {})
            for r in rows
        ]

    # A queue named twice would be scanned twice and fill the LIMIT with the same rows.
    unique = list(dict.fromkeys(queues))
    # One queue needs no share of the LIMIT per queue (decision 027).
    return Statement(
        "job_claim" if len(unique) <= 1 else "job_claim_many",
        {"queues": unique, "limit": limit, "worker_id": worker_id, "ttl": ttl},
        decode,
    )


def split_unreadable(leases: Sequence[Lease]) -> tuple[list[Lease], list[tuple[Lease, Failure]]]:
    """Claimed leases a handler can run, and failures (final) for those whose args this
    process could not decode, so one such row fails only its own job."""
    runnable: list[Lease] = []
    unreadable: list[tuple[Lease, Failure]] = []
    for held in leases:
        if isinstance(held.args, UnreadableJSON):
            why = f"args cannot be decoded: {held.args['unreadable']}; not retried"
            unreadable.append((held, Failure(why, retryable=False)))
        else:
            runnable.append(held)
    return runnable, unreadable


# --- fenced writes by the lease holder --------------------------------------------------


def _outcomes(leases: Sequence[Held]) -> Callable[[list[Row]], list[WriteOutcome]]:
    """Decode (id, new state) rows of the writes that applied; every other lease was lost."""

    def decode(rows: list[Row]) -> list[WriteOutcome]:
        applied: dict[int, JobState] = {r[0]: r[1] for r in rows}
        return [
            WriteOutcome(
                lease.job_id, lease.epoch, lease.job_id in applied, applied.get(lease.job_id)
            )
            for lease in leases
        ]

    return decode


def _fence(leases: Sequence[Held]) -> dict[str, Any]:
    if len({lease.job_id for lease in leases}) != len(leases):
        raise ValueError("one write per job per batch")
    return {
        "ids": [lease.job_id for lease in leases],
        "epochs": [lease.epoch for lease in leases],
        "worker_id": leases[0].worker_id if leases else None,
    }


def heartbeat(leases: Sequence[H], ttl: float) -> Statement[HeartbeatOutcome[H]]:
    """Extend every lease still held to now()+ttl; report lost ones and requested cancels."""
    by_id = {lease.job_id: lease for lease in leases}

    def decode(rows: list[Row]) -> HeartbeatOutcome[H]:
        applied = {r[0] for r in rows}
        extended = [lease for lease in leases if lease.job_id in applied]
        lost = [lease for lease in leases if lease.job_id not in applied]
        cancel = [by_id[r[0]] for r in rows if r[2]]
        return HeartbeatOutcome(extended, lost, cancel)

    return Statement("job_heartbeat_many", {**_fence(leases), "ttl": ttl}, decode)


def heartbeat_unwritten(leases: Sequence[H], ttl: float) -> Statement[None]:
    """Extend the leases of finished handlers whose outcome is not written yet, skipping
    rows locked right now (never waits; reports nothing: the write's answer does)."""
    fence = _fence(leases)
    params = {"ids": fence["ids"], "epochs": fence["epochs"], "ttl": ttl}
    return Statement("job_heartbeat_unwritten", params, lambda rows: None)


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an attempt failed. `retryable=False` fails the job now; `delay` overrides backoff;
    `max_attempts` (a task's own cap) lowers the job's max_attempts to it, so the job shows
    the cap that applies (`attempts 4 of 4`, not `4 of 20`)."""

    error: str
    retryable: bool = True
    delay: float | None = None
    max_attempts: int | None = None


# How a lease holder ends an attempt. Each is one row of the fenced finish statement
# (query job_finish_many), which decides the job's next state once for all of them.


@dataclass(frozen=True, slots=True)
class Completed:
    """The handler returned `result` (JSON): the job succeeds."""

    lease: Held
    result: Any = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The attempt failed: retried after backoff while attempts remain, else `failed`."""

    lease: Held
    failure: Failure


@dataclass(frozen=True, slots=True)
class CancelAcked:
    """The worker stopped the handler of a job whose cancel was requested: `cancelled`."""

    lease: Held
    reason: str


@dataclass(frozen=True, slots=True)
class Released:
    """The worker hands the lease back unfinished (shutdown): queued again at once, the
    attempt not counted, other workers woken."""

    lease: Held


@dataclass(frozen=True, slots=True)
class Snoozed:
    """The handler asked to run again after `delay` seconds: queued with run_at = now() +
    delay, the attempt not counted, `snoozes` + 1; once the job has snoozed `max_snoozes`
    times it fails instead."""

    lease: Held
    delay: float
    max_snoozes: int = DEFAULT_MAX_SNOOZES


Finish = Completed | Failed | CancelAcked | Released | Snoozed


def completed(held: Held, result: Any = None) -> Completed:
    """A successful attempt with its result."""
    return Completed(held, result)


def failed(held: Held, failure: Failure) -> Failed:
    """A failed attempt."""
    return Failed(held, failure)


def cancel_acked(held: Held, reason: str) -> CancelAcked:
    """A handler stopped because its cancel was requested."""
    return CancelAcked(held, reason)


def released(held: Held) -> Released:
    """A lease handed back unfinished."""
    return Released(held)


def snoozed(held: Held, delay: float, max_snoozes: int = DEFAULT_MAX_SNOOZES) -> Snoozed:
    """A handler that asked to be run again after `delay` seconds, its attempt uncounted."""
    return Snoozed(held, delay, max_snoozes)


def _retry_delay(delay: float | None) -> float | None:
    """A delay the database can add to now(): NaN means the default backoff, and the rest
    is clamped to [0, 100 years], so one odd handler value cannot fail a whole batch."""
    if delay is None or math.isnan(delay):
        return None
    return min(max(float(delay), 0.0), float(MAX_DURATION_SECONDS))


def _result_json(result: Any) -> str:
    return "null" if result is None else contract.encode_json(result, "result").decode()


def _ending(row: Finish) -> tuple[str, str | None, bool | None, float | None, int | None]:
    """(outcome, error, retryable, delay, cap) of a row other than a completion; the cap
    is a snooze's max_snoozes, or a failure's max_attempts."""
    match row:
        case Failed(failure=f):
            contract.check_text(f.error, "error")
            return "fail", f.error, f.retryable, _retry_delay(f.delay), f.max_attempts
        case CancelAcked(reason=reason):
            contract.check_text(reason, "reason")
            return "cancel", reason, None, None, None
        case Released():
            return "release", None, None, None, None
        case Snoozed(delay=delay, max_snoozes=cap):
            why = f"snoozed {cap} times (max_snoozes); not snoozed again"
            return "snooze", why, None, _retry_delay(delay) or 0.0, max(int(cap), 0)
    raise TypeError(f"not a finish row: {row!r}")


def finish(rows: Sequence[Finish], channel: str) -> Statement[list[WriteOutcome]]:
    """End attempts (completed, failed, cancel_acked, released, snoozed) in one fenced statement,
    under each caller's epoch only; `channel` wakes workers for jobs runnable at once.

    Completions, the common row, send only (id, epoch, result): the other rows go first
    and the outcome columns cover only them, so unnest() pads them with NULL for the
    completions after (job_finish_many reads a NULL outcome as complete). Four mostly-NULL
    arrays of a full batch cost 8% of the statement (decision 010)."""
    others = [row for row in rows if type(row) is not Completed]
    completions = [row for row in rows if type(row) is Completed]
    endings = [_ending(row) for row in others]
    ordered = [*others, *completions]
    params: dict[str, Any] = {
        **_fence([row.lease for row in ordered]),
        "channel": channel,
        "results": ["null"] * len(others) + [_result_json(row.result) for row in completions],
        "outcomes": [e[0] for e in endings],
        "errors": [e[1] for e in endings],
        "retryable": [e[2] for e in endings],
        "delays": [e[3] for e in endings],
        "caps": [e[4] for e in endings],
    }
    return Statement("job_finish_many", params, _outcomes([row.lease for row in rows]))


def append_logs(lines: Sequence[tuple[Held, str]]) -> Statement[int]:
    """Store handler log lines; lines from a lost lease are dropped. Returns lines stored."""
    for _, line in lines:
        contract.check_text(line, "log line")
    return Statement(
        "log_append_many",
        {
            "job_ids": [lease.job_id for lease, _ in lines],
            "epochs": [lease.epoch for lease, _ in lines],
            "lines": [line for _, line in lines],
        },
        len,
    )


# --- transitions not made by the lease holder -------------------------------------------


def reap(limit: int = DEFAULT_REAP_LIMIT) -> Statement[list[Reaped]]:
    """Return expired leases (database clock): queued with backoff, failed, or cancelled."""
    return Statement("job_reap", {"limit": limit}, lambda rows: [Reaped(r[0], r[1]) for r in rows])


def expire(limit: int = DEFAULT_REAP_LIMIT) -> Statement[list[Reaped]]:
    """Cancel queued and waiting jobs past their deadline (database clock), event `expired`."""
    return Statement(
        "job_expire", {"limit": limit}, lambda rows: [Reaped(r[0], r[1]) for r in rows]
    )


def cancel(job_id: int) -> Statement[str]:
    """Cancel a queued job now, or request cancellation of a running one (NOTIFY)."""
    return Statement("job_cancel", {"id": job_id}, lambda rows: str(rows[0][1]))


def retry(job_id: int) -> Statement[str]:
    """Queue a failed or cancelled job again, runnable now."""
    return Statement("job_retry", {"id": job_id}, lambda rows: str(rows[0][1]))


def cancel_many(job_ids: Sequence[int]) -> Statement[list[tuple[int, str]]]:
    """cancel_job for each of `job_ids` still queued, waiting or running, in one statement;
    (id, new state) for each job it acted on. A job another transaction holds locked (a
    claim or a finish under way) is skipped, not waited for. Raises ValueError for more
    than MAX_BULK_JOBS ids."""
    return Statement("job_cancel_many", _bulk(job_ids), _id_states, prepare=False)


def retry_many(job_ids: Sequence[int]) -> Statement[list[tuple[int, str]]]:
    """retry_job for each of `job_ids` still failed or cancelled, in one statement, but
    none whose dependency is failed or cancelled (retry_job refuses those); (id, new
    state) for each job it acted on; locked jobs are skipped. Raises ValueError for more
    than MAX_BULK_JOBS ids."""
    return Statement("job_retry_many", _bulk(job_ids), _id_states, prepare=False)


# Bulk statements are rare and operator-driven: planned with the ids and current
# statistics every time (prepare=False), so a plan cached while few jobs had failed cannot
# walk a large failed history later.
def _bulk(job_ids: Sequence[int]) -> dict[str, Any]:
    ids = sorted({int(i) for i in job_ids})
    if len(ids) > MAX_BULK_JOBS:
        raise ValueError(f"a bulk action takes at most {MAX_BULK_JOBS} jobs, got {len(ids)}")
    return {"ids": ids, "limit": MAX_BULK_JOBS}


def _id_states(rows: list[Row]) -> list[tuple[int, str]]:
    return [(int(r[0]), str(r[1])) for r in rows]


# --- reads ------------------------------------------------------------------------------


def get_jobs(ids: Sequence[int]) -> Statement[list[Job]]:
    """Fetch jobs by id (missing ids are left out)."""
    return Statement("job_get", {"ids": list(ids)}, lambda rows: [Job(*r) for r in rows])


def finished_among(ids: Sequence[int]) -> Statement[set[int]]:
    """Which of `ids` are in a terminal state (the waiters' sweep, broker.waiting)."""
    return Statement("job_finished_among", {"ids": list(ids)}, lambda rows: {r[0] for r in rows})


def wait_register(ids: Sequence[int], seconds: float) -> Statement[list[int]]:
    """Register waits for `ids` lasting `seconds` (broker.waiting); the registrations' ids."""
    return Statement(
        "job_wait_register",
        {"ids": list(ids), "seconds": seconds},
        lambda rows: [r[0] for r in rows],
    )


def wait_unregister(registrations: Sequence[int]) -> Statement[None]:
    """End the registrations `wait_register` returned."""
    return Statement("job_wait_unregister", {"ids": list(registrations)}, lambda rows: None)


@dataclass(frozen=True, slots=True)
class Settled:
    """What a registered waiter reads of its jobs (job_wait_settled)."""

    missing: frozenset[int]  # no such job (deleted)
    locked: frozenset[int]  # an update is in flight: read again when it is done
    ended: frozenset[int]  # terminal


def wait_settled(ids: Sequence[int]) -> Statement[Settled]:
    """Read `ids` as a registered waiter must: a job whose row is locked for an update
    counts as locked, not as its last committed state (see job_wait_settled)."""

    def decode(rows: list[tuple[Any, ...]]) -> Settled:
        return Settled(
            missing=frozenset(r[0] for r in rows if not r[1]),
            locked=frozenset(r[0] for r in rows if r[2]),
            ended=frozenset(r[0] for r in rows if r[3]),
        )

    return Statement("job_wait_settled", {"ids": list(ids)}, decode)


def events(job_id: int, after: int = 0, limit: int = 1000) -> Statement[list[JobEvent]]:
    """A job's events with id > after, oldest first."""
    return Statement(
        "events_for_job",
        {"job_id": job_id, "after": after, "limit": limit},
        lambda rows: [JobEvent(*r) for r in rows],
    )


def logs(job_id: int, after: int = 0, limit: int = 1000) -> Statement[list[LogLine]]:
    """A job's log lines with id > after, oldest first."""
    return Statement(
        "logs_for_job",
        {"job_id": job_id, "after": after, "limit": limit},
        lambda rows: [LogLine(*r) for r in rows],
    )


def db_clock() -> Statement[datetime]:
    """The database's wall clock (clock_timestamp())."""
    return Statement("db_clock", {}, lambda rows: rows[0][1])


def raise_if_lost(outcomes: Sequence[WriteOutcome], write: str) -> None:
    """Raise LeaseLost for the first outcome that did not apply."""
    for outcome in outcomes:
        if not outcome.applied:
            raise LeaseLost(outcome.job_id, outcome.epoch, write)
