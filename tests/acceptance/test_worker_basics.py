"""Worker processes end to end: handler outcomes, parallelism, identity, graceful shutdown."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from worker_harness import (
    WorkerProcess,
    create_runs_table,
    query,
    scalar,
    states,
    wait_for,
)

from broker import Broker, JobSpec


@pytest.fixture
def runs(db_url: str) -> str:
    create_runs_table(db_url)
    return db_url


def registered_ids(url: str) -> list[tuple[str, int, bool]]:
    return [
        (r[0], r[1], r[2] is None)
        for r in query(url, "SELECT worker_id, pid, stopped_at FROM broker.workers ORDER BY 1")
    ]


def test_handler_outcomes(runs: str, broker: Broker, tmp_path: Path) -> None:
    ids = [
        e.id
        for e in broker.enqueue_many(
            [
                JobSpec("sleep", {"seconds": 0}),
                JobSpec("log_lines", {"n": 3}),
                JobSpec("fail_final"),
                JobSpec("retry_soon"),
                JobSpec("boom"),
                JobSpec("no_such_kind", max_attempts=1),
                JobSpec("capped"),
            ]
        )
    ]
    with WorkerProcess(runs, tmp_path) as worker:
        wait_for(
            lambda: not {"queued", "running"} & set(states(runs)),
            30,
            "all jobs to end",
            diagnose=worker.output,
        )
        assert worker.stop() == 0
    jobs = {j.id: j for j in (broker.get_job(i) for i in ids)}
    sleep, logs, final, retried, boom, unknown, capped = (jobs[i] for i in ids)
    assert sleep.state == "succeeded" and sleep.result["slept"] == 0
    assert logs.state == "succeeded" and logs.result == 3
    assert [line.line for line in broker.logs(logs.id)] == ["line 0", "line 1", "line 2"]
    assert (final.state, final.attempts, final.last_error) == ("failed", 1, "not retryable")
    assert (retried.state, retried.attempts) == ("succeeded", 2)
    assert retried.result == "ok on attempt 2"
    assert "attempt_failed" in [e.event for e in broker.events(retried.id)]
    assert (boom.state, boom.attempts) == ("failed", 1)
    assert boom.last_error is not None and "RuntimeError: boom" in boom.last_error
    assert unknown.state == "failed"
    assert unknown.last_error is not None and "no task registered" in unknown.last_error
    # The task's own cap (2) ended it, and the job shows that cap, not the default 20.
    assert (capped.state, capped.attempts, capped.max_attempts) == ("failed", 2, 2)
    [retry_at] = [
        e.detail["retry_at"] for e in broker.events(capped.id) if e.event == "attempt_failed"
    ]
    assert retry_at is not None


def test_fifty_one_second_jobs_run_in_parallel(runs: str, broker: Broker, tmp_path: Path) -> None:
    broker.enqueue_many([JobSpec("sleep", {"seconds": 1.0}) for _ in range(50)])
    with WorkerProcess(runs, tmp_path, ["--concurrency", "50"]) as worker:
        wait_for(
            lambda: states(runs) == {"succeeded": 50},
            60,
            "50 jobs to succeed",
            diagnose=lambda: f"{states(runs)}\n{worker.output()}",
        )
        worker.stop()
    # Measured on the worker side: first handler start to last handler finish.
    wall = scalar(runs, "SELECT extract(epoch FROM max(finished) - min(started)) FROM test_runs")
    assert scalar(runs, "SELECT count(*) FROM test_runs WHERE outcome = 'done'") == 50
    assert wall < 5.0, f"50 x 1 s jobs took {wall:.2f} s of wall time"


def test_restart_keeps_worker_id(runs: str, tmp_path: Path) -> None:
    with WorkerProcess(runs, tmp_path) as first:
        wait_for(lambda: registered_ids(runs), 30, "registration", diagnose=first.output)
        [(worker_id, pid, live)] = registered_ids(runs)
        assert (pid, live) == (first.pid, True)
        assert first.stop() == 0
    [(_, _, live)] = registered_ids(runs)
    assert not live
    with WorkerProcess(runs, tmp_path) as second:
        wait_for(
            lambda: registered_ids(runs) == [(worker_id, second.pid, True)],
            30,
            "re-registration",
            diagnose=second.output,
        )
        assert second.stop() == 0
    assert worker_id.startswith((tmp_path / "host_id").read_text().strip() + ":")
    assert worker_id.endswith(":1")


def test_second_process_with_the_same_id_refuses_to_start(runs: str, tmp_path: Path) -> None:
    with WorkerProcess(runs, tmp_path) as first:
        wait_for(lambda: registered_ids(runs), 30, "registration", diagnose=first.output)
        with WorkerProcess(runs, tmp_path) as second:
            code = second.wait(30)
            assert code != 0
            assert "already in use" in second.output()
        # Another seq on the same host is a different worker and starts fine.
        with WorkerProcess(runs, tmp_path, ["--seq", "2"]) as other:
            wait_for(lambda: len(registered_ids(runs)) == 2, 30, "seq 2", diagnose=other.output)
            assert other.stop() == 0
        assert first.proc.poll() is None
        assert first.stop() == 0


def test_max_clock_skew_refuses_to_start(runs: str, tmp_path: Path) -> None:
    # No host agrees with the database to the nanosecond, so a zero limit always trips.
    with WorkerProcess(runs, tmp_path, ["--max-clock-skew", "0"]) as worker:
        assert worker.wait(30) != 0
        assert "clock differs" in worker.output()
    assert registered_ids(runs) == []


def test_sigterm_lets_running_jobs_finish_within_the_grace(
    runs: str, broker: Broker, tmp_path: Path
) -> None:
    ids = [e.id for e in broker.enqueue_many([JobSpec("sleep", {"seconds": 1.5})] * 2)]
    with WorkerProcess(runs, tmp_path, ["--shutdown-grace", "30"]) as worker:
        wait_for(lambda: scalar(runs, "SELECT count(*) FROM test_runs") == 2, 30, "jobs start")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
    assert {broker.get_job(i).state for i in ids} == {"succeeded"}


def test_sigterm_hands_back_jobs_after_the_grace(runs: str, broker: Broker, tmp_path: Path) -> None:
    [job] = broker.enqueue_many([JobSpec("sleep", {"seconds": 60})])
    with WorkerProcess(runs, tmp_path, ["--shutdown-grace", "0.5"]) as worker:
        wait_for(lambda: scalar(runs, "SELECT count(*) FROM test_runs") == 1, 30, "job start")
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output()
        elapsed = time.monotonic() - started
    after = broker.get_job(job.id)
    # Back to queued at once, the attempt not burned, no wait for the lease to expire.
    assert (after.state, after.attempts, after.lease_expires_at) == ("queued", 0, None)
    assert [e.event for e in broker.events(job.id)][-1] == "released"
    assert elapsed < 20
    # The handler was told to stop.
    assert scalar(runs, "SELECT outcome FROM test_runs") == "stopped"


def stopped_while_running(
    runs: str, broker: Broker, tmp_path: Path, kind: str, exit_within: float
) -> tuple[int, str]:
    """Start one `kind` job, SIGTERM its worker (grace 0.5 s) once the job runs, and
    require the worker to exit 0 within `exit_within` s: the job's id and the log."""
    [job] = broker.enqueue_many([JobSpec(kind, {})])
    with WorkerProcess(runs, tmp_path, ["--shutdown-grace", "0.5"]) as worker:
        wait_for(lambda: scalar(runs, "SELECT count(*) FROM test_runs") == 1, 30, "job start")
        worker.signal(signal.SIGTERM)
        assert worker.wait(exit_within) == 0, worker.output()
        return job.id, worker.output()


