"""Queue limits: drain throughput of an unlimited queue and of one with a concurrency_limit,
with real worker processes.

    python bench/queue_limits.py [--jobs 5000] [--work-ms 5] [--limit 10]
                                 [--processes 2] [--concurrency 50]

Each run pre-queues N jobs that sleep `--work-ms` (asyncio) in a scratch database, then
drains them with `--processes` worker processes of `--concurrency` slots: once with the
queue unlimited, once with `concurrency_limit = --limit`. Prints jobs/s measured by the
database (first start to last finish) and the most jobs that ran at once (from started_at
/ finished_at). The ceiling of the limited run is limit / work time; how close it gets
shows what the claim's serialisation and wake-ups cost. Uses BROKER_DATABASE_URL's server
(else an embedded one). This file is also the task module the workers import.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

import psycopg

from broker import Broker, JobSpec, task

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUEUE = "bench_limits"

sys.path.insert(0, str(HERE))
from worker_throughput import (  # noqa: E402
    DRAINED,
    drop_database,
    poll_until,
    running,
    scratch_database,
    server_url,
    spawn_workers,
)


@task("bench_sleep", queue=QUEUE)
async def bench_sleep(ms: float = 0.0) -> None:
    """Holds its slot for `ms` milliseconds."""
    await asyncio.sleep(ms / 1000)


def drain(url: str, args: argparse.Namespace, state_dir: Path) -> tuple[float, int]:
    fleet = spawn_workers(url, "queue_limits", QUEUE, args.concurrency, args.processes, state_dir)
    with running(fleet) as workers, psycopg.connect(url, autocommit=True) as conn:
        row = poll_until(
            conn,
            workers,
            DRAINED,
            done=lambda row: row[0] >= args.jobs,
        )
        peak = conn.execute(
            "SELECT max(n) FROM (SELECT sum(d) OVER (ORDER BY t, d) AS n FROM ("
            " SELECT started_at AS t, 1 AS d FROM broker.jobs"
            " UNION ALL SELECT finished_at, -1 FROM broker.jobs) e) x"
        ).fetchone()
        return float(row[1]), int(peak[0] if peak else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--work-ms", type=float, default=5.0)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    server = server_url()
    name = f"broker_bench_limits_{os.getpid()}"
    for limit in (None, args.limit):
        url = scratch_database(server, name)
        try:
            with Broker.connect(url) as client:
                if limit is not None:
                    from broker import queues

                    client.run(queues.configure(QUEUE, concurrency_limit=limit))
                for start in range(0, args.jobs, 5000):
                    count = min(5000, args.jobs - start)
                    spec = JobSpec("bench_sleep", {"ms": args.work_ms}, queue=QUEUE)
                    client.enqueue_many([spec] * count)
            state = Path(tempfile.mkdtemp(prefix="broker-bench-"))
            seconds, peak = drain(url, args, state)
        finally:
            drop_database(server, name)
        label = "unlimited" if limit is None else f"concurrency_limit {limit}"
        print(
            f"{args.jobs} jobs of {args.work_ms:g} ms, {args.processes} x {args.concurrency} "
            f"slots, {label}: {seconds:.2f} s, {args.jobs / seconds:,.0f} jobs/s, "
            f"at most {peak} at once"
        )


if __name__ == "__main__":
    main()
