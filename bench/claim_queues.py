"""The claim against the number of queues a worker serves: time per claim, one connection.

    python -m bench.claim_queues                        # queues 1,10,50,200; limits 10,100
    python -m bench.claim_queues --queues 1,50 --limits 100 --jobs 20000

For each (queues, limit): TRUNCATE, queue `--jobs` no-op jobs round-robin over the queues
(COPY path), VACUUM ANALYZE + CHECKPOINT, then claim `limit` jobs at a time from all the
queues (each claim its own transaction, generic plans as on a worker's connection) until
a claim comes back empty. Prints the median and mean time per claim and the time per job
claimed; compare a row with the one-queue row of the same limit, in the same run. The
jobs are only claimed, never completed, so nothing but the claim is timed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from bench._scratch import reset, scratch_database, settle
from broker import Broker, JobSpec, lease
from broker.config import DEFAULT_SCHEMA

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def run(url: str, queues: int, limit: int, jobs: int) -> tuple[float, float, float]:
    """Median and mean seconds per claim, and seconds per job claimed."""
    names = [f"q{i}" for i in range(queues)]
    reset(url, DEFAULT_SCHEMA)
    with Broker.connect(url, min_size=1, max_size=1) as broker:
        for start in range(0, jobs, 10_000):
            count = min(10_000, jobs - start)
            broker.enqueue_many(
                JobSpec("noop", queue=names[(start + i) % queues]) for i in range(count)
            )
        settle(url, DEFAULT_SCHEMA)
        times: list[float] = []
        claimed = 0
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET plan_cache_mode = force_generic_plan")
            while True:
                t0 = time.perf_counter()
                batch = broker.run(lease.claim(names, limit, "bench:1", 300.0), conn)
                times.append(time.perf_counter() - t0)
                if not batch:
                    break
                claimed += len(batch)
        if claimed != jobs:
            raise SystemExit(f"claimed {claimed} of {jobs} jobs")
    return statistics.median(times), statistics.mean(times), sum(times) / jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--db", default="broker_bench_claim_queues")
    parser.add_argument("--queues", default="1,10,50,200", help="comma-separated")
    parser.add_argument("--limits", default="10,100", help="comma-separated claim sizes")
    parser.add_argument("--jobs", type=int, default=20_000)
    args = parser.parse_args()
    with scratch_database(args.dsn, args.db, DEFAULT_SCHEMA) as url:
        for limit in [int(x) for x in args.limits.split(",")]:
            base: float | None = None
            for queues in [int(x) for x in args.queues.split(",")]:
                median, mean, per_job = run(url, queues, limit, args.jobs)
                base = per_job if base is None else base
                print(
                    f"queues {queues:>4}  limit {limit:>4}: median {median * 1e3:6.2f} ms,"
                    f" mean {mean * 1e3:6.2f} ms per claim, {per_job * 1e6:5.0f} us per job"
                    f" ({base / per_job:.2f} of the first row's rate)"
                )


if __name__ == "__main__":
    main()
