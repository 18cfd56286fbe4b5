"""Benchmark claim + complete through the library API (and the batch enqueue that feeds it).

Mirrors /work/shared/reference/fenced_bound.py (the bare-SQL ceiling) so the two can be
quoted as a ratio measured in the same sitting: N no-op jobs are queued, the table is
VACUUM ANALYZEd and CHECKPOINTed, then P processes (forked, each with its own Broker and
one connection) loop `claim(limit=batch)` -> `complete_many(...)` until the queue is
empty. The clock starts before the processes are started and stops when the last one
finishes, exactly as in the reference. The library writes one `claimed` and one
`succeeded` event per job, so compare with the reference's "fenced + events" line too.

    python -m bench.claim_complete                        # 20,000 jobs, batch 1 and 100
    python -m bench.claim_complete --jobs 2000 --reps 1   # quick smoke run

It creates a scratch database (default `broker_bench`), migrates it with
broker.migrate.upgrade, and drops it at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

from bench._scratch import reset, scratch_database, settle
from broker import Broker, JobSpec
from broker.config import DEFAULT_SCHEMA

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
QUEUE = "default"
ENQUEUE_CHUNK = 10_000


def enqueue(url: str, schema: str, jobs: int) -> float:
    """Queue `jobs` no-op jobs with Broker.enqueue_many; returns jobs/s of the enqueue."""
    specs = [JobSpec("noop", {"i": i}, queue=QUEUE) for i in range(jobs)]
    with Broker.connect(url, schema=schema, min_size=1, max_size=1) as broker:
        broker.db_clock()  # open the connection before the clock starts
        t0 = time.perf_counter()
        for start in range(0, jobs, ENQUEUE_CHUNK):
            broker.enqueue_many(specs[start : start + ENQUEUE_CHUNK])
        elapsed = time.perf_counter() - t0
    return jobs / elapsed


def worker(
    url: str, schema: str, batch: int, worker_id: str, out: mp.Queue[tuple[int, float]]
) -> None:
    """Claim and complete until the queue is empty; report (jobs done, wall-clock end)."""
    done = 0
    with Broker.connect(url, schema=schema, min_size=1, max_size=1) as broker:
        while True:
            leases = broker.claim([QUEUE], batch, worker_id)
            if not leases:
                break
            outcomes = broker.complete_many([(lease, None) for lease in leases])
            done += sum(o.applied for o in outcomes)
    out.put((done, time.time()))


def claim_complete(url: str, schema: str, jobs: int, procs: int, batch: int) -> float:
    """One timed run: `procs` processes drain `jobs` queued jobs; returns jobs/s."""
    ctx = mp.get_context("fork")
    out: mp.Queue[tuple[int, float]] = ctx.Queue()
    t0 = time.time()
    workers = [
        ctx.Process(target=worker, args=(url, schema, batch, f"bench:{i}", out))
        for i in range(procs)
    ]
    for p in workers:
        p.start()
    results = [out.get() for _ in workers]
    for p in workers:
        p.join()
    done = sum(n for n, _ in results)
    if done != jobs:
        raise SystemExit(f"expected {jobs} jobs completed, got {done}")
    return jobs / (max(end for _, end in results) - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get("BROKER_BENCH_DSN", DEFAULT_DSN),
        help="server to create the scratch database on (env BROKER_BENCH_DSN)",
    )
    parser.add_argument("--db", default="broker_bench", help="scratch database name")
    parser.add_argument("--schema", default=DEFAULT_SCHEMA)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument(
        "--batch", type=int, action="append", help="claim batch size (repeatable; default 1, 100)"
    )
    parser.add_argument("--reps", type=int, default=3)
    opts = parser.parse_args()
    batches = opts.batch or [1, 100]

    enqueue_rates: list[float] = []
    rates: dict[int, list[float]] = {b: [] for b in batches}
    with scratch_database(opts.dsn, opts.db, opts.schema) as url:
        for rep in range(opts.reps):
            for batch in batches:
                reset(url, opts.schema)
                rate = enqueue(url, opts.schema, opts.jobs)
                enqueue_rates.append(rate)
                print(
                    f"rep {rep} enqueue_many ({ENQUEUE_CHUNK:,}/call): {rate:,.0f} jobs/s",
                    flush=True,
                )
                settle(url, opts.schema)
                rate = claim_complete(url, opts.schema, opts.jobs, opts.procs, batch)
                rates[batch].append(rate)
                print(
                    f"rep {rep} claim+complete batch {batch}, {opts.procs} procs: "
                    f"{rate:,.0f} jobs/s",
                    flush=True,
                )

    print(f"\nsummary ({opts.jobs:,} jobs, {opts.procs} procs, {opts.reps} reps; median [min-max])")
    print(f"  enqueue_many: {_summary(enqueue_rates)}")
    for batch in batches:
        print(f"  claim+complete batch {batch}: {_summary(rates[batch])}")


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}] jobs/s"


if __name__ == "__main__":
    main()
