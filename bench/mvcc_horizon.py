"""Drain rate while a session holds the MVCC horizon open, and after it lets go.

    python -m bench.mvcc_horizon                    # 3 held + 2 after, 20,000 jobs each, 2 reps
    python -m bench.mvcc_horizon --jobs 5000 --reps 1   # smoke run

Issue 13 (goal 7): a REPEATABLE READ transaction left idle keeps every row version the
drain makes dead since its snapshot, so the claim's index walk and the finish's updates
step over more and more of them. Each rep runs two fresh databases in turn: `held`, where
a session opens `BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT ...` and stays idle in
that transaction through the first `--held` batches, then commits before the `--after`
batches; and `none`, the same batches with no such session. One worker fleet (`broker
worker --processes 2 --concurrency 100`) serves all batches of a database; a batch is
`--jobs` no-op jobs queued with one COPY, its rate jobs / (last finished_at - first
started_at of its jobs), database time. Also printed: the dead row versions of
broker.jobs (pg_stat) after each batch. Uses BROKER_DATABASE_URL's server (else an
embedded one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile

import psycopg

from bench.worker_throughput import (
    drop_database,
    poll_until,
    running,
    scratch_database,
    server_url,
    spawn_workers,
)
from broker import Broker, JobSpec


def batch(url: str, jobs: int, workers: subprocess.Popen[bytes]) -> tuple[float, int]:
    """Queue `jobs` no-op jobs, wait until all succeeded; their rate, and the dead tuples
    of broker.jobs afterwards."""
    with Broker.connect(url, max_size=1) as client:
        ids = [e.id for e in client.enqueue_many([JobSpec("bench_noop", queue="bench")] * jobs)]
    lo, hi = min(ids), max(ids)
    with psycopg.connect(url, autocommit=True) as conn:
        row = poll_until(
            conn,
            workers,
            "SELECT count(*) FILTER (WHERE state = 'succeeded'),"
            " extract(epoch FROM max(finished_at) - min(started_at))"
            " FROM broker.jobs WHERE id BETWEEN %s AND %s",
            [lo, hi],
            done=lambda row: row[0] >= jobs,
        )
        rate = jobs / float(row[1])
        dead = conn.execute(
            "SELECT n_dead_tup FROM pg_stat_user_tables"
            " WHERE schemaname = 'broker' AND relname = 'jobs'"
        ).fetchone()
    return rate, int(dead[0]) if dead else -1


def run(server: str, scenario: str, opts: argparse.Namespace) -> list[float]:
    name = f"bench_horizon_{scenario}_{os.getpid()}"
    url = scratch_database(server, name)
    holder: psycopg.Connection[tuple[object, ...]] | None = None
    rates: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as state:
            fleet = spawn_workers(url, "worker_throughput", "bench", 100, opts.processes, state)
            with running(fleet) as workers:
                batch(url, 1000, workers)  # workers up, connections open, plans cached
                if scenario == "held":
                    holder = psycopg.connect(url)
                    holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    holder.execute("SELECT count(*) FROM broker.jobs")  # takes the snapshot
                for i in range(opts.held + opts.after):
                    if i == opts.held and holder is not None:
                        holder.commit()  # the horizon moves on
                        holder.close()
                        holder = None
                    rate, dead = batch(url, opts.jobs, workers)
                    phase = "none" if scenario == "none" else "held" if i < opts.held else "after"
                    print(f"  {scenario} batch {i + 1} ({phase}): {rate:8,.0f} jobs/s, dead {dead}")
                    rates.append(rate)
    finally:
        if holder is not None:
            holder.close()
        drop_database(server, name)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--held", type=int, default=3, help="batches with the horizon held")
    parser.add_argument("--after", type=int, default=2, help="batches after it is released")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2)
    opts = parser.parse_args()
    server = server_url()
    results: dict[str, list[list[float]]] = {"none": [], "held": []}
    for rep in range(opts.reps):
        print(f"rep {rep + 1}")
        for scenario in ("none", "held"):
            results[scenario].append(run(server, scenario, opts))
    print("\nbatch | none | held | held / none")
    for i in range(opts.held + opts.after):
        none = statistics.median(r[i] for r in results["none"])
        held = statistics.median(r[i] for r in results["held"])
        label = f"{i + 1} ({'held' if i < opts.held else 'after'})"
        print(f"{label} | {none:,.0f} | {held:,.0f} | {held / none:.2f}")


if __name__ == "__main__":
    main()
