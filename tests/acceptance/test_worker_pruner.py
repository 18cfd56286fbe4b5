"""Workers prune finished jobs past their retention in the background (BROKER_RETENTION_*,
BROKER_PRUNE_INTERVAL), and leave everything else alone."""

from __future__ import annotations

from pathlib import Path

from worker_harness import WorkerProcess, create_runs_table, scalar, wait_for

from broker import Broker, JobSpec


def test_worker_prunes_old_succeeded_jobs_only(db_url: str, broker: Broker, tmp_path: Path) -> None:
    create_runs_table(db_url)
    broker.enqueue_many([JobSpec("sleep", {"seconds": 0}) for _ in range(5)])
    kept_failed = broker.enqueue("fail_final").id
    with WorkerProcess(
        db_url,
        tmp_path,
        BROKER_PRUNE_INTERVAL="0.5",
        BROKER_RETENTION_SUCCEEDED="1",
        BROKER_RETENTION_FAILED="1d",
    ) as worker:
        wait_for(
            lambda: scalar(db_url, "SELECT count(*) FROM broker.jobs") == 1,
            30,
            "the succeeded jobs to be pruned",
            diagnose=worker.output,
        )
        assert worker.stop() == 0
    assert broker.get_job(kept_failed).state == "failed"
    orphans = scalar(
        db_url,
        "SELECT count(*) FROM broker.job_events e"
        " WHERE NOT EXISTS (SELECT 1 FROM broker.jobs j WHERE j.id = e.job_id)",
    )
    assert orphans == 0, "events of pruned jobs go with them"