def test_a_handler_that_ignores_its_cancellation_does_not_hold_the_exit_up(
    runs: str, broker: Broker, tmp_path: Path
) -> None:
    # asyncio.run cancels what is left and waits for it without end: the worker logged
    # "stopped" and never exited.
    job, output = stopped_while_running(runs, broker, tmp_path, "ignore_cancel", 40)
    assert "not waiting for them" in output
    # Not handed back while its handler might still run: the lease expires, and the
    # reaper queues it again (lease_expired), as for a killed worker.
    assert broker.get_job(job).state == "running"
    assert "released" not in [e.event for e in broker.events(job)]


def test_a_thread_of_asyncio_to_thread_does_not_hold_the_exit_up(
    runs: str, broker: Broker, tmp_path: Path
) -> None:
    # asyncio.run joins the default executor's threads at the end, however long the
    # call they run takes.
    job, output = stopped_while_running(runs, broker, tmp_path, "blocking_to_thread", 30)
    assert "exiting with handlers still running" in output
    # The handler itself ended when it was stopped, so its job was handed back (as a
    # sync handler's is: the thread cannot be stopped).
    assert broker.get_job(job).state == "queued"


def test_second_signal_hands_back_at_once(runs: str, broker: Broker, tmp_path: Path) -> None:
    [job] = broker.enqueue_many([JobSpec("async_sleep", {"seconds": 60})])
    with WorkerProcess(runs, tmp_path, ["--shutdown-grace", "300"]) as worker:
        wait_for(lambda: scalar(runs, "SELECT count(*) FROM test_runs") == 1, 30, "job start")
        worker.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert worker.proc.poll() is None, "the first signal must wait for the grace period"
        worker.signal(signal.SIGINT)
        assert worker.wait(30) == 0, worker.output()
    after = broker.get_job(job.id)
    assert (after.state, after.attempts) == ("queued", 0)
    assert scalar(runs, "SELECT outcome FROM test_runs") == "cancelled:worker shutdown"


def test_clock_skew_is_recorded_and_warned_about(runs: str, tmp_path: Path) -> None:
    # A tolerance no real clock pair meets: the worker starts, records, and warns.
    with WorkerProcess(runs, tmp_path, BROKER_CLOCK_SKEW_TOLERANCE="0.000000001") as worker:
        wait_for(lambda: registered_ids(runs), 30, "registration", diagnose=worker.output)
        wait_for(lambda: "clock differs" in worker.output(), 30, "the warning")
        assert worker.stop() == 0
    skew = scalar(runs, "SELECT clock_skew_seconds FROM broker.workers")
    # Same machine, same clock: what is measured is the round trip's uncertainty.
    assert skew is not None and abs(skew) < 1.0
