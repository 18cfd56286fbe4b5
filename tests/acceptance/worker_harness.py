"""Helpers for worker acceptance tests: start real worker processes and wait on the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
T = TypeVar("T")

RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS public.test_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id bigint NOT NULL,
    epoch bigint NOT NULL,
    attempt int NOT NULL,
    pid int NOT NULL,
    worker_id text NOT NULL,
    started timestamptz NOT NULL,
    finished timestamptz,
    outcome text
)
"""


def create_runs_table(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RUNS_TABLE)


def worker_env(url: str, state_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "BROKER_DATABASE_URL": url,
        "BROKER_STATE_DIR": str(state_dir),
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "BROKER_LEASE_TTL": "3",
        "BROKER_REAP_INTERVAL": "0.5",
        "BROKER_LOG_LEVEL": "INFO",
    }
    env.pop("BROKER_TEST_DATABASE_URL", None)
    env.update(extra)
    return env


class WorkerProcess:
    """A `python -m broker.worker` child; output goes to a log file for diagnosis."""

    def __init__(
        self,
        url: str,
        state_dir: Path,
        args: Sequence[str] = (),
        log_path: Path | None = None,
        module: str = "broker.worker",
        **env: str,
    ) -> None:
        self.log_path = log_path or state_dir / f"worker-{time.monotonic_ns()}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        cmd = [sys.executable, "-m", module, "--tasks", "tasks_fixture", *args]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=worker_env(url, state_dir, **env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"worker did not stop in {timeout}s:\n{self.output()}") from None
        finally:
            self._log.close()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def wait_for(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    diagnose: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{diagnose()}" if diagnose else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def query(url: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description is not None else []


def scalar(url: str, sql: str, params: Sequence[Any] = ()) -> Any:
    return query(url, sql, params)[0][0]


def states(url: str) -> dict[str, int]:
    return dict(query(url, "SELECT state, count(*) FROM broker.jobs GROUP BY state"))  # type: ignore[arg-type]
