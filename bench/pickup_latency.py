"""Pickup latency with idle workers: enqueue jobs one by one, 20 ms apart, and report
percentiles of handler start minus enqueue.

    python bench/pickup_latency.py [--jobs 200] [--gap 0.02] [--processes 1]

Start time is the handler's own clock reading, returned as the job's result. Two
enqueue times are reported: the job's created_at (the database's now(), taken when the
enqueue transaction began, so the enqueue statement's own run time is included) and the
moment enqueue() returned to the client (the commit, when the job became visible). All
clocks are this machine's, so they agree.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import psycopg
from worker_throughput import drop_database, scratch_database, server_url, spawn_workers

from broker import Broker, task


@task("bench_started", queue="latency")
async def bench_started() -> float:
    """Returns when it started: the latency measured is enqueue -> this line."""
    return time.time()


IDLE_SAMPLE = 3.0  # seconds of the idle fleet's own traffic, measured before the jobs


def transactions(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Transactions committed or rolled back in this database so far (pg_stat)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database"
        " WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row[0])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def wait_for_workers(url: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name LIKE 'broker listen %%' AND datname = current_database()"
            ).fetchone()
            if row is not None and row[0] >= count:
                return
            time.sleep(0.1)
    raise SystemExit("workers did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between enqueues")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    server = server_url()
    name = f"broker_latency_{os.getpid()}"
    url = scratch_database(server, name)
    fleet = spawn_workers(url, "pickup_latency", "latency", args.concurrency, args.processes)
    try:
        wait_for_workers(url, args.processes)
        time.sleep(1.0)
        with Broker.connect(url) as client, psycopg.connect(url, autocommit=True) as stats:
            # What the idle fleet commits on its own (polls, heartbeats, registry), then
            # what the enqueues add: the wake-up cost, claims that came back empty included.
            idle_from, idle_t0 = transactions(stats), time.monotonic()
            time.sleep(IDLE_SAMPLE)
            busy_from, busy_t0 = transactions(stats), time.monotonic()
            idle_rate = (busy_from - idle_from) / (busy_t0 - idle_t0)
            returned: dict[int, float] = {}
            for _ in range(args.jobs):
                job_id = client.enqueue("bench_started", queue="latency").id
                returned[job_id] = time.time()
                time.sleep(args.gap)
            busy = transactions(stats) - busy_from - idle_rate * (time.monotonic() - busy_t0)
            deadline = time.monotonic() + 60
            with psycopg.connect(url, autocommit=True) as conn:
                while time.monotonic() < deadline:
                    rows = conn.execute(
                        "SELECT id, (result)::float8, extract(epoch FROM created_at)::float8"
                        " FROM broker.jobs WHERE state = 'succeeded'"
                    ).fetchall()
                    if len(rows) >= args.jobs:
                        break
                    time.sleep(0.1)
    finally:
        fleet.terminate()
        fleet.wait(60)
        drop_database(server, name)
    print(f"{len(rows)} jobs, {args.gap * 1000:.0f} ms apart, {args.processes} idle worker(s)")
    print(
        f"  idle fleet: {idle_rate:.1f} transactions/s; per job beyond that:"
        f" {busy / args.jobs:.1f} (the enqueue, its claims, the finish; empty claims)"
    )
    report("start - created_at (database clock, start of the enqueue)", [r[1] - r[2] for r in rows])
    report(
        "start - enqueue() returned (commit seen by the client)",
        [r[1] - returned[r[0]] for r in rows],
    )


def report(label: str, seconds: list[float]) -> None:
    ms = [s * 1000 for s in seconds]
    print(
        f"  {label}: p50 {percentile(ms, 50):.2f} ms, p95 {percentile(ms, 95):.2f} ms, "
        f"p99 {percentile(ms, 99):.2f} ms, max {max(ms):.2f} ms, mean {statistics.fmean(ms):.2f} ms"
    )


if __name__ == "__main__":
    main()
