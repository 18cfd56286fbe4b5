"""`broker jobs logs ID --follow` against a job a real worker runs (issue 14, item 8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from worker_harness import ROOT, WorkerProcess, scalar, wait_for

from broker import Broker, JobSpec


def follower(db_url: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_DATABASE_URL"] = db_url
    return subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "jobs", "logs", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_follow_prints_lines_as_written_and_exits_when_the_job_ends(
    db_url: str, broker: Broker, tmp_path: Path
) -> None:
    [job] = broker.enqueue_many([JobSpec("follow.slow_lines", {"n": 3, "pause": 1.0})])
    with WorkerProcess(db_url, tmp_path, ["--tasks", "tasks_fixture,follow_tasks"]) as worker:
        proc = follower(db_url, str(job.id), "--follow")
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.endswith("slow line 0\n"), first
        # The first line is printed while the job still runs.
        assert broker.get_job(job.id).state == "running", worker.output()
        rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert err == ""
    assert [line.split("] ", 1)[1] for line in rest.splitlines()] == ["slow line 1", "slow line 2"]
    assert broker.get_job(job.id).state == "succeeded"
    # Once finished, the same command prints everything and exits at once; --after resumes.
    again = follower(db_url, str(job.id), "--follow", "--json")
    out, _ = again.communicate(timeout=60)
    shown = [json.loads(line) for line in out.splitlines()]
    assert [s["line"] for s in shown] == ["slow line 0", "slow line 1", "slow line 2"]
    resumed = follower(db_url, str(job.id), "--follow", "--after", str(shown[0]["id"]))
    out, _ = resumed.communicate(timeout=60)
    assert [line.split("] ", 1)[1] for line in out.splitlines()] == ["slow line 1", "slow line 2"]


def test_ctrl_c_stops_a_follow_cleanly(db_url: str, broker: Broker, tmp_path: Path) -> None:
    [job] = broker.enqueue_many([JobSpec("sleep", {"seconds": 60})])
    proc = follower(db_url, str(job.id), "--follow")
    # Registered as a follower: it is waiting for lines.
    wait_for(lambda: scalar(db_url, "SELECT count(*) FROM broker.job_waiters") == 1, 30, "follow")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err == "error: interrupted\n"
    assert out == ""
    # It unregistered on the way out.
    assert scalar(db_url, "SELECT count(*) FROM broker.job_waiters") == 0


def test_logs_of_a_missing_job_is_one_line(db_url: str) -> None:
    proc = follower(db_url, "999999", "--follow")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and err.count("\n") == 1 and "999999" in err
