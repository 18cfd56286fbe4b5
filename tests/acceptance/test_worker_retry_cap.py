"""A task's own max_attempts caps the retries its handler asks for with `Retry`, as it
caps ordinary failures."""

from __future__ import annotations

from pathlib import Path

from worker_harness import WorkerProcess, create_runs_table, wait_for

from broker import Broker


def test_retry_requests_stop_at_the_tasks_max_attempts(
    db_url: str, broker: Broker, tmp_path: Path
) -> None:
    create_runs_table(db_url)
    job = broker.enqueue("retry_capped").id
    with WorkerProcess(db_url, tmp_path) as worker:
        wait_for(
            lambda: broker.get_job(job).state == "failed",
            30,
            "the job to fail after its task's max_attempts",
            diagnose=worker.output,
        )
        assert worker.stop() == 0
    done = broker.get_job(job)
    assert (done.attempts, done.last_error) == (2, "asked to retry")
