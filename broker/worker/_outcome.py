"""What a handler's run means for its job: the worker executor's pure half (no I/O).

The runtime invokes a handler and hands what came back (a result, or the exception it
raised) to `outcome`, which decides which fenced write ends the attempt: completed,
failed and retried per the task's policy, or failed for good. `stopped` decides the same
for a handler the worker stopped before it returned. Every retry rule of a task
(Snooze, Retry, Fail, timeouts, its max_attempts and retry policy) has its home here. (Statements
themselves run in broker/_executor.py, which is a different thing.)
"""

from __future__ import annotations

import traceback

from broker import lease
from broker import spec as contract
from broker.errors import InvalidJobError
from broker.lease import Failure, Finish
from broker.task import Fail, Retry, Snooze, Task
from broker.types import Lease, StopReason

# Longest error text stored for one attempt; a traceback keeps its end (the raise site).
MAX_ERROR_CHARS = 8000


class TimedOut(Exception):
    """Stands for a handler the worker stopped because it ran past its timeout."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"timed out after {timeout}s")
        self.timeout = timeout


def timeout_for(task: Task, held: Lease) -> float | None:
    """Seconds the handler may run: the job's own timeout, else the task's (None: no limit)."""
    return held.timeout if held.timeout is not None else task.timeout


def outcome(
    task: Task | None,
    held: Lease,
    result: object = None,
    *,
    raised: Exception | None = None,
    worker_id: str,
) -> Finish:
    """The write that ends `held`'s attempt, given the `result` its handler returned or
    the exception it `raised` (TimedOut for a timeout). A returned exception object is a
    result like any other (one JSON cannot hold).

    Snooze asks to run again later without counting the attempt (the task's max_snoozes
    caps it, in the finish statement); Retry asks for another attempt (a task's
    max_attempts caps it); Fail and a result
    the database cannot store fail the job for good; any other exception fails the
    attempt, retried unless the task's policy or its max_attempts says otherwise.
    """
    if task is None:
        return lease.failed(
            held, Failure(f"no task registered for kind {held.kind!r} on worker {worker_id}")
        )
    if isinstance(raised, TimedOut):
        return _failure(task, held, str(raised))
    if isinstance(raised, Snooze):
        return lease.snoozed(held, raised.delay, task.max_snoozes)
    if isinstance(raised, Retry):
        # A task's own max_attempts caps retries it asks for, as it caps failures.
        reason = contract.storable_text(raised.reason)
        failure = Failure(reason, not _capped(task, held), raised.delay, task.max_attempts)
        return lease.failed(held, failure)
    if isinstance(raised, Fail):
        reason = contract.storable_text(str(raised) or "Fail")
        return lease.failed(held, Failure(reason, False, max_attempts=task.max_attempts))
    if raised is not None:
        return _failure(task, held, _describe(raised))
    try:
        contract.encode_json(result, "result")
    except InvalidJobError as exc:
        # The same check the complete write makes, here so that one result the
        # database cannot store fails its own job, not the batch it would be written in.
        return lease.failed(held, Failure(str(exc), False, max_attempts=task.max_attempts))
    return lease.completed(held, result)


def stopped(held: Lease, reason: StopReason | None) -> Finish | None:
    """The write for a handler stopped before it returned; None when the job is no longer
    ours (lease lost, or a cancellation the worker did not ask for)."""
    if reason is StopReason.CANCEL:
        return lease.cancel_acked(held, "cancelled while running")
    if reason is StopReason.SHUTDOWN:
        return lease.released(held)
    return None


def _capped(task: Task, held: Lease) -> bool:
    return task.max_attempts is not None and held.attempt >= task.max_attempts


def _failure(task: Task, held: Lease, error: str) -> Finish:
    """A failed attempt, retried unless the task's policy or its max_attempts forbids it."""
    retryable = task.retry is not False and not _capped(task, held)
    error = contract.storable_text(error)[:MAX_ERROR_CHARS]
    delay = task.retry_delay(held.attempt)
    return lease.failed(held, Failure(error, retryable, delay, task.max_attempts))


def _describe(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    return text if len(text) <= MAX_ERROR_CHARS else text[-MAX_ERROR_CHARS:]
