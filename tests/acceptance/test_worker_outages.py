"""Workers survive the database going away: a PostgreSQL restart, and SIGKILL chaos."""

from __future__ import annotations

import itertools
import os
import pwd
import time
from pathlib import Path

import pytest
from worker_harness import WorkerProcess, create_runs_table, query, scalar, states, wait_for

from broker import Broker, JobSpec


def restart_server(url: str) -> None:
    """Restart the test's own embedded server (fast shutdown drops every connection)."""
    import pgserver  # type: ignore[import-untyped]

    data = Path(scalar(url, "SHOW data_directory"))
    owner = pwd.getpwuid(data.stat().st_uid).pw_name
    user = owner if os.geteuid() == 0 and owner != "root" else None
    pgserver.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=data, user=user, timeout=60)


def one_success_per_job(url: str, expected: int) -> None:
    """Every job succeeded exactly once, by a handler run that really held that epoch."""
    assert states(url) == {"succeeded": expected}
    accepted = query(
        url,
        "SELECT job_id, count(*), max(epoch) FROM broker.job_events "
        "WHERE event = 'succeeded' GROUP BY job_id",
    )
    assert len(accepted) == expected
    assert {n for _, n, _ in accepted} == {1}
    unbacked = scalar(
        url,
        "SELECT count(*) FROM broker.job_events e WHERE e.event = 'succeeded' AND NOT EXISTS "
        "(SELECT 1 FROM test_runs r WHERE r.job_id = e.job_id AND r.epoch = e.epoch)",
    )
    assert unbacked == 0
    mismatched = scalar(
        url,
        "SELECT count(*) FROM broker.jobs j JOIN broker.job_events e ON e.job_id = j.id "
        "AND e.event = 'succeeded' WHERE e.epoch <> j.lease_epoch",
    )
    assert mismatched == 0


def test_worker_survives_its_connections_being_killed(
    db_url: str, broker: Broker, tmp_path: Path
) -> None:
    create_runs_table(db_url)
    total = 300
    broker.enqueue_many([JobSpec("record", {"work": 0.05}) for _ in range(total)])
    with WorkerProcess(db_url, tmp_path, ["--concurrency", "10"]) as worker:
        for _ in range(2):
            done = scalar(db_url, "SELECT count(*) FROM test_runs")
            wait_for(
                lambda done=done: scalar(db_url, "SELECT count(*) FROM test_runs") >= done + 50,
                60,
                "the run to go on",
                diagnose=worker.output,
            )
            killed = scalar(
                db_url,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name LIKE 'broker %%' AND datname = current_database()",
            )
            # Of lease, work and listen; after a kill the work connection is reopened by
            # the next write or reap, which may not have come yet.
            assert killed >= 2
        wait_for(
            lambda: states(db_url) == {"succeeded": total},
            90,
            "every job to finish",
            interval=0.5,
            diagnose=lambda: f"{states(db_url)}\n{worker.output()[-5000:]}",
        )
        assert worker.proc.poll() is None
        assert worker.stop() == 0
    one_success_per_job(db_url, total)


@pytest.mark.skipif(
    bool(os.environ.get("BROKER_TEST_DATABASE_URL")),
    reason="restarts the server: only the test session's own embedded PostgreSQL",
)
def test_worker_survives_a_postgres_restart(db_url: str, broker: Broker, tmp_path: Path) -> None:
    create_runs_table(db_url)
    total = 300
    broker.enqueue_many([JobSpec("record", {"work": 0.05}) for _ in range(total)])
    broker.close()
    with WorkerProcess(db_url, tmp_path, ["--concurrency", "10"]) as worker:
        wait_for(
            lambda: scalar(db_url, "SELECT count(*) FROM test_runs") >= 50,
            60,
            "the run to get going",
            diagnose=worker.output,
        )
        restart_server(db_url)
        wait_for(
            lambda: states(db_url) == {"succeeded": total},
            90,
            "every job to finish after the restart",
            interval=0.5,
            diagnose=lambda: f"{states(db_url)}\n{worker.output()[-5000:]}",
        )
        assert worker.proc.poll() is None, "the worker must survive the restart"
        assert worker.stop() == 0
    one_success_per_job(db_url, total)


def test_chaos_sigkill_every_two_seconds(db_url: str, broker: Broker, tmp_path: Path) -> None:
    create_runs_table(db_url)
    total = 5000
    broker.enqueue_many([JobSpec("record", {"work": 0.1}) for _ in range(total)])
    args = ["--concurrency", "20"]
    workers = {
        seq: WorkerProcess(db_url, tmp_path, [*args, "--seq", str(seq)]) for seq in (1, 2, 3)
    }
    started = time.monotonic()
    kills = 0
    try:
        for seq in itertools.cycle((1, 2, 3)):
            if states(db_url).get("succeeded") == total:
                break
            assert time.monotonic() - started < 240, f"chaos run too slow: {states(db_url)}"
            time.sleep(2)
            workers[seq].kill()
            kills += 1
            workers[seq] = WorkerProcess(db_url, tmp_path, [*args, "--seq", str(seq)])
        # A worker killed before its signal handlers are in place dies of SIGTERM (it held
        # nothing yet); wait until every one serves before asking for a clean stop.
        wait_for(
            lambda: (
                {w.pid for w in workers.values()}
                <= {r[0] for r in query(db_url, "SELECT pid FROM broker.workers")}
            ),
            30,
            "the restarted workers to register",
        )
        for w in workers.values():
            assert w.stop() == 0, w.output()[-3000:]
    finally:
        for w in workers.values():
            w.__exit__(None, None, None)
    assert kills >= 3
    one_success_per_job(db_url, total)
    # Killed workers' jobs really were taken over.
    assert scalar(db_url, "SELECT count(*) FROM broker.job_events WHERE event = 'lease_expired'")
