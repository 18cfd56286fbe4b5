"""Claim starvation: do low-priority jobs start while high-priority ones keep coming?

    python -m bench.starvation                       # 20 s of sustained load
    python -m bench.starvation --seconds 5           # smoke run
    python -m bench.starvation --split               # the low jobs on a queue of their own

Issue 13 (goal 7). `--low` jobs at priority 0 are queued first; then a feeder keeps
`--backlog` jobs at priority 10 queued for `--seconds` (topping up every 50 ms with one
COPY), more than the workers can run (`--processes` x `--concurrency` slots, each job
sleeping `--job-ms`). The claim order is priority, then run_at, then id (DESIGN, decision
002), so while the backlog lasts no low job should start: the policy is strict priority,
and this measures it. With `--split` the low jobs go to queue `bench-low`, which one more
worker process serves alone (the way docs/scaling.md says to keep a class of work from
starving another). Prints how many low jobs started during the load, when the first and
the last one started (seconds from the load's start, database time), and the high
priority throughput. Uses BROKER_DATABASE_URL's server (else an embedded one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import psycopg

from bench.worker_throughput import drop_database, scratch_database, server_url, spawn_workers
from broker import Broker, JobSpec, task

KIND = "bench_sleep"
TASKS = "bench.starvation"  # this module, as the workers import it


@task(KIND)
async def bench_sleep(ms: int) -> None:
    await asyncio.sleep(ms / 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--low", type=int, default=100)
    parser.add_argument("--backlog", type=int, default=1000)
    parser.add_argument("--job-ms", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--split", action="store_true")
    opts = parser.parse_args()
    server = server_url()
    name = f"bench_starvation_{os.getpid()}"
    url = scratch_database(server, name)
    low_queue = "bench-low" if opts.split else "bench"
    fleets = []
    try:
        with Broker.connect(url, max_size=2) as client, tempfile.TemporaryDirectory() as d:
            low = [JobSpec(KIND, {"ms": opts.job_ms}, queue=low_queue) for _ in range(opts.low)]
            client.enqueue_many(low)
            high = JobSpec(KIND, {"ms": opts.job_ms}, queue="bench", priority=10)
            client.enqueue_many([high] * opts.backlog)
            slots = opts.concurrency
            fleets.append(spawn_workers(url, TASKS, "bench", slots, opts.processes, Path(d) / "a"))
            if opts.split:
                fleets.append(spawn_workers(url, TASKS, "bench-low", slots, 1, Path(d) / "b"))
            with psycopg.connect(url, autocommit=True) as conn:
                started = conn.execute("SELECT now()").fetchone()
                assert started is not None
                t0 = started[0]
                deadline = time.monotonic() + opts.seconds
                while time.monotonic() < deadline:
                    row = conn.execute(
                        "SELECT count(*) FROM broker.jobs WHERE state = 'queued' AND priority = 10"
                    ).fetchone()
                    assert row is not None
                    if row[0] < opts.backlog:
                        client.enqueue_many([high] * (opts.backlog - int(row[0])))
                    time.sleep(0.05)
                ended = conn.execute("SELECT now()").fetchone()
                assert ended is not None
                t1 = ended[0]
                while True:
                    row = conn.execute(
                        "SELECT count(*) FROM broker.jobs WHERE state <> 'succeeded'"
                    ).fetchone()
                    assert row is not None
                    if row[0] == 0:
                        break
                    time.sleep(0.1)
                low_row = conn.execute(
                    "SELECT count(*) FILTER (WHERE started_at < %(t1)s),"
                    " extract(epoch FROM min(started_at) - %(t0)s),"
                    " extract(epoch FROM max(started_at) - %(t0)s)"
                    " FROM broker.jobs WHERE priority = 0",
                    {"t0": t0, "t1": t1},
                ).fetchone()
                high_row = conn.execute(
                    "SELECT count(*) FROM broker.jobs"
                    " WHERE priority = 10 AND finished_at BETWEEN %s AND %s",
                    [t0, t1],
                ).fetchone()
            assert low_row is not None and high_row is not None
            load = (t1 - t0).total_seconds()
            print(
                f"load {load:.1f} s, high priority {high_row[0] / load:,.0f} jobs/s;"
                f" low jobs ({low_queue}) started during the load: {low_row[0]} of {opts.low},"
                f" first at {float(low_row[1]):.2f} s, last at {float(low_row[2]):.2f} s"
            )
    finally:
        for fleet in fleets:
            fleet.terminate()
            fleet.wait(60)
        drop_database(server, name)


if __name__ == "__main__":
    main()
