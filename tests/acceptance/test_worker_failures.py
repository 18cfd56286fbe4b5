"""Worker processes under failure: crashes, lost LISTEN connections, cancels, timeouts,
lost leases."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from worker_harness import WorkerProcess, create_runs_table, query, scalar, wait_for

from broker import Broker, JobSpec

LEASE_TTL = 3.0
REAP_INTERVAL = 0.5


@pytest.fixture
def runs(db_url: str) -> str:
    create_runs_table(db_url)
    return db_url


def run_count(url: str, job_id: int) -> int:
    return int(scalar(url, "SELECT count(*) FROM test_runs WHERE job_id = %s", [job_id]))


def test_killed_worker_jobs_are_reclaimed_by_another(
    runs: str, broker: Broker, tmp_path: Path
) -> None:
    [job] = broker.enqueue_many([JobSpec("sleep", {"seconds": 1.0})])
    with WorkerProcess(runs, tmp_path / "a") as victim:
        wait_for(lambda: run_count(runs, job.id) == 1, 30, "first run", diagnose=victim.output)
        victim.kill()
        killed_at = scalar(runs, "SELECT now()")
    with WorkerProcess(runs, tmp_path / "b") as rescuer:
        wait_for(
            lambda: broker.get_job(job.id).state == "succeeded",
            30,
            "the job to be finished by the other worker",
            diagnose=rescuer.output,
        )
        rescuer.stop()
    events = broker.events(job.id)
    names = [e.event for e in events]
    assert names == ["enqueued", "claimed", "lease_expired", "claimed", "succeeded"]
    expired = next(e for e in events if e.event == "lease_expired")
    # Expiry is judged by the database clock: within one TTL (the last heartbeat may have
    # just extended it) plus a reaper interval, with slack for a loaded machine.
    waited = (expired.at - killed_at).total_seconds()
    assert waited <= LEASE_TTL + REAP_INTERVAL + 2.0, waited
    [(first_pid, first_epoch), (second_pid, second_epoch)] = query(
        runs, "SELECT pid, epoch FROM test_runs ORDER BY id"
    )
    assert (first_pid, second_pid) == (victim.pid, rescuer.pid)
    assert (first_epoch, second_epoch) == (1, 2)
    done = broker.get_job(job.id)
    assert done.result["pid"] == rescuer.pid
    assert done.worker_id != events[1].worker_id


def listener_pids(url: str) -> list[int]:
    return [
        r[0]
        for r in query(
            url,
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'broker listen %%' "
            "AND datname = current_database()",
        )
    ]


def test_killed_listen_connection_is_replaced_and_pickup_still_works(
    runs: str, broker: Broker, tmp_path: Path
) -> None:
    # With a one-minute poll, only a notification can start a job quickly.
    with WorkerProcess(runs, tmp_path, ["--poll-interval", "60"]) as worker:
        [old] = wait_for(lambda: listener_pids(runs), 30, "listener", diagnose=worker.output)
        time.sleep(0.5)
        [first] = broker.enqueue_many([JobSpec("sleep")])
        wait_for(lambda: run_count(runs, first.id), 10, "pickup", diagnose=worker.output)

        query(runs, "SELECT pg_terminate_backend(%s)", [old])
        wait_for(
            lambda: [p for p in listener_pids(runs) if p != old],
            15,
            "a new listener connection",
            diagnose=worker.output,
        )
        [second] = broker.enqueue_many([JobSpec("sleep")])
        wait_for(lambda: run_count(runs, second.id), 10, "pickup after", diagnose=worker.output)
        assert worker.stop() == 0
        assert "listener connection lost" in worker.output()


@pytest.mark.parametrize("kind", ["async_sleep", "sleep"])
def test_cancel_of_a_running_job_stops_its_handler(
    kind: str, runs: str, broker: Broker, tmp_path: Path
) -> None:
    [job] = broker.enqueue_many([JobSpec(kind, {"seconds": 60})])
    with WorkerProcess(runs, tmp_path, ["--poll-interval", "60"]) as worker:
        wait_for(lambda: run_count(runs, job.id), 30, "job start", diagnose=worker.output)
        assert broker.cancel(job.id) == "running"
        wait_for(
            lambda: broker.get_job(job.id).state == "cancelled",
            # Delivered by NOTIFY; the heartbeat (TTL/3) would be the fallback.
            10,
            "the job to be cancelled",
            diagnose=worker.output,
        )
        outcome = scalar(runs, "SELECT outcome FROM test_runs")
        assert outcome in ("cancelled:cancel requested", "stopped")
        assert worker.stop() == 0
    events = [e.event for e in broker.events(job.id)]
    assert events[-2:] == ["cancel_requested", "cancelled"]


def test_cancel_without_notification_is_caught_by_the_heartbeat(
    runs: str, broker: Broker, tmp_path: Path
) -> None:
    [job] = broker.enqueue_many([JobSpec("async_sleep", {"seconds": 60})])
    with WorkerProcess(runs, tmp_path) as worker:
        wait_for(lambda: run_count(runs, job.id), 30, "job start", diagnose=worker.output)
        # What cancel_job() does, minus its NOTIFY: only the heartbeat can tell the worker.
        query(runs, "UPDATE broker.jobs SET cancel_requested_at = now() WHERE id = %s", [job.id])
        wait_for(
            lambda: broker.get_job(job.id).state == "cancelled",
            LEASE_TTL * 3,
            "the heartbeat to report the cancel",
            diagnose=worker.output,
        )
        assert worker.stop() == 0
    assert scalar(runs, "SELECT outcome FROM test_runs") == "cancelled:cancel requested"


def test_per_job_timeout(runs: str, broker: Broker, tmp_path: Path) -> None:
    [job] = broker.enqueue_many(
        [JobSpec("async_sleep", {"seconds": 60}, timeout=0.5, max_attempts=1)]
    )
    with WorkerProcess(runs, tmp_path) as worker:
        wait_for(
            lambda: broker.get_job(job.id).state == "failed",
            30,
            "the job to time out",
            diagnose=worker.output,
        )
        worker.stop()
    done = broker.get_job(job.id)
    assert done.last_error is not None and "timed out" in done.last_error
    assert scalar(runs, "SELECT outcome FROM test_runs") == "cancelled:timeout"


def test_lost_lease_cancels_the_handler_and_discards_its_outcome(
    runs: str, broker: Broker, tmp_path: Path
) -> None:
    [job] = broker.enqueue_many([JobSpec("async_sleep", {"seconds": 60})])
    with WorkerProcess(runs, tmp_path) as worker:
        wait_for(lambda: run_count(runs, job.id), 30, "job start", diagnose=worker.output)
        # As if the lease had expired and another worker had claimed the job.
        query(runs, "UPDATE broker.jobs SET lease_epoch = lease_epoch + 1 WHERE id = %s", [job.id])
        wait_for(
            lambda: scalar(runs, "SELECT outcome FROM test_runs"),
            LEASE_TTL * 3,
            "the handler to be stopped by the next heartbeat",
            diagnose=worker.output,
        )
        assert scalar(runs, "SELECT outcome FROM test_runs") == "cancelled:lease lost"
        assert worker.stop() == 0
    after = broker.get_job(job.id)
    # Nothing was written for the lost lease: the job still belongs to "the other owner".
    assert (after.state, after.lease_epoch) == ("running", 2)
    events = broker.events(job.id)
    assert [e.event for e in events] == ["enqueued", "claimed", "stale_write_rejected"]
    assert events[-1].detail is not None and events[-1].detail["write"] == "heartbeat"
