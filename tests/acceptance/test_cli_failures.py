"""What `broker jobs ls | show` say about a job a real worker failed: the exception line
of its traceback, and the attempts out of the cap that ended it (the task's own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from worker_harness import ROOT, WorkerProcess, wait_for

from broker import Broker


def broker_cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BROKER_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    env.pop("BROKER_SCHEMA", None)
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_failed_job_shows_its_exception_and_its_tasks_cap(
    db_url: str, broker: Broker, tmp_path: Path
) -> None:
    job_id = broker.enqueue("boom_capped").id
    with WorkerProcess(db_url, tmp_path) as worker:
        wait_for(
            lambda: broker.get_job(job_id).state == "failed",
            30,
            "the job to fail at its task's max_attempts",
            diagnose=worker.output,
        )
        assert worker.stop() == 0
    job = broker.get_job(job_id)
    assert job.last_error is not None
    assert job.last_error.startswith("Traceback (most recent call last):")
    assert (job.attempts, job.max_attempts) == (4, 4)

    shown = broker_cli(db_url, "jobs", "show", str(job_id))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "attempts          4 of 4" in lines
    assert "last error        ValueError: boom on attempt 4" in lines
    assert "Traceback" not in shown.stdout
    # Each failed attempt's event names its own exception.
    for attempt in (1, 2, 3):
        assert f"boom on attempt {attempt}" in shown.stdout

    listed = broker_cli(db_url, "jobs", "ls", "--state", "failed")
    assert listed.returncode == 0, listed.stderr
    [row] = listed.stdout.splitlines()[1:]
    assert row.endswith("ValueError: boom on attempt 4")
    assert " 4/4 " in row

    # --json keeps the stored traceback whole.
    body = json.loads(broker_cli(db_url, "jobs", "show", str(job_id), "--json").stdout)
    assert body["job"]["last_error"] == job.last_error
    assert body["job"]["max_attempts"] == 4
