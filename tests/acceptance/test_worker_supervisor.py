"""`--processes N`: a supervisor runs N worker processes (seq 1..N) and restarts dead ones."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from worker_harness import WorkerProcess, create_runs_table, query, states, wait_for

from broker import Broker, JobSpec


def live_workers(url: str) -> dict[int, int]:
    """seq -> pid of the registered, not stopped workers."""
    return dict(query(url, "SELECT seq, pid FROM broker.workers WHERE stopped_at IS NULL"))  # type: ignore[arg-type]


def test_supervisor_restarts_a_dead_worker(db_url: str, broker: Broker, tmp_path: Path) -> None:
    create_runs_table(db_url)
    supervisor = WorkerProcess(db_url, tmp_path, ["--processes", "2"])
    try:
        with supervisor:
            first = wait_for(
                lambda: (w := live_workers(db_url)) and len(w) == 2 and w,
                30,
                "two workers",
                diagnose=supervisor.output,
            )
            assert sorted(first) == [1, 2]
            os.kill(first[1], signal.SIGKILL)
            restarted = wait_for(
                lambda: (w := live_workers(db_url)).get(1) not in (None, first[1]) and w,
                30,
                "seq 1 to be restarted",
                diagnose=supervisor.output,
            )
            assert restarted[2] == first[2]

            broker.enqueue_many([JobSpec("sleep", {"seconds": 0.1}) for _ in range(20)])
            wait_for(
                lambda: states(db_url).get("succeeded") == 20,
                30,
                "jobs to be run",
                diagnose=supervisor.output,
            )
            assert supervisor.stop() == 0
        assert live_workers(db_url) == {}
    finally:
        for pid in live_workers(db_url).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_workers_stop_when_their_supervisor_dies(db_url: str, tmp_path: Path) -> None:
    supervisor = WorkerProcess(db_url, tmp_path, ["--processes", "2"])
    try:
        with supervisor:
            children = wait_for(
                lambda: (w := live_workers(db_url)) and len(w) == 2 and w,
                30,
                "two workers",
                diagnose=supervisor.output,
            )
            supervisor.kill()
            # Orphans notice at their next heartbeat (TTL/3), drain and unregister.
            wait_for(
                lambda: live_workers(db_url) == {},
                30,
                "the orphaned workers to stop",
                diagnose=supervisor.output,
            )
            assert "supervisor" in supervisor.output() and "is gone" in supervisor.output()
            for pid in children.values():
                wait_for(lambda pid=pid: not _alive(pid), 10, f"pid {pid} to exit")
    finally:
        for pid in live_workers(db_url).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False
