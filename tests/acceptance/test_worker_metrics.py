"""`python -m broker.worker --metrics-port`: real worker processes serve their counters and
histograms, parsed back with prometheus_client's parser; with --processes 2 the supervisor
serves the sum over its children (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families
from worker_harness import ROOT, WorkerProcess, create_runs_table, query, scalar, wait_for

from broker import Broker, JobSpec

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert r.status_code == 200
    # The library's own server, answering a scraper that sent no Accept header.
    assert r.headers["content-type"] == choose_encoder("")[1]
    found: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def serving(port: int) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).status_code == 200
    return False


def jobs(found: Samples, kind: str, outcome: str) -> float:
    return value(found, "broker_worker_jobs_total", kind=kind, outcome=outcome)


@pytest.fixture
def runs(db_url: str) -> str:
    create_runs_table(db_url)
    return db_url


@contextlib.contextmanager
def worker(url: str, state_dir: Path, port: int, *args: str, **env: str) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(
        url, state_dir, ["--metrics-port", str(port), "--metrics-host", "127.0.0.1", *args], **env
    )
    with proc:
        wait_for(lambda: serving(port), 30, "the metrics endpoint", diagnose=proc.output)
        yield proc


def finished(url: str, count: int) -> bool:
    done = scalar(
        url, "SELECT count(*) FROM broker.jobs WHERE state IN ('succeeded', 'failed', 'cancelled')"
    )
    return bool(done == count)


def test_a_worker_serves_its_outcomes(runs: str, broker: Broker, tmp_path: Path) -> None:
    port = free_port()
    with worker(runs, tmp_path, port, "--concurrency", "2") as proc:
        before = scrape(port)
        # Series start at zero for every registered kind and every outcome.
        assert jobs(before, "noop", "succeeded") == 0 and jobs(before, "boom", "lost") == 0
        assert value(before, "broker_worker_stale_writes_total", write="complete") == 0
        assert value(before, "broker_worker_leases_lost_total") == 0
        assert value(before, "process_cpu_seconds_total") >= 0

        specs = [JobSpec("record") for _ in range(3)]
        specs += [JobSpec("fail_final"), JobSpec("boom"), JobSpec("retry_soon")]
        specs += [JobSpec("snooze_twice")]
        broker.enqueue_many(specs)
        wait_for(lambda: finished(runs, 7), 30, "the jobs to finish", diagnose=proc.output)
        # The writer reports a row once the statement returned: wait for the last one.
        wait_for(
            lambda: jobs(scrape(port), "snooze_twice", "succeeded") == 1, 10, "the last outcome"
        )
        found = scrape(port)
        assert jobs(found, "record", "succeeded") == 3
        assert jobs(found, "fail_final", "failed") == 1
        assert jobs(found, "boom", "failed") == 1
        assert (jobs(found, "retry_soon", "retried"), jobs(found, "retry_soon", "succeeded")) == (
            1,
            1,
        )
        assert jobs(found, "snooze_twice", "snoozed") == 2
        assert jobs(found, "record", "failed") == 0
        # Ten attempts in all: each claimed, run, and written once.
        attempts = 3 + 1 + 1 + 2 + 3
        assert value(found, "broker_worker_claim_batch_size_sum") == attempts
        assert value(found, "broker_worker_finish_batch_size_sum") == attempts
        assert value(found, "broker_worker_job_run_seconds_count", kind="record") == 3
        assert value(found, "broker_worker_job_run_seconds_count", kind="snooze_twice") == 3
        assert value(found, "broker_worker_stale_writes_total", write="complete") == 0

        # A lease taken away from under a running handler (as the reaper and another
        # worker would): the next heartbeat finds it lost and the handler is stopped.
        [held] = broker.enqueue_many([JobSpec("sleep", {"seconds": 60})])
        wait_for(
            lambda: scalar(runs, "SELECT count(*) FROM test_runs WHERE job_id = %s", [held.id]),
            30,
            "the sleep job to start",
        )
        query(runs, "UPDATE broker.jobs SET lease_epoch = lease_epoch + 1 WHERE id = %s", [held.id])
        wait_for(
            lambda: value(scrape(port), "broker_worker_leases_lost_total") == 1,
            15,
            "the lost lease",
            diagnose=proc.output,
        )
        wait_for(lambda: jobs(scrape(port), "sleep", "lost") == 1, 10, "the discarded run")
        assert proc.stop() == 0
    # The server stopped with the worker.
    assert not serving(port)


def test_a_write_under_a_stale_epoch_is_counted(runs: str, broker: Broker, tmp_path: Path) -> None:
    # A long lease: the first heartbeat comes 20 s after the start, so it is the handler's
    # completion that finds the epoch moved on.
    port = free_port()
    with worker(runs, tmp_path, port, BROKER_LEASE_TTL="60") as proc:
        [held] = broker.enqueue_many([JobSpec("sleep", {"seconds": 1.0})])
        wait_for(
            lambda: scalar(runs, "SELECT count(*) FROM test_runs WHERE job_id = %s", [held.id]),
            30,
            "the sleep job to start",
        )
        query(runs, "UPDATE broker.jobs SET lease_epoch = lease_epoch + 1 WHERE id = %s", [held.id])
        wait_for(
            lambda: value(scrape(port), "broker_worker_stale_writes_total", write="complete") == 1,
            15,
            "the refused write",
            diagnose=proc.output,
        )
        found = scrape(port)
        assert jobs(found, "sleep", "lost") == 1 and jobs(found, "sleep", "succeeded") == 0
        assert value(found, "broker_worker_leases_lost_total") == 0
        assert proc.stop() == 0


def run_pids(url: str) -> set[int]:
    return {int(r[0]) for r in query(url, "SELECT DISTINCT pid FROM test_runs")}


def live_workers(url: str) -> dict[int, int]:
    return dict(query(url, "SELECT seq, pid FROM broker.workers WHERE stopped_at IS NULL"))  # type: ignore[arg-type]


def test_the_supervisor_serves_the_sum_of_its_processes(
    runs: str, broker: Broker, tmp_path: Path
) -> None:
    port = free_port()
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    # A file left by an earlier run: removed before any child starts, or its counts would be
    # summed in.
    stale = multiproc / "counter_999999.db"
    stale.write_bytes(b"left over")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    args = ("--processes", "2", "--concurrency", "1")
    try:
        with worker(runs, tmp_path, port, *args, **env) as supervisor:
            assert not stale.exists()
            children = wait_for(
                lambda: (w := live_workers(runs)) and len(w) == 2 and w, 30, "two workers"
            )
            broker.enqueue_many([JobSpec("record", {"work": 0.3}) for _ in range(8)])
            wait_for(lambda: finished(runs, 8), 30, "the jobs", diagnose=supervisor.output)
            # One slot each: both processes ran some of them.
            assert run_pids(runs) == set(children.values())
            wait_for(
                lambda: jobs(scrape(port), "record", "succeeded") == 8,
                10,
                "the sum over both processes",
                diagnose=supervisor.output,
            )
            found = scrape(port)
            assert value(found, "broker_worker_job_run_seconds_count", kind="record") == 8
            assert value(found, "broker_worker_claim_batch_size_sum") == 8
            assert jobs(found, "boom", "failed") == 0

            # A child killed and restarted: what it counted stays in the sum.
            os.kill(children[1], signal.SIGKILL)
            wait_for(
                lambda: live_workers(runs).get(1) not in (None, children[1]),
                30,
                "seq 1 to be restarted",
                diagnose=supervisor.output,
            )
            broker.enqueue_many([JobSpec("record") for _ in range(2)])
            wait_for(lambda: finished(runs, 10), 30, "the later jobs")
            wait_for(lambda: jobs(scrape(port), "record", "succeeded") == 10, 10, "the new sum")
            assert supervisor.stop() == 0
        assert not serving(port)
    finally:
        for pid in live_workers(runs).values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_supervisor_removes_the_directory_it_made(runs: str, tmp_path: Path) -> None:
    port = free_port()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    with worker(runs, tmp_path, port, "--processes", "2", TMPDIR=str(tmp)) as supervisor:
        wait_for(lambda: len(live_workers(runs)) == 2, 30, "two workers")
        [made] = list(tmp.glob("broker-metrics-*"))
        assert list(made.glob("*.db"))  # the children record there
        assert supervisor.stop() == 0
    assert not made.exists()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_port_in_use_is_one_error_line(runs: str, tmp_path: Path, processes: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = WorkerProcess(
            runs,
            tmp_path,
            ["--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--processes", processes],
        )
        with proc:
            assert proc.wait(30) == 1
            lines = [line for line in proc.output().splitlines() if line.startswith("error:")]
        assert lines == [f"error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"]
    # Nothing ran: no worker registered.
    assert live_workers(runs) == {}


def test_without_the_option_the_worker_loads_no_metrics_library() -> None:
    code = (
        "import sys, broker.worker.command, broker.worker.runtime, broker.worker.supervisor; "
        "print('prometheus_client' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"
