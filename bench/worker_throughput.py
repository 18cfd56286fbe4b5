"""Worker throughput: N no-op jobs pre-queued, drained by 1 and by 2 worker processes.

    python bench/worker_throughput.py [--jobs 20000] [--processes 1,2] [--concurrency 100]
                                      [--metrics] [--sync] [--queues 1]

`--metrics` runs the workers with --metrics-port (a free port), to measure what recording
the worker's Prometheus metrics costs a drain. `--sync` drains a plain `def` no-op task
(run on the worker's handler threads) instead of the `async def` one. `--queues N` spreads
the jobs round-robin over N queues (`bench`, `bench1`, ...), all of which every worker
serves: the cost of the claim's queue list (issue 13).

Uses BROKER_DATABASE_URL's server (else an embedded one), in a scratch database per run.
Prints jobs/s measured by the database (first claim to last completion) and the CPU
seconds the worker processes used from start to exit (imports included: compare it between
runs of the same size; on a busy machine it moves less than the rate). This file is
also the task module the workers import (`bench_noop`, `bench_noop_sync`).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from broker import Broker, JobSpec, task

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@task("bench_noop", queue="bench")
async def bench_noop() -> None:
    """Does nothing: the cost measured is the broker's."""


@task("bench_noop_sync", queue="bench")
def bench_noop_sync() -> None:
    """Does nothing in a handler thread: the cost measured is the broker's sync dispatch."""


def server_url() -> str:
    url = os.environ.get("BROKER_DATABASE_URL")
    if url:
        return url
    from broker.config import Settings
    from broker.db import start_embedded

    return start_embedded(Settings.from_env().home)


def scratch_database(server: str, name: str, setup: str | None = None) -> str:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = urlunsplit(urlsplit(server)._replace(path="/" + name))
    from broker.migrate import upgrade

    upgrade(url)
    if setup:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(setup)  # type: ignore[arg-type]
    return url


def drop_database(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def queue_names(queues: int) -> list[str]:
    return ["bench"] + [f"bench{i}" for i in range(1, queues)]


def enqueue(url: str, jobs: int, kind: str = "bench_noop", queues: int = 1) -> None:
    names = queue_names(queues)
    with Broker.connect(url) as client:
        for start in range(0, jobs, 5000):
            count = min(5000, jobs - start)
            client.enqueue_many(
                [JobSpec(kind, queue=names[(start + i) % queues]) for i in range(count)]
            )


# Jobs succeeded so far, and seconds from the first start to the last finish.
DRAINED = (
    "SELECT count(*) FILTER (WHERE state = 'succeeded'),"
    " extract(epoch FROM max(finished_at) - min(started_at))"
    " FROM broker.jobs"
)


def spawn_workers(
    url: str,
    tasks: str,
    queues: str,
    concurrency: int,
    processes: int | None = None,
    state_dir: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    options: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start `python -m broker.worker` on `url`: `tasks` imported (bench/ and this checkout
    are on its path), serving `queues` (comma-separated) with `concurrency` slots, under a
    supervisor of `processes` when given, its identity files in `state_dir` (default: a new
    temporary directory), warnings only in its log; `env` and `options` add to that."""
    cmd = [sys.executable, "-m", "broker.worker", "--tasks", tasks, "--queues", queues]
    cmd += ["--concurrency", str(concurrency)]
    if processes is not None:
        cmd += ["--processes", str(processes)]
    full_env = {
        **os.environ,
        "BROKER_DATABASE_URL": url,
        "BROKER_STATE_DIR": str(state_dir or tempfile.mkdtemp(prefix="broker-bench-")),
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
        "BROKER_LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    return subprocess.Popen([*cmd, *options], env=full_env)


def poll_until(
    conn: psycopg.Connection[Any],
    workers: subprocess.Popen[bytes],
    query: str,
    params: Sequence[Any] = (),
    *,
    done: Callable[[tuple[Any, ...]], bool],
) -> tuple[Any, ...]:
    """The first row of `query` that is `done`, asked every 0.1 s; exits the benchmark if
    the workers stop first (a benchmark that waited on them would wait forever)."""
    while True:
        row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        assert row is not None
        if done(row):
            return row
        if workers.poll() is not None:
            raise SystemExit(f"workers exited with {workers.returncode}")
        time.sleep(0.1)


@contextmanager
def running(workers: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """`workers`, stopped (SIGTERM, then waited on) however the block ends."""
    try:
        yield workers
    finally:
        workers.terminate()
        workers.wait(60)


def drain(
    url: str,
    processes: int,
    concurrency: int,
    jobs: int,
    state_dir: Path,
    metrics: bool = False,
    queues: int = 1,
) -> tuple[float, float]:
    """Seconds from the first claim to the last completion, and the workers' CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    options: list[str] = []
    if metrics:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        options += ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
    names = ",".join(queue_names(queues))
    spawned = spawn_workers(url, "worker_throughput", names, concurrency, processes, state_dir)
    with running(spawned) as workers, psycopg.connect(url, autocommit=True) as conn:
        row = poll_until(
            conn,
            workers,
            DRAINED,
            done=lambda row: row[0] >= jobs,
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return float(row[1]), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument(
        "--setup-sql",
        type=Path,
        help="SQL file run in each scratch database after the migrations (experiments: swap a"
        " function, drop a trigger)",
    )
    parser.add_argument("--metrics", action="store_true", help="serve worker metrics")
    parser.add_argument("--sync", action="store_true", help="a plain def handler, not async")
    parser.add_argument("--queues", type=int, default=1, help="queues the jobs are spread over")
    args = parser.parse_args()
    setup = args.setup_sql.read_text() if args.setup_sql else None
    server = server_url()
    name = f"broker_bench_{os.getpid()}"
    for processes in [int(p) for p in args.processes.split(",")]:
        url = scratch_database(server, name, setup)
        try:
            kind = "bench_noop_sync" if args.sync else "bench_noop"
            enqueue(url, args.jobs, kind, args.queues)
            state = Path(tempfile.mkdtemp(prefix="broker-bench-"))
            seconds, cpu = drain(
                url, processes, args.concurrency, args.jobs, state, args.metrics, args.queues
            )
        finally:
            drop_database(server, name)
        print(
            f"{args.jobs} {'sync' if args.sync else 'async'} no-op jobs"
            f"{f' over {args.queues} queues' if args.queues > 1 else ''}, {processes}"
            f" process(es) x concurrency {args.concurrency}"
            f"{' with metrics' if args.metrics else ''}: "
            f"{seconds:.2f} s, {args.jobs / seconds:,.0f} jobs/s, worker CPU {cpu:.2f} s"
        )


if __name__ == "__main__":
    main()
