"""The worker executor's decisions: what a handler's result or exception means for its job, with
no database and no event loop (broker.worker._outcome)."""

from __future__ import annotations

from typing import Any

import pytest

from broker import lease
from broker.lease import Failure
from broker.task import Fail, Retry, Task
from broker.types import Lease, StopReason
from broker.worker import _outcome
from broker.worker._outcome import (
    MAX_ERROR_CHARS,
    TimedOut,
    outcome,
    stopped,
    timeout_for,
)

WORKER = "host:1"


def held(attempt: int = 1, timeout: float | None = None, kind: str = "k") -> Lease:
    return Lease(7, 3, "default", kind, {}, 0, attempt, 5, timeout, WORKER)


def make_task(**policy: Any) -> Task:
    return Task(kind="k", fn=lambda: None, **policy)


def failure(finish: lease.Finish) -> Failure:
    assert isinstance(finish, lease.Failed)
    return finish.failure


def test_a_result_completes_the_job() -> None:
    job = held()
    assert outcome(make_task(), job, {"ok": [1, 2]}, worker_id=WORKER) == lease.completed(
        job, {"ok": [1, 2]}
    )
    assert outcome(make_task(), job, worker_id=WORKER) == lease.completed(job, None)


def test_a_result_json_cannot_hold_fails_the_job_for_good() -> None:
    for result in (object(), ValueError("returned, not raised"), "a\x00b", "\ud800"):
        got = failure(outcome(make_task(), held(), result, worker_id=WORKER))
        assert got.retryable is False
        assert "result" in got.error


def test_an_unknown_kind_fails_naming_the_worker() -> None:
    got = failure(outcome(None, held(kind="nope"), worker_id=WORKER))
    assert got.error == f"no task registered for kind 'nope' on worker {WORKER}"
    assert got.retryable is True
    assert got.delay is None


def test_an_exception_fails_the_attempt_with_its_traceback_and_is_retried() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        raised = exc
    got = failure(outcome(make_task(), held(), raised=raised, worker_id=WORKER))
    assert got.retryable is True
    assert got.delay is None
    assert "Traceback" in got.error and got.error.rstrip().endswith("RuntimeError: boom")


def test_a_long_traceback_keeps_its_end() -> None:
    got = failure(
        outcome(make_task(), held(), raised=ValueError("x" * 20000 + "END"), worker_id=WORKER)
    )
    assert len(got.error) == MAX_ERROR_CHARS
    assert got.error.rstrip().endswith("END")


def test_retry_policy_false_makes_the_first_failure_final() -> None:
    got = failure(outcome(make_task(retry=False), held(), raised=ValueError(), worker_id=WORKER))
    assert got.retryable is False


def test_a_callable_retry_policy_sets_the_delay_from_the_attempt() -> None:
    task = make_task(retry=lambda attempt: attempt * 10)
    got = failure(outcome(task, held(attempt=3), raised=ValueError(), worker_id=WORKER))
    assert got.retryable is True
    assert got.delay == 30.0


@pytest.mark.parametrize(("attempt", "retryable"), [(1, True), (2, False), (3, False)])
def test_the_tasks_max_attempts_caps_failures(attempt: int, retryable: bool) -> None:
    task = make_task(max_attempts=2)
    got = failure(outcome(task, held(attempt=attempt), raised=KeyError(), worker_id=WORKER))
    assert got.retryable is retryable
    # The job takes the task's cap, so it shows the one that ends it.
    assert got.max_attempts == 2


@pytest.mark.parametrize(("attempt", "retryable"), [(1, True), (2, False)])
def test_retry_asks_for_another_attempt_within_the_tasks_max_attempts(
    attempt: int, retryable: bool
) -> None:
    task = make_task(max_attempts=2, retry=False)
    job = held(attempt=attempt)
    got = outcome(task, job, raised=Retry(delay=4.5, reason="later"), worker_id=WORKER)
    # Retry is the handler's own request: the retry=False policy does not apply to it.
    assert got == lease.failed(job, Failure("later", retryable, 4.5, max_attempts=2))


def test_retry_without_a_delay_leaves_the_backoff_to_the_database() -> None:
    got = failure(outcome(make_task(), held(), raised=Retry(), worker_id=WORKER))
    assert got == Failure("retry requested", True, None)


def test_fail_ends_the_job_with_its_message() -> None:
    assert failure(outcome(make_task(), held(), raised=Fail("bad input"), worker_id=WORKER)) == (
        Failure("bad input", retryable=False)
    )
    assert failure(outcome(make_task(), held(), raised=Fail(), worker_id=WORKER)).error == "Fail"


def test_text_the_database_cannot_store_is_made_storable() -> None:
    got = failure(outcome(make_task(), held(), raised=Fail("a\x00b"), worker_id=WORKER))
    assert "\x00" not in got.error


def test_a_timeout_is_a_retryable_failure_under_the_tasks_policy() -> None:
    got = failure(outcome(make_task(), held(), raised=TimedOut(2.5), worker_id=WORKER))
    assert got == Failure("timed out after 2.5s", True, None)
    capped = make_task(max_attempts=1)
    assert failure(outcome(capped, held(), raised=TimedOut(1), worker_id=WORKER)).retryable is False


def test_the_jobs_timeout_wins_over_the_tasks() -> None:
    assert timeout_for(make_task(timeout=9.0), held(timeout=2.0)) == 2.0
    assert timeout_for(make_task(timeout=9.0), held()) == 9.0
    assert timeout_for(make_task(), held()) is None


def test_a_stopped_handler_acks_a_cancel_releases_at_shutdown_and_drops_a_lost_lease() -> None:
    job = held()
    assert stopped(job, StopReason.CANCEL) == lease.cancel_acked(job, "cancelled while running")
    assert stopped(job, StopReason.SHUTDOWN) == lease.released(job)
    assert stopped(job, StopReason.LOST) is None
    # A cancellation the worker did not ask for: someone else owns the job now.
    assert stopped(job, None) is None
    assert stopped(job, StopReason.TIMEOUT) is None


def test_the_decisions_do_no_io() -> None:
    # Its imports are the decision's inputs and outputs only.
    assert not {"asyncio", "psycopg"} & set(vars(_outcome))


def test_snooze_asks_for_a_later_run_capped_by_the_task() -> None:
    from broker.task import Snooze

    job = held()
    assert outcome(make_task(), job, raised=Snooze(30), worker_id=WORKER) == lease.snoozed(
        job, 30, lease.DEFAULT_MAX_SNOOZES
    )
    capped = outcome(make_task(max_snoozes=3), job, raised=Snooze(0.5), worker_id=WORKER)
    assert capped == lease.Snoozed(job, 0.5, 3)


def test_snooze_rows_encode_delay_and_cap() -> None:
    other = Lease(8, 1, "default", "k", {}, 0, 1, 5, None, WORKER)
    stmt = lease.finish([lease.completed(held()), lease.snoozed(other, -5, 2)], "ch")
    # A snooze row goes first; a negative delay is clamped to now.
    assert stmt.params["outcomes"] == ["snooze"] and stmt.params["caps"] == [2]
    assert stmt.params["delays"] == [0.0]
